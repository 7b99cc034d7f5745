"""Which name is where in a parsed `.pipe` file, and what each use of it refers to.

Hover, go to definition, rename and completion all start from one question: what is the
word under the cursor? This module answers it for a parsed :class:`pipec.dsl.ast.Module`
by listing every *occurrence* of a name (its place in the text, and whether it defines
a binding, uses one, or names part of a Python path) and every *definition*.

Uses resolve the way the checker reads them: a name is visible after its statement, in
its own ``repeat`` body and the bodies nested in it; a ``var`` rebinding refers to the
var. This is not a second checker: it reports nothing, and where the program is wrong
(a name used before it is defined) it simply leaves the use unresolved, since the
diagnostics already say why.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from pipec.dsl import ast
from pipec.dsl.source import Span

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# What each kind of binding holds when the IR cannot say (for instance in a file with errors).
SHAPES = {"param": "value", "source": "collection", "stage": "collection", "value": "value",
          "actor": "actor", "pool": "actor pool", "index": "value", "sink": "output", "alias": "module"}


@dataclass(eq=False)
class Definition:
    """A name the program binds: a parameter, a statement's name, a loop index, an alias."""

    name: str
    kind: str  # param, alias, source, stage, value, var, actor, pool, index, sink
    span: Span  # the name where it is bound
    statement: object  # the AST node that binds it
    region: Span | None = None  # the ``repeat`` statement whose body holds it; None at top level
    target: tuple[str, ...] | None = None  # alias: the module; actor/pool: its class, alias expanded


@dataclass(eq=False)
class Occurrence:
    """One name in the text.

    ``role`` says what it is: ``define`` (binds ``definition``), ``use`` (refers to
    ``definition``), ``rebind`` (a var's new value), ``alias`` (a use of a module alias),
    ``python`` (part of a dotted path to a Python module, function or class: ``path`` is
    the path up to this part, alias expanded), ``method`` (a method of the actor
    ``definition``), ``builtin`` (``collect``, ``range``...), ``format`` (a sink format),
    ``keyword`` (an argument or binding name: ``with weights = ...``), ``unresolved``."""

    start: int
    end: int
    span: Span
    text: str
    role: str
    definition: Definition | None = None
    path: tuple[str, ...] | None = None


@dataclass
class Names:
    """Every definition and occurrence of one module, occurrences in text order."""

    definitions: list[Definition] = field(default_factory=list)
    occurrences: list[Occurrence] = field(default_factory=list)
    aliases: dict[str, Definition] = field(default_factory=dict)

    def at(self, offset: int) -> Occurrence | None:
        """The occurrence under ``offset`` (a cursor just after a word still counts)."""
        starts = [o.start for o in self.occurrences]
        i = bisect.bisect_right(starts, offset) - 1
        for j in (i, i - 1):
            if 0 <= j < len(self.occurrences):
                o = self.occurrences[j]
                if o.start <= offset <= o.end:
                    return o
        return None

    def uses_of(self, definition: Definition) -> list[Occurrence]:
        """Every occurrence that binds or refers to ``definition`` (what rename changes)."""
        return [o for o in self.occurrences if o.definition is definition
                and o.role in ("define", "use", "rebind", "alias")]

    def visible_at(self, offset: int) -> list[Definition]:
        """The definitions a statement at ``offset`` can use: parameters, aliases, and
        bindings made earlier in an enclosing body (innermost first when names repeat)."""
        seen: dict[str, Definition] = {}
        for d in reversed(self.definitions):
            if d.name in seen:
                continue
            # A statement's name is bound once the statement ends; a round index inside its loop.
            done = d.statement.span.end <= offset if d.kind != "index" else d.span.start < offset
            if d.kind in ("param", "alias") or (
                    done and (d.region is None or d.region.start <= offset < d.region.end)):
                seen[d.name] = d
        return list(reversed(seen.values()))


BUILTIN_CALLS = ("range", "read_text", "read_jsonl", "read_parquet", "read_csv", "collect", "count", "top", "join", "union", "distinct",
                 "collect_map", "take", "sort_by", "sample", "zip_with_index")


def index(module: ast.Module, text: str) -> Names:
    """The :class:`Names` of ``module``, parsed from ``text``."""
    return _Indexer(text).run(module)


