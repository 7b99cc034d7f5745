"""Parse a document again after an edit, statement by statement, reusing the statements
that did not change.

Parsing dominates re-checking a large file (a 1,000-line file takes about 100 ms to
parse with Lark and half that to build), and an edit touches one statement. So the text
is cut into chunks at the lines where a top-level statement of the pipeline starts; a
chunk seen before is not parsed again, only moved (its spans shifted) when lines or
characters above it changed. A new chunk is parsed alone by the real parser, padded so
that every position in it is the position in the whole file.

The result is the same :class:`pipec.dsl.ast.Module` a whole parse gives, spans and
comments included (the tests compare the two on every example and on edits). Whenever a
chunk does not parse alone, or the cut looks doubtful, the whole text is parsed instead,
so a syntax error is always reported exactly as ``pipec check`` reports it.

Where a statement starts: a line at bracket depth 1 inside the pipeline's braces whose
first word starts a statement (``stage``, ``value``, ...; a name followed by ``=``; a
dotted name followed by ``(`` that is not a keyword). None of these can continue the
statement before it (statements need no separator because no expression can be
followed by a name), and a wrong cut leaves a chunk that does not parse alone, which
sends the text to the whole parse.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from functools import lru_cache

from pipec.dsl import ast
from pipec.dsl.diagnostics import PipecError
from pipec.dsl.parser import STATEMENT_KEYWORDS, parse
from pipec.dsl.source import SourceFile, Span, fast_constructor, make_span

_HEAD = "pipeline _(){"
_CLEAN = re.compile(r"\"([^\"\\\n]|\\.)*\"|'([^'\\\n]|\\.)*'|#[^\n]*")
_BRACKETS = re.compile(r"[][(){}]")
_STATEMENT = re.compile(rf"[ \t]*(?:(?:{'|'.join(STATEMENT_KEYWORDS)})\b(?![ \t]*=(?!=))"
                        r"|(?P<bound>[A-Za-z_]\w*)[ \t]*=(?!=)"
                        r"|(?P<called>[A-Za-z_]\w*)(?:[ \t]*\.[ \t]*[A-Za-z_]\w*)*[ \t]*\()")
_COMMENT = re.compile(r"#[^\n]*")


@lru_cache(maxsize=1)
def _keywords() -> frozenset[str]:
    from pipec.dsl.parser import _keywords as grammar_keywords
    return grammar_keywords() | {"x"}


class IncrementalParser:
    """Parses successive versions of one document (see the module docstring)."""

    def __init__(self):
        self._chunks: dict[tuple[str, int], tuple[int, int, tuple, tuple]] = {}
        self.reused = self.parsed = 0  # chunks, in the last parse: for the benchmark and tests

    def parse(self, source: SourceFile) -> ast.Module:
        """The AST of ``source``. Raises :class:`pipec.dsl.diagnostics.PipeSyntaxError`
        exactly as :func:`pipec.dsl.parser.parse` does."""
        cut = _cut(source.text)
        if cut is not None and self._chunks:
            try:
                return self._assemble(source, *cut)
            except PipecError:
                pass
        # The first version, or one whose cut failed: parse it whole (this raises the
        # syntax error, if any, as the CLI would; the chunks seen so far stay for the
        # next version), and remember its statements by chunk.
        module = parse(source)
        if cut is not None:
            self._seed(source.text, module, *cut)
        return module

    def _seed(self, text: str, module: ast.Module, starts: list[tuple[int, int]], close: int) -> None:
        """Remember the statements and comments of a whole parse by the chunk they are in."""
        bounds = starts + [(close, -1)]
        seen: dict[str, int] = {}
        chunks = {}
        statements, comments = module.pipeline.body, module.comments
        i = j = 0  # both are in source order, as the chunks are
        for (start, line), (end, _) in zip(bounds, bounds[1:]):
            first_statement, first_comment = i, j
            while i < len(statements) and statements[i].span.start < end:
                i += 1
            while j < len(comments) and comments[j].span.start < end:
                j += 1
            chunk = text[start:end]
            key = (chunk, seen.setdefault(chunk, 0))
            seen[chunk] += 1
            if start:  # the header is parsed every time
                chunks[key] = (start, line, statements[first_statement:i], comments[first_comment:j])
        self._chunks = chunks

    def _assemble(self, source: SourceFile, starts: list[tuple[int, int]], close: int) -> ast.Module:
        text = source.text
        seen: dict[str, int] = {}
        chunks: dict[tuple[str, int], tuple[int, int, tuple, tuple]] = {}
        self.reused = self.parsed = 0
        header = None
        body: list = []
        comments: list = []
        bounds = starts + [(close, -1)]
        for (start, line), (end, _) in zip(bounds, bounds[1:]):
            chunk = text[start:end]
            key = (chunk, seen.setdefault(chunk, 0))
            seen[chunk] += 1
            if start == 0:
                module = parse(SourceFile(source.path, chunk + "}"))
                header = module
                statements, notes = module.pipeline.body, module.comments
            else:
                cached = self._chunks.get(key)
                if cached is None:
                    if start - len(_HEAD) - (line - 1) < 0:
                        raise PipecError("no room for the padding")  # cannot happen after a header
                    padding = _HEAD + " " * (start - len(_HEAD) - (line - 1)) + "\n" * (line - 1)
                    module = parse(SourceFile(source.path, padding + chunk + "\n}"))
                    statements, notes = module.pipeline.body, module.comments
                    self.parsed += 1
                else:
                    old_start, old_line, statements, notes = cached
                    if (old_start, old_line) != (start, line):
                        statements = _shift(statements, line - old_line, start - old_start)
                        notes = _shift(notes, line - old_line, start - old_start)
                    self.reused += 1
            chunks[key] = (start, line, statements, notes)
            body.extend(statements)
            comments.extend(notes)
        self._chunks = chunks
        tail = text[close + 1:]
        if _COMMENT.sub("", tail).strip():
            raise PipecError("text after the pipeline")  # a syntax error: let the whole parse say it
        comments += [_comment(text, m.start() + close + 1, m.group()) for m in _COMMENT.finditer(tail)]
        end = _point(text, close)
        p = header.pipeline
        pipeline = ast.Pipeline(p.name, p.params, tuple(body),
                                Span(p.span.line, p.span.column, end.line, end.column + 1, p.span.start, close + 1))
        m = header.span
        span = Span(m.line, m.column, end.line, end.column + 1, m.start, close + 1)
        return ast.Module(header.uses, pipeline, tuple(comments), span)


def _cut(text: str) -> tuple[list[tuple[int, int]], int] | None:
    """Where the chunks start ((offset, line) of each; the first is the header at 0) and
    the offset of the pipeline's closing brace; None when the text cannot be cut."""
    depth = 0
    opened = False
    starts = [(0, 1)]
    offset = 0
    keywords = _keywords()
    for number, line in enumerate(text.split("\n"), 1):
        if opened and depth == 1 and number > 1:
            m = _STATEMENT.match(line)
            if m and not (m.group("called") and m.group("called") in keywords):
                starts.append((offset, number))
        cleaned = _CLEAN.sub(lambda m: " " * len(m.group()), line)
        for b in _BRACKETS.finditer(cleaned):
            c = b.group()
            if c in "([{":
                if c == "{" and depth == 0:
                    if opened:
                        return None  # a second block at the top: not a pipeline we can cut
                    opened = True
                depth += 1
            else:
                depth -= 1
                if depth < 0:
                    return None
                if depth == 0 and opened:
                    close = offset + b.start()
                    # A statement chunk must start on a line after the header's brace.
                    starts = [s for s in starts if s[0] < close]
                    if len(starts) < 2:
                        return None
                    return starts, close
        offset += len(line) + 1
    return None


