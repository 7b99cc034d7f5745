"""The abstract syntax tree of a `.pipe` file: small, frozen, a span on every node.

The parser builds it and nothing checks meaning here: whether a name exists, whether an
expression is a collection or a value, is the business of ``compiler/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from pipec.dsl.source import Span


@dataclass(frozen=True, slots=True)
class Name:
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Dotted:
    """A dotted path: ``lr.gradient``, ``examples.text.words``, ``ps.weights``."""

    parts: tuple[str, ...]
    span: Span

    @property
    def text(self) -> str:
        return ".".join(self.parts)


# ---- expressions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    """A number, string, boolean or none. ``raw`` keeps the source text for the formatter."""

    value: Any
    raw: str
    span: Span


@dataclass(frozen=True, slots=True)
class Ref:
    """A name used as an expression: a stage, value, parameter, actor or function path."""

    path: Dotted
    span: Span


@dataclass(frozen=True, slots=True)
class Keyword:
    name: Name
    value: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    """``f(a, k = b)``: a builtin, a Python function, or an actor method."""

    func: Dotted
    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    """Arithmetic, comparison or boolean operator; ``op`` is its source spelling."""

    op: str
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class UnaryOp:
    op: str  # "-", "+", "not"
    operand: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Dataflow:
    """``map f over xs with k = v``, ``reduce f over xs``, ``group_by_key over xs``."""

    kind: str
    fn: Dotted | None
    input: "Expr"
    bindings: tuple[Keyword, ...]
    span: Span
    batch: Name | None = None  # `map_batches f over xs as pandas`: the form the partition takes


@dataclass(frozen=True, slots=True)
class Paren:
    """A parenthesised expression, kept so the formatter can keep the user's parentheses."""

    inner: "Expr"
    span: Span


Expr = Union[Literal, Ref, Call, ListExpr, BinOp, UnaryOp, Dataflow, Paren]


# ---- options ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """A stage or actor option: ``retries 3``, ``timeout 2.5``, ``effectful``,
    ``resources { cpus 1 }``, ``restarts 2``, ``checkpoint every 5 calls``,
    ``idempotent weights``. ``value`` is a Literal, a tuple of (Name, Literal) for
    resources, a tuple of Names for idempotent, or None for flags."""

    kind: str
    value: Any
    span: Span


# ---- statements -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Defaults:
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Source:
    name: Name
    call: Call
    sharded: bool
    partitions: Expr | None  # None: the data decides (one partition per file or row group)
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Stage:
    name: Name
    expr: Expr
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Value:
    name: Name
    expr: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Var:
    name: Name
    expr: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Rebind:
    name: Name
    expr: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Actor:
    name: Name
    ctor: Call
    pool: bool
    size: Expr | None
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class CallStmt:
    """A graph-level call, in program order: ``ps.apply(total)``."""

    call: Call
    span: Span


@dataclass(frozen=True, slots=True)
class Repeat:
    count: Expr
    index: Name | None
    until: Expr | None
    body: tuple["Stmt", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Sink:
    name: Name
    expr: Expr
    format: Name | None
    target: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class When:
    """``when cond { ... }`` inside a loop: the body runs in the rounds where ``cond`` is true."""

    cond: Expr
    body: tuple["Stmt", ...]
    span: Span


Stmt = Union[Defaults, Source, Stage, Value, Var, Rebind, Actor, CallStmt, Repeat, Sink, When]


@dataclass(frozen=True, slots=True)
class Use:
    path: Dotted
    alias: Name
    span: Span


@dataclass(frozen=True, slots=True)
class Param:
    name: Name
    type: Name
    default: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class Pipeline:
    name: Name
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Comment:
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Module:
    """A whole file: its ``use`` lines, its pipeline and its comments (for the formatter)."""

    uses: tuple[Use, ...]
    pipeline: Pipeline
    comments: tuple[Comment, ...] = field(default=())
    span: Span | None = None