class _Indexer:
    def __init__(self, text: str):
        self.text = text
        self.names = Names()
        self.scopes: list[dict[str, Definition]] = [{}]
        self.regions: list[Span | None] = [None]
        self._starts: list[int] | None = None  # where each line starts, when first needed

    def run(self, module: ast.Module) -> Names:
        """Index ``module``: uses, parameters, then the body in program order."""
        for use in module.uses:
            target = use.path.parts
            self._dotted(use.path, [("python", None, target[:i + 1]) for i in range(len(target))])
            d = self._define(use.alias, "alias", use, target=target)
            self.names.aliases[d.name] = d
        pipeline = module.pipeline
        for param in pipeline.params:
            if param.default is not None:
                self._expr(param.default)
            self._define(param.name, "param", param)
        self._block(pipeline.body)
        self.names.occurrences.sort(key=lambda o: o.start)
        return self.names

    # ---- scopes

    def _lookup(self, name: str) -> Definition | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return self.names.aliases.get(name)

    def _define(self, name: ast.Name, kind: str, statement, target=None) -> Definition:
        d = Definition(name.text, kind, name.span, statement, self.regions[-1], target)
        self.names.definitions.append(d)
        self._occur(name.span, name.text, "define", d)
        if kind != "alias":
            self.scopes[-1].setdefault(name.text, d)
        return d

    def _occur(self, span: Span, text: str, role: str, definition=None, path=None) -> None:
        self.names.occurrences.append(Occurrence(span.start, span.end, span, text, role, definition, path))

    def _point(self, start: int, end: int) -> Span:
        if self._starts is None:
            self._starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_right(self._starts, start)
        column = start - self._starts[line - 1] + 1
        return Span(line, column, line, column + end - start, start, end)

    def _dotted(self, dotted: ast.Dotted, roles) -> None:
        """Record each part of ``dotted`` with its (role, definition, path) from ``roles``."""
        span = dotted.span
        if len(dotted.parts) == 1:  # most names: the span is the word's
            role, definition, path = roles[0]
            self._occur(span, dotted.parts[0], role, definition, path)
            return
        pos, parts = span.start, []
        for part in dotted.parts:
            m = _WORD.search(self.text, pos, span.end)
            if m is None or m.group() != part:  # text and AST disagree: record nothing
                return
            parts.append((m.start(), m.end()))
            pos = m.end()
        for (start, end), part, (role, definition, path) in zip(parts, dotted.parts, roles):
            if span.line == span.end_line:  # on one line: columns follow from offsets
                column = span.column + start - span.start
                at = Span(span.line, column, span.line, column + end - start, start, end)
            else:
                at = self._point(start, end)
            self._occur(at, part, role, definition, path)

    def _path(self, dotted: ast.Dotted, call: bool = False) -> None:
        """A name or dotted path used in an expression, a call or a dataflow's function."""
        parts = dotted.parts
        head = self._lookup(parts[0])
        if head is not None and head.kind == "alias":
            full = head.target + parts[1:]
            roles = [("alias", head, head.target)]
            roles += [("python", None, full[:len(head.target) + i + 1]) for i in range(len(parts) - 1)]
        elif head is not None:
            roles = [("use", head, None)]
            roles += [("method", head, (parts[1],))] + [("unresolved", None, None)] * (len(parts) - 2) \
                if len(parts) > 1 else []
        elif len(parts) == 1:
            roles = [("builtin" if call and parts[0] in BUILTIN_CALLS else "unresolved", None, None)]
        else:
            roles = [("python", None, parts[:i + 1]) for i in range(len(parts))]
        self._dotted(dotted, roles)

    # ---- statements

    def _block(self, body) -> None:
        for stmt in body:
            self._stmt(stmt)

    def _stmt(self, stmt) -> None:
        if isinstance(stmt, ast.Source):
            self._call(stmt.call)
            self._expr(stmt.partitions)
            self._define(stmt.name, "source", stmt)
        elif isinstance(stmt, (ast.Stage, ast.Value, ast.Var)):
            self._expr(stmt.expr)
            self._define(stmt.name, type(stmt).__name__.lower(), stmt)
        elif isinstance(stmt, ast.Rebind):
            self._expr(stmt.expr)
            var = self._lookup(stmt.name.text)
            self._occur(stmt.name.span, stmt.name.text, "rebind" if var else "unresolved", var)
        elif isinstance(stmt, ast.Actor):
            self._call(stmt.ctor)
            if stmt.size is not None:
                self._expr(stmt.size)
            d = self._define(stmt.name, "pool" if stmt.pool else "actor", stmt, target=self._class_of(stmt.ctor))
            for option in stmt.options:
                if option.kind == "idempotent":
                    for name in option.value:
                        self._occur(name.span, name.text, "method", d, (name.text,))
        elif isinstance(stmt, ast.CallStmt):
            self._call(stmt.call)
        elif isinstance(stmt, ast.Repeat):
            self._expr(stmt.count)
            self.scopes.append({})
            self.regions.append(stmt.span)
            if stmt.index is not None:
                self._define(stmt.index, "index", stmt)
            self._block(stmt.body)
            if stmt.until is not None:
                self._expr(stmt.until)
            self.scopes.pop()
            self.regions.pop()
        elif isinstance(stmt, ast.When):
            self._expr(stmt.cond)
            self.scopes.append({})
            self.regions.append(stmt.span)
            self._block(stmt.body)
            self.scopes.pop()
            self.regions.pop()
        elif isinstance(stmt, ast.Sink):
            self._expr(stmt.expr)
            if stmt.format is not None:
                self._occur(stmt.format.span, stmt.format.text, "format")
            if stmt.target is not None:
                self._expr(stmt.target)
            self._define(stmt.name, "sink", stmt)

    def _class_of(self, call: ast.Call) -> tuple[str, ...] | None:
        parts = call.func.parts
        head = self.names.aliases.get(parts[0])
        if head is not None and not any(parts[0] in scope for scope in self.scopes):
            return head.target + parts[1:]
        return parts if len(parts) > 1 else None

    # ---- expressions (a loop, not recursion alone: expressions nest 200 deep)

    def _call(self, call: ast.Call) -> None:
        self._expr(call)

    def _expr(self, expr) -> None:
        stack = [expr]
        while stack:
            e = stack.pop()
            if isinstance(e, ast.Ref):
                self._path(e.path)
            elif isinstance(e, ast.Call):
                self._path(e.func, call=True)
                stack.extend(reversed(e.args))
                for kw in e.kwargs:
                    self._occur(kw.name.span, kw.name.text, "keyword")
                    stack.append(kw.value)
            elif isinstance(e, ast.Dataflow):
                if e.fn is not None:
                    self._path(e.fn)
                stack.append(e.input)
                for b in e.bindings:
                    self._occur(b.name.span, b.name.text, "keyword")
                    stack.append(b.value)
            elif isinstance(e, ast.BinOp):
                stack.extend((e.right, e.left))
            elif isinstance(e, ast.UnaryOp):
                stack.append(e.operand)
            elif isinstance(e, ast.Paren):
                stack.append(e.inner)
            elif isinstance(e, ast.ListExpr):
                stack.extend(reversed(e.items))
