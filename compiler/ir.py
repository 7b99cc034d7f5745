"""The intermediate representation: typed operations in a networkx MultiDiGraph.

Every node holds exactly one attribute, ``op``: a frozen pydantic model that declares its
fields, validates itself when built, and carries the source span and the loop region it
belongs to. Edges are derived from the operations' references, never stored twice by
hand; each edge has a ``kind``:

* ``data``   a collection flows from producer to consumer;
* ``value``  a single Python object (parameter, reduction, actor result) is read;
* ``actor``  an operation uses an actor (a call, a pool, a handle);
* ``order``  program order between operations on the same actor;
* ``carry``  a loop variable's new value flows to the next round (the only back edge).

Loops are regions (:class:`Loop`) kept in the graph's metadata; each op names its
innermost loop, and backends lower a region to a driver loop.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Iterator, Literal, Union

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_serializer, model_validator

COLLECTION, VALUE, ACTOR, EFFECT = "collection", "value", "actor", "effect"
EDGE_KINDS = ("data", "value", "actor", "order", "carry")
IR_VERSION = 1


class Model(BaseModel):
    # defer_build: a model's validator is built on first use, not at import (startup time).
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class SpanModel(Model):
    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def of(cls, span) -> "SpanModel | None":
        if span is None:
            return None
        return cls(line=span.line, column=span.column, end_line=span.end_line, end_column=span.end_column)


class FnRef(Model):
    """A Python callable named by module and attribute: ``examples.linreg`` / ``gradient``."""

    module: str
    attr: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.attr}"


class Lit(Model):
    """An operand known at compile time."""

    type: Literal["lit"] = "lit"
    value: Any


class NodeRef(Model):
    """An operand produced by another node of the graph."""

    type: Literal["ref"] = "ref"
    node: str


Operand = Annotated[Union[Lit, NodeRef], Field(discriminator="type")]


class Resources(Model):
    cpus: float | None = None
    gpus: float | None = None
    memory: int | None = None  # bytes

    def merged(self, other: "Resources") -> "Resources":
        """``self`` with every field ``other`` sets taken from ``other``."""
        return self.model_copy(update={k: v for k, v in other.model_dump().items() if v is not None})


class StageOptions(Model):
    """Fault-tolerance and placement options of one stage (defaults already applied)."""

    retries: int = Field(0, ge=0)
    timeout: float | None = Field(None, gt=0)
    effectful: bool = False
    resources: Resources = Resources()


class Op(Model):
    """Base of every IR operation."""

    shape: ClassVar[str] = VALUE
    op: str
    span: SpanModel | None = None
    loop: str | None = None  # innermost loop region, None at top level
    name: str | None = None  # the user's name for it, if any

    def inputs(self) -> Iterator[tuple[str, str]]:
        """(port, node id) for every node this op reads, in a stable order."""
        for field_name in _field_names(type(self)):
            yield from _refs(field_name, getattr(self, field_name))

    @property
    def node_shape(self) -> str:
        return type(self).shape


@lru_cache(maxsize=None)
def _field_names(cls: type) -> tuple[str, ...]:
    # Asking pydantic for model_fields costs tens of microseconds; a pipeline asks often.
    return tuple(name for name in cls.model_fields if name not in ("span", "loop", "name", "op"))


def _refs(port: str, value) -> Iterator[tuple[str, str]]:
    if isinstance(value, NodeRef):
        yield port, value.node
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _refs(f"{port}[{i}]", item)
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _refs(f"{port}.{k}", item)


# ---- values ----------------------------------------------------------------------------


class Param(Op):
    op: Literal["param"] = "param"
    type: Literal["int", "float", "str", "bool"]
    default: Any = None
    required: bool = False


class Const(Op):
    op: Literal["const"] = "const"
    value: Any


class Call(Op):
    """A plain Python function applied to values in the driver: ``m.schedule(rate, i)``."""

    op: Literal["call"] = "call"
    fn: FnRef
    args: list[Operand] = []
    kwargs: dict[str, Operand] = {}


class Expr(Op):
    """Arithmetic, comparison or boolean operator on values."""

    op: Literal["expr"] = "expr"
    operator: Literal["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=",
                      "and", "or", "not", "neg", "pos", "list"]
    operands: list[Operand]


class Format(Op):
    """A sink path with fields filled in: ``"out/eval-{i}.json"``. ``template`` is the
    user's text (``{{``/``}}`` stand for braces); ``fields`` the values it names, in order
    of first appearance."""

    op: Literal["format"] = "format"
    template: str
    fields: dict[str, Operand] = {}


class RoundIndex(Op):
    """The round number (0-based) of the enclosing ``repeat ... as i``."""

    op: Literal["round_index"] = "round_index"
    of_loop: str


# ---- collections -------------------------------------------------------------------------


class Source(Op):
    """A collection read or made by a source. The file readers' options (``columns``,
    ``header``, ``delimiter``) are ``kwargs``; ``partitions`` is None where the data
    decides (one partition per file, or per row group of a large Parquet file)."""

    shape: ClassVar[str] = COLLECTION
    op: Literal["source"] = "source"
    kind: Literal["range", "read_text", "read_jsonl", "read_parquet", "read_csv", "callable"]
    fn: FnRef | None = None
    args: list[Operand] = []
    kwargs: dict[str, Operand] = {}
    partitions: Operand | None = None
    sharded: bool = False
    options: StageOptions = StageOptions()


class Elementwise(Op):
    """``map``, ``flat_map``, ``filter``, ``map_batches``, ``map_values``: one task per
    partition. ``fn`` names a function, or ``pool``/``method`` an actor pool's method."""

    shape: ClassVar[str] = COLLECTION
    op: Literal["elementwise"] = "elementwise"
    kind: Literal["map", "flat_map", "filter", "map_batches", "map_values"]
    fn: FnRef | None = None
    pool: NodeRef | None = None
    method: str | None = None
    input: NodeRef
    bindings: dict[str, Operand] = {}
    options: StageOptions = StageOptions()
    takes_partition: bool = False  # map_batches function accepts `partition=`
    batch: Literal["pandas", "arrow", "numpy"] | None = None  # `map_batches ... as pandas`

    @model_validator(mode="after")
    def _one_callee(self):
        if (self.fn is None) == (self.pool is None):
            raise ValueError("an elementwise stage names exactly one of fn or pool")
        return self


