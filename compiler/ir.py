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
from typing import TYPE_CHECKING

# The models' base: pydantic's API, without pydantic's import cost (see compiler/model.py).
from pipec.compiler.model import BaseModel, ConfigDict, Field, TypeAdapter, model_serializer, model_validator

if TYPE_CHECKING:  # networkx loads when the graph is first asked for (IR.graph)
    import networkx as nx

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
        if type(span.line) is int and type(span.column) is int and type(span.end_line) is int \
                and type(span.end_column) is int:
            # A span's numbers are ints, as the fields say: made as model_copy makes a model,
            # since the IR of a large file holds one per node.
            model = object.__new__(cls)
            object.__setattr__(model, "__dict__", {"line": span.line, "column": span.column,
                                                   "end_line": span.end_line, "end_column": span.end_column})
            return model
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
        values = self.__dict__
        for field_name in _field_names(type(self)):
            value = values[field_name]
            kind = type(value)
            if kind is NodeRef:  # the common cases first: a reference, nothing, a literal
                yield field_name, value.node
            elif value is not None and kind is not Lit:
                yield from _refs(field_name, value)

    @property
    def node_shape(self) -> str:
        return type(self).shape


@lru_cache(maxsize=None)
def _field_names(cls: type) -> tuple[str, ...]:
    # The fields that can hold a NodeRef (by their declared type; Any may hold anything):
    # every op's inputs are asked for when it is added and by each check, and walking
    # its options, callee and flags too cost a third of compiling a large file.
    return tuple(name for name, info in cls.model_fields.items() if name not in ("span", "loop", "name", "op")
                 and ("NodeRef" in repr(info.annotation) or "Any" in repr(info.annotation)))


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


# ---- ordering, sampling and indexing --------------------------------------------------------
# Positions are in collection order: what `collect` shows (see backends/runtime/semantics.py).


class CollectMap(Op):
    """``collect_map(xs)``: a dict of a key/value collection, keys in canonical order."""

    op: Literal["collect_map"] = "collect_map"
    input: NodeRef


class Take(Op):
    """``take(xs, n)``: the first ``n`` items in collection order, as a list."""

    op: Literal["take"] = "take"
    input: NodeRef
    n: Operand


class SortBy(Op):
    """``sort_by(xs, by = m.key)``: stable, by ``by`` (None: by the element itself) in
    canonical order, ties in collection order; as many partitions as ``xs``."""

    shape: ClassVar[str] = COLLECTION
    op: Literal["sort_by"] = "sort_by"
    input: NodeRef
    by: FnRef | None = None
    options: StageOptions = StageOptions()


class Sample(Op):
    """``sample(xs, fraction, seed = s)``: each item kept by a hash of (seed, its position)."""

    shape: ClassVar[str] = COLLECTION
    op: Literal["sample"] = "sample"
    input: NodeRef
    fraction: Operand
    seed: Operand = Lit(value=0)


