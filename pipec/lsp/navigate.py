"""Hover, go to definition, rename and the outline of a document, from its names.

Each function takes an :class:`pipec.lsp.document.Analysis` and a character offset into
its text and gives plain results (Markdown, places as pipec spans or Python file lines);
:mod:`pipec.lsp.server` turns them into LSP messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipec.dsl import ast
from pipec.dsl.source import Span
from pipec.lsp import vocabulary
from pipec.lsp.complete import in_comment_or_string
from pipec.lsp.document import Analysis
from pipec.lsp.names import SHAPES, Definition, Occurrence

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Place:
    """Where something is defined: a span of the document itself (``path`` None), or a
    line and column (1-based line, 0-based column) of another file."""

    span: Span | None = None
    path: Path | None = None
    line: int = 1
    column: int = 0


class RenameRefused(Exception):
    """A rename that would break the program, with the reason for the user."""


def word_at(text: str, offset: int) -> tuple[int, int, str] | None:
    """The identifier under (or just before) ``offset``: (start, end, word)."""
    start = offset
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    m = _IDENT.match(text, start)
    if m is None or m.end() < offset:
        return None
    return m.start(), m.end(), m.group()


# ---- hover ----------------------------------------------------------------------------------


def hover(analysis: Analysis, offset: int) -> tuple[str, int, int] | None:
    """Markdown about the name under ``offset`` and the range it covers, or None."""
    occurrence = analysis.names.at(offset) if analysis.names else None
    if occurrence is not None:
        text = _hover_occurrence(analysis, occurrence)
        if text:
            return text, occurrence.start, occurrence.end
    word = word_at(analysis.source.text, offset)
    text = analysis.source.text
    if word and word[2] in vocabulary.ALL and not in_comment_or_string(text[text.rfind("\n", 0, word[0]) + 1:word[0]]):
        return f"`{word[2]}`: {vocabulary.ALL[word[2]]}", word[0], word[1]
    return None


def _hover_occurrence(analysis: Analysis, o: Occurrence) -> str | None:
    py = analysis.python
    if o.role in ("define", "use", "rebind") and o.definition is not None:
        return _hover_binding(analysis, o.definition)
    if o.role == "alias" and o.definition is not None:
        return _hover_binding(analysis, o.definition)
    if o.role == "python" and o.path:
        thing = py.lookup(o.path)
        return thing.markdown() if thing else f"`{'.'.join(o.path)}`: not found as Python source"
    if o.role == "method" and o.definition is not None and o.definition.target:
        thing = py.lookup(o.definition.target + o.path)
        head = f"method `{o.path[0]}` of {o.definition.kind} `{o.definition.name}`"
        return head + ("\n\n" + thing.markdown() if thing else "")
    if o.role == "builtin":
        return f"`{o.text}`: {vocabulary.BUILTINS[o.text]}"
    if o.role == "format" and o.text in vocabulary.SINK_FORMATS:
        return f"`{o.text}`: {vocabulary.SINK_FORMATS[o.text]}"
    return None


def _shape(analysis: Analysis, d: Definition) -> str:
    """Collection, value or actor, as the compiler decided (the IR), else from the kind."""
    pipeline = analysis.report.pipeline
    if pipeline is not None and d.kind not in ("alias", "pool", "sink"):
        for _, op in pipeline.ir.items():
            if op.name == d.name and op.span is not None and op.span.line == d.statement.span.line:
                return op.node_shape
        if d.name in pipeline.ir:
            return pipeline.ir.op(d.name).node_shape
    return SHAPES.get(d.kind, d.kind)


def _first_line(analysis: Analysis, span: Span) -> str:
    text = analysis.source.text[span.start:span.end]
    first = text.split("\n", 1)[0].rstrip()
    return first + (" ..." if "\n" in text.rstrip() else "")


def _hover_binding(analysis: Analysis, d: Definition) -> str:
    statement = d.statement
    if d.kind == "alias":
        head = f"module alias `{d.name}` for `{'.'.join(d.target)}`"
        thing = analysis.python.module(".".join(d.target))
        if thing is None:
            return head + "\n\nno Python source found for it"
        return head + (f"\n\n{thing.doc}" if thing.doc else "") + f"\n\n`{thing.path}`"
    if d.kind == "param":
        default = f" = {_first_line(analysis, statement.default.span)}" if statement.default else ""
        return (f"parameter `{d.name}: {statement.type.text}{default}`: a value\n\n"
                f"set it with `pipec run FILE --param {d.name}=...`")
    if d.kind == "index":
        return f"round index `{d.name}`: a value, 0 in the first round of the `repeat` at line {statement.span.line}"
    parts = [f"{d.kind} `{d.name}`: {_article(_shape(analysis, d))}",
             f"```pipe\n{_first_line(analysis, statement.span)}\n```", f"line {statement.span.line}"]
    if d.kind in ("actor", "pool") and d.target:
        thing = analysis.python.lookup(d.target)
        if thing is not None:
            parts.append(thing.markdown())
    return "\n\n".join(parts)


def _article(shape: str) -> str:
    return ("an " if shape[0] in "aeiou" else "a ") + shape


# ---- go to definition -----------------------------------------------------------------------


def definition(analysis: Analysis, offset: int) -> Place | None:
    """Where the name under ``offset`` is defined: a binding's statement in this file, a
    Python function, class or method in the user's ``.py`` file, a module's file."""
    o = analysis.names.at(offset) if analysis.names else None
    if o is None:
        return None
    if o.role in ("define", "use", "rebind", "alias") and o.definition is not None:
        return Place(span=o.definition.span)
    path = None
    if o.role == "python" and o.path:
        path = o.path
    elif o.role == "method" and o.definition is not None and o.definition.target:
        path = o.definition.target + o.path
    if path is None:
        return None
    thing = analysis.python.lookup(path)
    return Place(path=thing.path, line=thing.line, column=thing.column) if thing else None


# ---- rename ---------------------------------------------------------------------------------


def rename_target(analysis: Analysis, offset: int) -> Occurrence | None:
    """The occurrence a rename at ``offset`` would change, if it names a binding."""
    o = analysis.names.at(offset) if analysis.names else None
    if o is None or o.definition is None or o.role not in ("define", "use", "rebind", "alias"):
        return None
    return o


def rename(analysis: Analysis, offset: int, new_name: str) -> list[Span]:
    """The spans to replace with ``new_name`` to rename the binding under ``offset``.

    Raises :class:`RenameRefused` when nothing renamable is there, or when ``new_name``
    is not a name, is a keyword, or is bound already."""
    from pipec.dsl.parser import _keywords

    o = rename_target(analysis, offset)
    if o is None:
        raise RenameRefused("only a binding (a parameter, a statement's name, a loop index, an alias) "
                            "can be renamed")
    if not new_name.isidentifier() or not new_name.isascii():
        raise RenameRefused(f"`{new_name}` is not a name")
    if new_name in _keywords() or new_name in vocabulary.ALL:
        raise RenameRefused(f"`{new_name}` is a keyword of the language")
    taken = {d.name for d in analysis.names.definitions}
    if new_name in taken and new_name != o.definition.name:
        raise RenameRefused(f"`{new_name}` is already defined")
    return [u.span for u in analysis.names.uses_of(o.definition)]


# ---- outline --------------------------------------------------------------------------------


@dataclass
class Symbol:
    """One entry of the outline: ``kind`` is an LSP symbol kind's name."""

    name: str
    detail: str
    kind: str
    span: Span
    selection: Span
    children: list["Symbol"]