class ReduceByKey(Op):
    shape: ClassVar[str] = COLLECTION
    op: Literal["reduce_by_key"] = "reduce_by_key"
    fn: FnRef
    input: NodeRef
    options: StageOptions = StageOptions()


class GroupByKey(Op):
    shape: ClassVar[str] = COLLECTION
    op: Literal["group_by_key"] = "group_by_key"
    input: NodeRef
    options: StageOptions = StageOptions()


class Join(Op):
    shape: ClassVar[str] = COLLECTION
    op: Literal["join"] = "join"
    left: NodeRef
    right: NodeRef
    options: StageOptions = StageOptions()


class UnionAll(Op):
    """``union(a, b, ...)``: the partitions of each input, one after the other."""

    shape: ClassVar[str] = COLLECTION
    op: Literal["union"] = "union"
    parts: list[NodeRef]


class Distinct(Op):
    shape: ClassVar[str] = COLLECTION
    op: Literal["distinct"] = "distinct"
    input: NodeRef
    options: StageOptions = StageOptions()


# ---- reductions to a value ------------------------------------------------------------------


class Reduce(Op):
    op: Literal["reduce"] = "reduce"
    fn: FnRef
    input: NodeRef
    options: StageOptions = StageOptions()


class Collect(Op):
    op: Literal["collect"] = "collect"
    input: NodeRef


class Count(Op):
    op: Literal["count"] = "count"
    input: NodeRef