class ZipWithIndex(Op):
    """``zip_with_index(xs)``: (item, position) pairs, in collection order."""

    shape: ClassVar[str] = COLLECTION
    op: Literal["zip_with_index"] = "zip_with_index"
    input: NodeRef


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
    """``ranks = ...`` inside a loop: the var's value for the next round. Inside a ``when``
    block (``loop`` a when region), the var's value from there on, in the rounds where the
    block runs (in the others it keeps its value)."""

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
          Join, UnionAll, Distinct, Reduce, Collect, Count, Top, Actor, ActorCall, PoolCall, Var, Rebind, Sink,
          CollectMap, Take, SortBy, Sample, ZipWithIndex],
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
    """A pipeline's graph. Nodes are op ids in program order; see the module docstring.

    ``graph`` is the networkx MultiDiGraph. It is made on first use: checking a file
    needs only the ops and their edges, which the IR keeps in plain dicts until then,
    and importing networkx costs ~150 ms, most of what `pipec check` may take. From the
    first use of ``graph`` on, the graph is the one copy (dicts and graph are never
    both kept), so changes made through it are seen by every method here."""

    def __init__(self, info: PipelineInfo, graph: "nx.MultiDiGraph | None" = None):
        self.info = info
        self._graph = graph
        # Until `graph` is asked for: node -> op in program order, and u -> v -> key -> kind
        # in the order networkx would iterate the same edges.
        self._ops: dict[str, Op] | None = None if graph is not None else {}
        self._succ: dict[str, dict[str, dict[str, str]]] | None = None if graph is not None else {}
        self._pred: dict[str, dict[str, None]] | None = None if graph is not None else {}  # v -> {u}

    @property
    def graph(self) -> "nx.MultiDiGraph":
        """The networkx MultiDiGraph: node attribute ``op``, edge key the port, edge
        attribute ``kind``."""
        if self._graph is None:
            import networkx as nx
            graph = nx.MultiDiGraph()
            for node_id, op in self._ops.items():
                graph.add_node(node_id, op=op)
            for u in self._ops:  # networkx iterates edges by source in node order
                for v, keys in self._succ.get(u, {}).items():
                    for key, kind in keys.items():
                        graph.add_edge(u, v, key=key, kind=kind)
            self._graph, self._ops, self._succ, self._pred = graph, None, None, None
        return self._graph

    @graph.setter
    def graph(self, graph: "nx.MultiDiGraph") -> None:
        self._graph, self._ops, self._succ, self._pred = graph, None, None, None

    # building

    def add(self, node_id: str, op: Op) -> str:
        """Add ``op`` as ``node_id`` with an edge from every node it reads."""
        if node_id in self:
            raise ValueError(f"duplicate node id {node_id!r}")
        if self._graph is not None:
            self._graph.add_node(node_id, op=op)
        else:
            self._ops[node_id] = op
        for port, src in op.inputs():
            self._add_edge(src, node_id, port, self._edge_kind(src, op, port))
        if isinstance(op, Rebind):
            self._add_edge(node_id, op.var, "carry", "carry")
        return node_id

    def add_order(self, before: str, after: str) -> None:
        """Program order between two operations on the same actor."""
        self._add_edge(before, after, "order", "order")

    def replace(self, node_id: str, op: Op) -> None:
        """Put ``op`` in place of the op of ``node_id`` (its edges stay as they are)."""
        if self._graph is not None:
            self._graph.nodes[node_id]["op"] = op
        else:
            if node_id not in self._ops:
                raise KeyError(node_id)
            self._ops[node_id] = op

    def _add_edge(self, src: str, dst: str, key: str, kind: str) -> None:
        if self._graph is not None:
            self._graph.add_edge(src, dst, key=key, kind=kind)
            return
        for node in (src, dst):
            if node not in self._ops:
                raise KeyError(f"edge {src!r} -> {dst!r}: no node {node!r}")
        self._succ.setdefault(src, {}).setdefault(dst, {})[key] = kind
        self._pred.setdefault(dst, {})[src] = None

    def _edge_kind(self, src: str, op: Op, port: str) -> str:
        shape = self.op(src).node_shape
        if shape == ACTOR:
            return "actor"
        return "data" if shape == COLLECTION else "value"

    # reading

    def op(self, node_id: str) -> Op:
        if self._graph is not None:
            return self._graph.nodes[node_id]["op"]
        return self._ops[node_id]

    def __contains__(self, node_id) -> bool:
        return node_id in (self._graph if self._graph is not None else self._ops)

    def __len__(self) -> int:
        return len(self._graph if self._graph is not None else self._ops)

    def __iter__(self) -> Iterator[str]:
        return iter(self._graph.nodes if self._graph is not None else list(self._ops))

    def items(self) -> Iterator[tuple[str, Op]]:
        if self._graph is None:
            yield from list(self._ops.items())
            return
        for node_id, data in self._graph.nodes(data=True):
            yield node_id, data["op"]

    def edges(self) -> list[tuple[str, str, str, str]]:
        """Every edge as (from, to, port, kind), in networkx's order (port "" for the
        plain DiGraph a backend's plan draws)."""
        if self._graph is not None:
            if not self._graph.is_multigraph():
                return [(u, v, "", kind) for u, v, kind in self._graph.edges(data="kind")]
            return list(self._graph.edges(keys=True, data="kind"))
        return [(u, v, key, kind) for u in self._ops  # by source in node order, as networkx
                for v, keys in self._succ.get(u, {}).items() for key, kind in keys.items()]

    def edge_kind(self, src: str, dst: str, port: str) -> str:
        """The kind of the edge from ``src`` to ``dst`` on ``port``."""
        if self._graph is not None:
            return self._graph.edges[src, dst, port]["kind"]
        return self._succ[src][dst][port]

    def predecessors(self, node_id: str) -> list[str]:
        """The nodes with an edge into ``node_id`` (each once)."""
        if self._graph is not None:
            return list(self._graph.predecessors(node_id))
        return list(self._pred.get(node_id, ()))

    def out_edges(self, node_id: str) -> list[tuple[str, str]]:
        """(to, kind) of every edge out of ``node_id``, in networkx's order."""
        if self._graph is not None:
            return [(dst, kind) for _, dst, kind in self._graph.out_edges(node_id, data="kind")]
        return [(v, kind) for v, keys in self._succ.get(node_id, {}).items() for kind in keys.values()]

    def in_edges(self, node_id: str) -> list[tuple[str, str, str]]:
        """(from, port, kind) of every edge into ``node_id``, in networkx's order."""
        if self._graph is not None:
            return [(src, port, kind) for src, _, port, kind in self._graph.in_edges(node_id, keys=True, data="kind")]
        return [(u, port, kind) for u in self._pred.get(node_id, ())
                for port, kind in self._succ[u][node_id].items()]

    def consumers(self, node_id: str) -> list[str]:
        if self._graph is not None:
            return [dst for _, dst, kind in self._graph.out_edges(node_id, data="kind") if kind != "carry"]
        return [v for v, keys in self._succ.get(node_id, {}).items() for kind in keys.values() if kind != "carry"]

    def dag(self) -> "nx.MultiDiGraph":
        """The graph without loop-carried edges: acyclic for every valid pipeline."""
        import networkx as nx
        view = nx.subgraph_view(self.graph, filter_edge=lambda u, v, k: k != "carry")
        return view

    # serialisation

    def to_json(self) -> dict:
        """A JSON-ready dict; :meth:`from_json` gives an equal IR back."""
        return {
            "version": IR_VERSION,
            "pipeline": self.info.model_dump(mode="json"),
            "nodes": [{"id": n, **op.model_dump(mode="json")} for n, op in self.items()],
            "edges": [{"from": u, "to": v, "port": k, "kind": kind} for u, v, k, kind in self.edges()],
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
            ir._ops[node_id] = _OP_ADAPTER.validate_python(node)
        for e in data["edges"]:
            if e["kind"] not in EDGE_KINDS:
                raise ValueError(f"unknown edge kind {e['kind']!r}")
            ir._add_edge(e["from"], e["to"], e["port"], e["kind"])
        return ir

    def __eq__(self, other) -> bool:
        if not isinstance(other, IR):
            return NotImplemented
        return (self.info == other.info
                and list(self.items()) == list(other.items())
                and sorted(self.edges()) == sorted(other.edges()))

    __hash__ = None  # mutable
