"""Pre-flight: before a run computes anything, every place it reads or writes is tried.

A run that fails at its last sink because the bucket is misspelt wastes the whole run;
so the driver calls :func:`check` before its first step. It looks at every location
known before running (a literal or a pipeline parameter; a path computed by the
pipeline itself is only known later):

* every file source (``read_text``, ``read_jsonl``, and any other ``read_*``) must name
  a file, a folder or a glob that matches something;
* every sink location must be writable (on object stores a probe object is written and
  removed, so credentials and the bucket are proven, not assumed);
* a run folder on storage must be writable too;
* a URL scheme fsspec does not know, or one whose driver is not installed, is refused
  with the pipec extra to install.

Each problem is a :class:`PreflightError`, a usage error (exit status 2) that points at
the ``.pipe`` line of the source or sink (file:line:col and a caret).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from pipec.compiler import ir
from pipec.dsl.diagnostics import ERROR, Diagnostic, UsageError
from pipec.dsl.source import SourceFile, Span
from pipec.backends.runtime import semantics, storage

# Sink formats written as one file; the others (datasets) are folders of files.
SINGLE_FILE_SINKS = frozenset({"json", "jsonl", "text"})

_REACH_HINT = "check the URL, the credentials and the endpoint (AWS_ENDPOINT_URL, fsspec's configuration)"


class PreflightError(UsageError):
    """A location a run needs cannot be used; raised before anything is computed."""

    def __init__(self, message: str, span: Span | None = None, source: SourceFile | None = None,
                 hint: str | None = None):
        self.span, self.source = span, source
        super().__init__(message, hint)

    def render(self) -> str:
        if self.span is None or self.source is None:
            return super().render()
        return Diagnostic(ERROR, self.message, self.span, self.hint).render(self.source)


def check(graph: ir.IR, params: dict[str, Any], run_dir: str | None, source: SourceFile | None) -> None:
    """Raise PreflightError for the first location of ``graph`` (with ``params`` bound)
    that cannot be read or written, or for a run folder ``run_dir`` on storage that cannot
    be written. Reads and writes nothing lasting."""
    for node, op in _located(graph):
        if isinstance(op, ir.Source):
            path = _static(graph, params, op.args[0]) if op.args else None
            if isinstance(path, str):
                _check_source(path, op, source)
        elif op.format is not None:
            path = _static(graph, params, op.path)
            if isinstance(path, str):
                _check_sink(path, op, source)
    if run_dir is not None and not storage.is_local(run_dir):
        try:
            storage.check_writable(run_dir, folder=True)
        except storage.StorageUnavailable as exc:
            raise PreflightError(exc.message, hint=exc.hint) from None
        except OSError as exc:
            raise PreflightError(f"cannot write the run folder {run_dir}: {_reason(exc)}", hint=_REACH_HINT) from None


def _located(graph: ir.IR) -> Iterator[tuple[str, ir.Source | ir.Sink]]:
    """The file sources and the sinks, in the order of the file."""
    found = [(node, op) for node, op in graph.items()
             if (isinstance(op, ir.Source) and op.kind.startswith("read_")) or isinstance(op, ir.Sink)]
    return iter(sorted(found, key=lambda item: (item[1].span.line, item[1].span.column) if item[1].span else (0, 0)))


_UNKNOWN = object()


def _static(graph: ir.IR, params: dict[str, Any], operand) -> Any:
    """The value of ``operand`` when it is known before running (a literal, a constant, a
    parameter, or operators on those, such as ``out + "/w.json"``), else None."""
    value = _known(graph, params, operand)
    return None if value is _UNKNOWN else value


def _known(graph: ir.IR, params: dict[str, Any], operand) -> Any:
    if isinstance(operand, ir.Lit):
        return operand.value
    if not isinstance(operand, ir.NodeRef) or operand.node not in graph:
        return _UNKNOWN
    op = graph.op(operand.node)
    if isinstance(op, ir.Param):
        return params.get(operand.node, _UNKNOWN)
    if isinstance(op, ir.Const):
        return op.value
    if isinstance(op, ir.Format):  # a sink path with fields: known when they all are (not a round index)
        fields = {k: _known(graph, params, o) for k, o in op.fields.items()}
        if any(v is _UNKNOWN for v in fields.values()):
            return _UNKNOWN
        return op.template.format_map(fields)
    if isinstance(op, ir.Expr):
        values = [_known(graph, params, o) for o in op.operands]
        if any(v is _UNKNOWN for v in values):
            return _UNKNOWN
        try:
            return semantics.apply_operator(op.operator, *values)
        except Exception:
            return _UNKNOWN  # the run reports it where it happens
    return _UNKNOWN


def _check_source(path: str, op: ir.Source, source: SourceFile | None) -> None:
    try:
        found = storage.glob(path) if storage.has_magic(path) else storage.exists(path)
    except storage.StorageUnavailable as exc:
        raise _at(op, source, exc.message, exc.hint) from None
    except OSError as exc:
        raise _at(op, source, f"cannot reach {path}: {_reason(exc)}", _REACH_HINT) from None
    if not found:
        where = "" if not storage.is_local(path) or os.path.isabs(storage.local_path(path)) else \
            f" (relative paths are read from {os.getcwd()})"
        what = "no file matches" if storage.has_magic(path) else "no such file:"
        raise _at(op, source, f"`{op.kind}`: {what} {path}", f"check the path{where}")


def _check_sink(path: str, op: ir.Sink, source: SourceFile | None) -> None:
    try:
        storage.check_writable(path, folder=op.format not in SINGLE_FILE_SINKS)
    except storage.StorageUnavailable as exc:
        raise _at(op, source, exc.message, exc.hint) from None
    except OSError as exc:
        hint = _REACH_HINT if not storage.is_local(path) else "write the sink somewhere else, or make the folder writable"
        raise _at(op, source, f"cannot write {path}: {_reason(exc)}", hint) from None


def _at(op, source: SourceFile | None, message: str, hint: str | None) -> PreflightError:
    span = op.span
    located = Span(span.line, span.column, span.end_line, span.end_column, 0, 0) if span else None
    return PreflightError(message, located, source, hint)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
