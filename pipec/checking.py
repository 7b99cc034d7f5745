"""Every diagnostic about one file, from the one checker, each with a code.

``pipec check`` (in every output format) and the language server both come here, so a
message, its position, its hint and its code are the same in a terminal, in CI and in an
editor. This module adds no check of its own: it runs the parser and
:meth:`pipec.api.Pipeline.check` and keeps what they say instead of stopping at the
first exception.

Codes. Every check of the parser and the builder reports under its own code (see
:mod:`pipec.dsl.codes`); a diagnostic that arrives without one (a backend's own refusal,
say) gets its category: ``semantic``, ``lint`` for a warning, ``parameter`` for a
``--param`` value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Mapping

from pipec.dsl.diagnostics import (ERROR, CompileError, Diagnostic, FileError, PipeSyntaxError)
from pipec.dsl.source import SourceFile, Span

if TYPE_CHECKING:  # the checker's modules load when a file is checked, not when this is imported
    from pipec.api import Pipeline
    from pipec.compiler.modules import ModuleIndex
    from pipec.dsl import ast



@dataclass
class Report:
    """What checking one file found. ``module`` is None when the text does not parse,
    ``pipeline`` when it was not built (a syntax error, an unreadable file)."""

    path: str
    source: SourceFile | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    module: "ast.Module | None" = None
    pipeline: "Pipeline | None" = None

    @property
    def errors(self) -> list[Diagnostic]:
        """The diagnostics that are errors (the file fails the check)."""
        return [d for d in self.diagnostics if d.is_error]

    @property
    def warnings(self) -> list[Diagnostic]:
        """The diagnostics that are warnings."""
        return [d for d in self.diagnostics if not d.is_error]


def check_source(source: SourceFile, backend: str | None = None, params: Mapping[str, str] | None = None,
                 index: "ModuleIndex | None" = None,
                 parser: "Callable[[SourceFile], ast.Module] | None" = None) -> Report:
    """Check ``source``: syntax, then meaning, then (with ``backend``) what that backend
    supports, then (with ``params``, and only if all that passed) the parameter values.

    Returns a :class:`Report` of every diagnostic, coded (see the module docstring).
    ``index`` is passed to :func:`pipec.api.load_source`; ``parser`` replaces
    :func:`pipec.dsl.parser.parse` (it must give the same AST and raise the same
    errors). Raises :class:`pipec.dsl.diagnostics.UsageError` for an unknown backend,
    which is a mistake on the command line, not in the file."""
    from pipec.api import _few_collections, load_source

    with _few_collections():  # as load_source parses: many small objects, all kept
        try:
            module = parser(source) if parser else None
            pipeline = load_source(source, index, module)
        except PipeSyntaxError as exc:
            return Report(source.path, source, _coded(exc.diagnostics, "syntax"))
        report = Report(source.path, source, module=pipeline.module, pipeline=pipeline)
        try:
            found = pipeline.check(backend)
        except CompileError as exc:
            found = exc.diagnostics
    report.diagnostics = _coded(found, "semantic")
    if params is not None and not report.errors:
        try:
            pipeline.params(params)
        except CompileError as exc:
            report.diagnostics += _coded(exc.diagnostics, "parameter")
    return report


def check_file(name: str, backend: str | None = None, params: Mapping[str, str] | None = None,
               stdin_name: str | None = None) -> Report:
    """Read file ``name`` (``-`` for standard input, see :func:`pipec.inputs.read`) and
    :func:`check_source` it; a file that cannot be read gives a report of one ``file``
    diagnostic instead of an exception."""
    from pipec import inputs

    try:
        source = inputs.read(name, stdin_name)
    except FileError as exc:
        return Report(exc.path, None, [file_diagnostic(exc)])
    return check_source(source, backend, params)


def file_diagnostic(exc: FileError) -> Diagnostic:
    """A :class:`FileError` as a diagnostic: it prints the same, and joins the others in
    JSON, SARIF and the editor."""
    span = None
    if exc.line is not None:
        column = exc.column or 1
        span = Span(exc.line, column, exc.line, column + 1, 0, 0)
    return Diagnostic(ERROR, exc.reason, span, exc.hint, exc.path, "unreadable-file")


def _coded(diagnostics, category: str) -> list[Diagnostic]:
    """Give each diagnostic without a code ``category`` (``lint`` for warnings)."""
    out = []
    for d in diagnostics:
        if d.code is None:
            d = replace(d, code=category if d.is_error else "lint")
        out.append(d)
    return out