def _point(text: str, offset: int) -> Span:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Span(line, column, line, column + 1, offset, offset + 1)


def _comment(text: str, start: int, body: str) -> ast.Comment:
    at = _point(text, start)
    return ast.Comment(body, Span(at.line, at.column, at.line, at.column + len(body), start, start + len(body)))


def _shift(node, lines: int, chars: int):
    """``node`` with every span moved down ``lines`` lines and on ``chars`` characters
    (columns stay: a chunk starts at the beginning of a line, before and after)."""
    kind = type(node)
    if kind is Span:
        return make_span(node.line + lines, node.column, node.end_line + lines, node.end_column,
                         node.start + chars, node.end + chars)
    shifter = _SHIFTERS.get(kind)
    if shifter is not None:
        return shifter(node, lines, chars)
    if kind is tuple:
        return tuple([_shift(item, lines, chars) for item in node])
    return node  # a name's text, a number, None


def _shifter(cls: type):
    """A function rebuilding a ``cls`` node with its fields shifted, written out once per
    class from the field types: moving every statement after an edit near the top is the
    server's hot loop, and a generic walk spent most of its time asking what each field is.
    A field of one AST class (or a tuple of them) calls that class's shifter directly."""
    args = [_field_code(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""), f"node.{f.name}")
            for f in fields(cls)]
    scope = {"_shift": _shift, "make": fast_constructor(cls), "Span": make_span, "_S": _SHIFTERS, **_CLASSES}
    exec(f"def shift(node, lines, chars):\n    return make({', '.join(args)})\n", scope)
    return scope["shift"]


def _field_code(kind: str, value: str) -> str:
    """The expression that shifts ``value``, a field declared as ``kind``."""
    kind = kind.strip("'\"")
    if kind == "Span":
        return (f"Span({value}.line + lines, {value}.column, {value}.end_line + lines, "
                f"{value}.end_column, {value}.start + chars, {value}.end + chars)")
    if kind in ("str", "bool", "tuple[str, ...]"):
        return value
    if kind.endswith(" | None") and kind[:-len(" | None")] in _CLASSES:
        return f"(None if {value} is None else {_field_code(kind[:-len(' | None')], value)})"
    if kind in _CLASSES:  # checked, in case a value is not what its field says
        return f"(_S[{kind}]({value}, lines, chars) if {value}.__class__ is {kind} else _shift({value}, lines, chars))"
    items = re.fullmatch(r"tuple\[['\"]?(\w+)['\"]?, \.\.\.\]", kind)
    if items and items.group(1) in _CLASSES:
        return f"tuple([{_field_code(items.group(1), 'x')} for x in {value}])"
    return f"_shift({value}, lines, chars)"


_CLASSES = {name: cls for name, cls in vars(ast).items()
            if isinstance(cls, type) and is_dataclass(cls) and cls.__module__ == ast.__name__}
_SHIFTERS: dict = {}
_SHIFTERS.update({cls: _shifter(cls) for cls in _CLASSES.values()})