class Top(Op):
    op: Literal["top"] = "top"
    input: NodeRef
    n: Operand
    by: FnRef | None = None


# ---- actors ------------------------------------------------------------------------------


class Actor(Op):
    shape: ClassVar[str] = ACTOR
    op: Literal["actor"] = "actor"
    cls: FnRef
    args: list[Operand] = []
    kwargs: dict[str, Operand] = {}
    pool_size: Operand | None = None
    restarts: int = Field(0, ge=0)
    checkpoint_every: int | None = Field(None, gt=0)
    idempotent: list[str] = []


class ActorCall(Op):
    """A graph-level call, applied exactly once in program order (``seq`` per actor)."""

    op: Literal["actor_call"] = "actor_call"
    actor: NodeRef
    method: str
    args: list[Operand] = []
    kwargs: dict[str, Operand] = {}
    seq: int = Field(ge=0)


class PoolCall(Op):
    """``pool.each.method(...)``: a graph-level call to every member of an actor pool, in
    program order, applied once per member (``seq`` per pool); its value is the list of
    the members' answers, member 0 first."""

    op: Literal["pool_call"] = "pool_call"
    pool: NodeRef
    method: str
    args: list[Operand] = []
    kwargs: dict[str, Operand] = {}
    seq: int = Field(ge=0)


# ---- loop variables and sinks ------------------------------------------------------------


class Var(Op):
    """A loop variable: ``init`` before the first round, then the last ``Rebind``."""

    op: Literal["var"] = "var"
    var_shape: Literal["collection", "value"]
    init: NodeRef

    @property
    def node_shape(self) -> str:
        return self.var_shape


class Rebind(Op):
    """``ranks = ...`` inside a loop: the var's value for the next round."""

    op: Literal["rebind"] = "rebind"
    var: str  # the Var node; linked by a `carry` edge, not a ref (it is a back edge)
    var_shape: Literal["collection", "value"]
    value: NodeRef

    @property
    def node_shape(self) -> str:
        return self.var_shape


class Sink(Op):
    shape: ClassVar[str] = EFFECT
    op: Literal["sink"] = "sink"
    input: NodeRef
    format: Literal["json", "jsonl", "text", "parquet", "csv"] | None = None
    path: Operand | None = None
    schedule_dependent: bool = False


# Sink formats that write a dataset folder from the tasks (one file per partition).
DATASET_FORMATS = ("parquet", "csv")


def is_dataset_sink(op: Op) -> bool:
    """Whether ``op`` is a sink that the tasks write as a dataset folder."""
    return isinstance(op, Sink) and op.format in DATASET_FORMATS


AnyOp = Annotated[
    Union[Param, Const, Call, Expr, Format, RoundIndex, Source, Elementwise, ReduceByKey, GroupByKey,
          Join, UnionAll, Distinct, Reduce, Collect, Count, Top, Actor, ActorCall, PoolCall, Var, Rebind, Sink],
    Field(discriminator="op"),
]
_OP_ADAPTER = TypeAdapter(AnyOp)


class Loop(Model):
    """A ``repeat`` region: at most ``count`` rounds, stopping early when ``until`` is true;
    or a ``when`` region (``when`` set): its body runs once, in each round of the loop
    around it where that value is true (``count`` is 1)."""

    id: str
    parent: str | None = None
    count: Operand
    index: str | None = None  # RoundIndex node
    until: Operand | None = None
    span: SpanModel | None = None
    when: Operand | None = None

    @model_serializer(mode="wrap")
    def _without_when(self, handler):
        # A `repeat` serialises as before `when` existed: its IR (and the goldens) unchanged.
        data = handler(self)
        if data.get("when") is None:
            data.pop("when", None)
        return data