_KINDS = {ast.Source: ("source", "Event"), ast.Stage: ("stage", "Function"), ast.Value: ("value", "Constant"),
          ast.Var: ("var", "Variable"), ast.Sink: ("sink", "Field"), ast.Rebind: ("rebind", "Variable")}


def outline(module: ast.Module, text: str) -> list[Symbol]:
    """The document's symbols: its aliases, then the pipeline with its parameters and
    statements, ``repeat`` bodies nested."""
    symbols = [Symbol(u.alias.text, u.path.text, "Module", u.span, u.alias.span, []) for u in module.uses]
    p = module.pipeline
    children = [Symbol(param.name.text, param.type.text, "Property", param.span, param.name.span, [])
                for param in p.params]
    children += _statements(p.body, text)
    symbols.append(Symbol(p.name.text, "pipeline", "Module", p.span, p.name.span, children))
    return symbols


def _statements(body, text: str) -> list[Symbol]:
    out = []
    for stmt in body:
        if type(stmt) in _KINDS:
            detail, kind = _KINDS[type(stmt)]
            out.append(Symbol(stmt.name.text, detail, kind, stmt.span, stmt.name.span, []))
        elif isinstance(stmt, ast.Actor):
            out.append(Symbol(stmt.name.text, f"actor{' pool' if stmt.pool else ''} {stmt.ctor.func.text}",
                              "Class", stmt.span, stmt.name.span, []))
        elif isinstance(stmt, ast.Repeat):
            head = text[stmt.span.start:stmt.span.end].split("{", 1)[0].strip()
            out.append(Symbol(head, "loop", "Namespace", stmt.span, stmt.span, _statements(stmt.body, text)))
        elif isinstance(stmt, ast.When):
            head = text[stmt.span.start:stmt.span.end].split("{", 1)[0].strip()
            out.append(Symbol(head, "condition", "Namespace", stmt.span, stmt.span, _statements(stmt.body, text)))
        elif isinstance(stmt, ast.CallStmt):
            out.append(Symbol(stmt.call.func.text + "(...)", "actor call", "Method", stmt.span,
                              stmt.call.func.span, []))
        elif isinstance(stmt, ast.Defaults):
            out.append(Symbol("defaults", "stage options", "Object", stmt.span, stmt.span, []))
    return out
