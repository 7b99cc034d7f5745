"""The one error hierarchy of pipec, and how a diagnostic is printed.

Compile-time problems (syntax, semantics, a feature a backend lacks) are
:class:`CompileError`; problems while a pipeline runs are :class:`PipelineRuntimeError`;
bad command-line use is :class:`UsageError`. Everything pipec raises on purpose derives
from :class:`PipecError`, so callers (the CLI, the fuzz tests) can tell our errors from
bugs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence

from pipec.dsl.source import SourceFile, Span

ERROR = "error"
WARNING = "warning"

# Very long lines (minified or generated input) are cut around the caret when printed.
_MAX_SHOWN_LINE = 160


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message about one place in a file."""

    severity: str
    message: str
    span: Span | None = None
    hint: str | None = None
    path: str | None = None
    code: str | None = None  # "unsupported" for a backend capability gap

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def render(self, source: SourceFile | None = None) -> str:
        """``file:line:col: severity: message``, the source line, a caret, a hint."""
        path = self.path or (source.path if source else "<input>")
        if self.span is None:
            head = f"{path}: {self.severity}: {self.message}"
            return head + (f"\n  = hint: {self.hint}" if self.hint else "")
        span = self.span
        lines = [f"{path}:{span.line}:{span.column}: {self.severity}: {self.message}"]
        if source is not None:
            # Tabs become one space and control characters `?`, so the caret lines up.
            text = "".join(c if c.isprintable() else "?" for c in source.line_text(span.line).replace("\t", " "))
            col = span.column - 1
            width = span.end_column - span.column if span.end_line == span.line else len(text) - col
            width = max(1, width)
            if len(text) > _MAX_SHOWN_LINE:
                cut = max(0, col - _MAX_SHOWN_LINE // 2)
                text = ("..." if cut else "") + text[cut : cut + _MAX_SHOWN_LINE]
                col = col - cut + (3 if cut else 0)
                width = min(width, _MAX_SHOWN_LINE - col)
            gutter = " " * len(str(span.line))
            lines.append(f"{gutter} |")
            lines.append(f"{span.line} | {text}")
            lines.append(f"{gutter} | {' ' * col}{'^' * max(1, width)}")
        if self.hint:
            lines.append(f"  = hint: {self.hint}")
        return "\n".join(lines)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate to ``word``, or None when nothing is close.
    Short names get a hint for one edit too (``xz`` for ``xs``), which a similarity
    ratio alone misses: one letter of two is only half the word."""
    names = sorted(set(candidates))
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if not close and len(word) >= 2:
        close = [name for name in names if _one_edit(word, name)][:1]
    return f"did you mean `{close[0]}`?" if close else None


def _one_edit(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter replaced, added, dropped, or two adjacent
    letters swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                   and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


class PipecError(Exception):
    """Base of every error pipec raises on purpose."""


class CompileError(PipecError):
    """One or more compile-time diagnostics about a source file."""

    def __init__(self, diagnostics: Sequence[Diagnostic], source: SourceFile | None = None):
        self.diagnostics = list(diagnostics)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        return "\n\n".join(d.render(self.source) for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]


class PipeSyntaxError(CompileError):
    """The text is not a well-formed pipeline."""


class SemanticError(CompileError):
    """The pipeline parses but does not make sense (names, shapes, cycles, types)."""


class UnsupportedOnBackend(CompileError):
    """The pipeline uses a feature the chosen backend cannot provide."""


class FileError(PipecError):
    """A file could not be read (missing, a directory, not UTF-8)."""

    def __init__(self, path: str, reason: str, hint: str | None = None, line: int | None = None,
                 column: int | None = None):
        self.path, self.reason, self.hint, self.line, self.column = path, reason, hint, line, column
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}" if self.line is not None else self.path
        text = f"{where}: error: {self.reason}"
        return text + (f"\n  = hint: {self.hint}" if self.hint else "")


class UsageError(PipecError):
    """The command line or API was used wrongly (bad parameter, unknown backend)."""

    def __init__(self, message: str, hint: str | None = None):
        self.message, self.hint = message, hint
        super().__init__(self.render())

    def render(self) -> str:
        return f"error: {self.message}" + (f"\n  = hint: {self.hint}" if self.hint else "")


class PipelineRuntimeError(PipecError):
    """A pipeline failed while running; names the stage (or actor call) that failed."""

    def __init__(self, where: str, message: str, span: Span | None = None,
                 source: SourceFile | None = None, hint: str | None = None):
        self.where, self.message, self.span, self.source, self.hint = where, message, span, source, hint
        super().__init__(self.render())

    def render(self) -> str:
        diag = Diagnostic(ERROR, f"in `{self.where}`: {self.message}", self.span, self.hint)
        return diag.render(self.source)