class PipelineInfo(Model):
    name: str
    path: str
    params: list[str]
    loops: dict[str, Loop] = {}
    # Folders holding the user's Python modules, relative to the .pipe file's folder (so
    # the IR's JSON does not depend on where the checkout lives); see module_paths().
    module_roots: list[str] = []

    def module_paths(self) -> list[str]:
        """The module folders as absolute paths, for sys.path on the driver and workers."""
        import os
        base = os.path.dirname(os.path.abspath(self.path))
        return [os.path.normpath(os.path.join(base, root)) for root in self.module_roots]


# ---- the graph --------------------------------------------------------------------------------


class IR:
    """A pipeline's graph. Nodes are op ids in program order; see the module docstring."""

    def __init__(self, info: PipelineInfo, graph: nx.MultiDiGraph | None = None):
        self.info = info
        self.graph = graph if graph is not None else nx.MultiDiGraph()

    # building

    def add(self, node_id: str, op: Op) -> str:
        """Add ``op`` as ``node_id`` with an edge from every node it reads."""
        if node_id in self.graph:
            raise ValueError(f"duplicate node id {node_id!r}")
        self.graph.add_node(node_id, op=op)
        for port, src in op.inputs():
            self.graph.add_edge(src, node_id, key=port, kind=self._edge_kind(src, op, port))
        if isinstance(op, Rebind):
            self.graph.add_edge(node_id, op.var, key="carry", kind="carry")
        return node_id

    def add_order(self, before: str, after: str) -> None:
        """Program order between two operations on the same actor."""
        self.graph.add_edge(before, after, key="order", kind="order")

    def _edge_kind(self, src: str, op: Op, port: str) -> str:
        shape = self.op(src).node_shape
        if shape == ACTOR:
            return "actor"
        return "data" if shape == COLLECTION else "value"

    # reading

    def op(self, node_id: str) -> Op:
        return self.graph.nodes[node_id]["op"]

    def __iter__(self) -> Iterator[str]:
        return iter(self.graph.nodes)

    def items(self) -> Iterator[tuple[str, Op]]:
        for node_id, data in self.graph.nodes(data=True):
            yield node_id, data["op"]

    def consumers(self, node_id: str) -> list[str]:
        return [dst for _, dst, kind in self.graph.out_edges(node_id, data="kind") if kind != "carry"]

    def dag(self) -> nx.MultiDiGraph:
        """The graph without loop-carried edges: acyclic for every valid pipeline."""
        view = nx.subgraph_view(self.graph, filter_edge=lambda u, v, k: k != "carry")
        return view

    # serialisation

    def to_json(self) -> dict:
        """A JSON-ready dict; :meth:`from_json` gives an equal IR back."""
        return {
            "version": IR_VERSION,
            "pipeline": self.info.model_dump(mode="json"),
            "nodes": [{"id": n, **op.model_dump(mode="json")} for n, op in self.items()],
            "edges": [{"from": u, "to": v, "port": k, "kind": kind}
                      for u, v, k, kind in self.graph.edges(keys=True, data="kind")],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, data: dict) -> "IR":
        if data.get("version") != IR_VERSION:
            raise ValueError(f"unsupported IR version {data.get('version')!r}")
        ir = cls(PipelineInfo.model_validate(data["pipeline"]))
        for node in data["nodes"]:
            node = dict(node)
            node_id = node.pop("id")
            ir.graph.add_node(node_id, op=_OP_ADAPTER.validate_python(node))
        for e in data["edges"]:
            if e["kind"] not in EDGE_KINDS:
                raise ValueError(f"unknown edge kind {e['kind']!r}")
            ir.graph.add_edge(e["from"], e["to"], key=e["port"], kind=e["kind"])
        return ir

    def __eq__(self, other) -> bool:
        if not isinstance(other, IR):
            return NotImplemented
        return (self.info == other.info
                and list(self.items()) == list(other.items())
                and sorted(self.graph.edges(keys=True, data="kind"))
                == sorted(other.graph.edges(keys=True, data="kind")))

    __hash__ = None  # mutable
