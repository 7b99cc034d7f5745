"""What a name means where: bindings, the regions ``repeat`` bodies open, and the names
defined further down the file, which explain why a name is not defined yet.

A name is visible from its definition on, in its own region and the regions nested in
it; a ``repeat`` body is a region. A name used before its definition is reported as
such, or as a cycle when that later definition reads the statement that used it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipec.dsl import ast
from pipec.dsl.source import Span
from pipec.compiler import ir
from pipec.compiler.reporter import Reporter


@dataclass
class Binding:
    """What a name means at a point of the program."""

    kind: str  # param, source, stage, value, var, actor, pool, index, sink, broken
    node: str | None
    shape: str  # collection, value, actor, effect
    span: Span
    region: str | None
    keyed: bool | None = None  # for collections: known keyed (True), known not (False)
    order: str | None = None  # for collections: "key" when sorted by key per partition
    actor_class: ir.FnRef | None = None
    pool: bool = False
    py_type: type | None = None  # for values whose Python type is known statically


@dataclass
class Region:
    """The names defined in the pipeline body (``id`` None) or in one ``repeat`` body."""

    id: str | None
    parent: "Region | None"
    names: dict[str, Binding] = field(default_factory=dict)
    rebound: dict[str, str] = field(default_factory=dict)  # var name -> rebind node

    def lookup(self, name: str) -> Binding | None:
        """The binding of ``name`` here or in an enclosing region, or None."""
        region = self
        while region is not None:
            if name in region.names:
                return region.names[name]
            region = region.parent
        return None

    def visible(self) -> set[str]:
        """Every name visible here (for did-you-mean hints)."""
        names, region = set(), self
        while region is not None:
            names |= set(region.names)
            region = region.parent
        return names


class LaterNames:
    """The statements that define each name of a pipeline body, nested bodies included,
    so an undefined name can be explained by a definition further down or inside a loop."""

    def __init__(self) -> None:
        self.stmts: dict[str, ast.Stmt] = {}

    def collect(self, body) -> None:
        """Record the first definition of every name in the AST statements ``body``."""
        for stmt in body:
            name = getattr(stmt, "name", None)
            if isinstance(name, ast.Name) and not isinstance(stmt, ast.Rebind):
                self.stmts.setdefault(name.text, stmt)
            if isinstance(stmt, ast.Repeat):
                if stmt.index:
                    self.stmts.setdefault(stmt.index.text, stmt)
                self.collect(stmt.body)
            if isinstance(stmt, ast.When):
                self.collect(stmt.body)

    def explain(self, name: str, span: Span, rebinding: bool, report: Reporter) -> None:
        """Fail (record the error and raise Abort) when ``name``, undefined at ``span``, is
        defined further down (or closes a cycle), or inside a ``repeat`` and so not visible
        here (unless ``rebinding`` it); return when no later definition explains it."""
        later = self.stmts.get(name)
        if later is not None and later.span.start > span.start:
            if self._cycle_back(name, span):
                report.fail(f"cycle: `{name}` depends on itself", span,
                            f"`{name}` (line {later.span.line}) reads a name defined here; "
                            f"break the cycle with a `var` carried through a `repeat`", code="cycle")
            report.fail(f"`{name}` is used before it is defined", span,
                        f"it is defined at line {later.span.line}; move that definition above this line",
                        code="used-before-definition")
        if later is not None and not rebinding:
            report.fail(f"`{name}` is not visible here", span,
                        f"it is defined inside a `repeat` at line {later.span.line}; declare a `var` "
                        f"before the loop and rebind it inside to use it afterwards", code="not-visible")

    def _cycle_back(self, name: str, use_span: Span) -> bool:
        """Does the (later) definition of ``name`` read the statement containing ``use_span``?"""
        stmt = self.stmts[name]
        owner = self._statement_at(use_span)
        if owner is None:
            return False
        owner_name = owner.name.text
        seen, todo = set(), [stmt]
        while todo:
            current = todo.pop()
            for ref in names_read(current):
                if ref == owner_name:
                    return True
                nxt = self.stmts.get(ref)
                if nxt is not None and ref not in seen and nxt.span.start > use_span.start:
                    seen.add(ref)
                    todo.append(nxt)
        return False

    def _statement_at(self, span: Span):
        for stmt in self.stmts.values():
            if not isinstance(stmt, (ast.Repeat, ast.When)) and stmt.span.start <= span.start < stmt.span.end:
                return stmt
        return None


def names_read(stmt) -> set[str]:
    """Every plain name the AST statement ``stmt`` reads (for cycle hints)."""
    found: set[str] = set()
    stack = [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Ref):
            found.add(node.path.parts[0])
            continue
        if isinstance(node, ast.Call) and len(node.func.parts) > 1:
            found.add(node.func.parts[0])
        for attr in getattr(node, "__slots__", ()):
            if attr in ("span", "name"):
                continue
            child = getattr(node, attr, None)
            if isinstance(child, tuple):
                stack.extend(c for c in child if hasattr(c, "__slots__"))
            elif hasattr(child, "__slots__") and not isinstance(child, (Span, ast.Name)):
                stack.append(child)
    return found
