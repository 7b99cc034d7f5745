"""Planning a pipeline once, for every engine: steps, and the tasks of each graph.

A block (the top level, or one round of a ``repeat``) becomes a list of steps:

* a *graph* step is one batch of tasks submitted at once (a Dask task graph, a wave of
  Ray tasks, a Spark job's stages): the collection operations and reductions that can run
  before the driver needs one of their results;
* a *driver* step runs in the driver: parameters, plain calls, actor calls (numbered,
  exactly once), loop variables, sinks;
* a *loop* step runs its own steps once per round.

A driver step that does not read the open graph runs before it is submitted (program
order is kept wherever it can be observed: a sink, or a call to an actor that a stage of
the open graph talks to, waits for the graph). Inside a graph, adjacent element-wise
stages are fused into one segment (one task per partition, see :mod:`.steps`), and the
partition-wise half of a reduction, a shuffle or a top-n is fused onto them when nothing
else reads the stage. Each task is named by a readable key (``grads-3``, ``total``) and
says which body of the worker runs it (:data:`BODIES`); an engine maps each body to its
primitive and nothing else.

Pure Python, no engine import: ``pipec compile`` shows the plan without starting an
engine, and a run submits the very same tasks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from pipec.compiler import ir
from pipec.compiler.schedule import Block, blocks
from pipec.backends.physical import steps
from pipec.backends.runtime import semantics

GRAPH_OPS = (ir.Source, ir.Elementwise, ir.ReduceByKey, ir.GroupByKey, ir.Join, ir.UnionAll, ir.Distinct,
             ir.Reduce, ir.Count, ir.Top)
# Operations whose per-partition half can be fused onto the element-wise chain feeding them.
TERMINALS = (ir.Reduce, ir.Count, ir.Top, ir.ReduceByKey, ir.GroupByKey, ir.Distinct, ir.Join)
# Ordering, sampling and indexing: take has a partition-wise half to fuse onto (a sort's
# runs are read twice, by the sample and by the range split: its input is a partition).
GRAPH_OPS += (ir.Take, ir.SortBy, ir.Sample, ir.ZipWithIndex)
TERMINALS += (ir.Take,)

# What a task runs, by name; each engine maps these to its own task functions.
BODIES = {
    "segment": "a segment of the physical plan over one partition (see steps.Segment)",
    "merge": "a shuffle's merge: one bucket of every split output, then the segment",
    "finish": "a combine node of a reduction tree, a count's total or a top's final merge",
    "source_call": "a callable source called once, on a worker",
    "take_part": "partition i of k contiguous blocks of a list one task made (a callable source's items)",
    "line_index": "a text file's newlines counted once, so each partition reads only its bytes",
    "pool": "one partition of a stage served by an actor pool member",
}


# The most merge tasks a shuffle gets. A k-way shuffle keeps its k partitions (which key
# lands where, and the order of every fold, are the language's), but when k is larger
# its partitions are merged by MERGE_WIDTH tasks, each making a contiguous run of them
# (steps.group_bounds), and each split hands its buckets over in that many groups: P
# splits then make P x MERGE_WIDTH dependencies, not P x k (1,049,746 at 1,024
# partitions on benchmarks/mapreduce.pipe). Measured there on Dask (2 workers, load 3 to
# 5, medians of 3): 1,024 partitions took 4.7 / 6.9 / 6.2 s at widths 8 / 16 / 32 (and
# 25 to 37 s at 128), 256 partitions 2.6 / 3.1 / 4.8 s. Each dependency costs, a wider
# merge side buys nothing on two workers; but the width caps how many merge tasks run at
# once, so 16, not 8, keeps a cluster of 16 threads busy. A constant, not the cluster's
# size: the plan `pipec compile` shows is the one that runs, on any cluster.
MERGE_WIDTH = 16

# The file sources and the format each reads (see runtime/datasets.py).
FILE_FORMATS = {"read_text": "text", "read_jsonl": "jsonl", "read_parquet": "parquet", "read_csv": "csv"}


def reads_columnar(graph: ir.IR, node: str) -> bool:
    """Whether every reader of collection ``node`` takes a table (a ``map_batches ... as``
    stage or a dataset sink), so its partitions stay columnar instead of becoming rows.
    The one rule every backend applies, so the same bytes come out everywhere."""
    readers = [graph.op(dst) for dst, kind in graph.out_edges(node) if kind == "data"]
    return bool(readers) and all(isinstance(op, ir.Elementwise) and op.batch is not None or ir.is_dataset_sink(op)
                                 for op in readers)


def files_head(graph: ir.IR, node: str, op: ir.Source, ctx, listing: tuple | None) -> tuple[steps.ReadFiles, str]:
    """The head of file source ``node`` on the pieces the driver listed (``listing``;
    None in a plan made before running), and what it does in words: one partition per
    piece, or ``partitions k`` groups of them. ``ctx`` gives the values of operands."""
    pieces = listing[0] if listing is not None else ()
    if op.partitions is not None:
        k = ctx.partitions(node, op.partitions)
    else:
        k = len(pieces) if listing is not None else 1
    options = []
    for name, operand in op.kwargs.items():
        value = ctx.value(operand)
        options.append((name, tuple(value) if isinstance(value, list) else value))
    types = listing[2] if listing is not None and len(listing) > 2 else None
    head = steps.ReadFiles(node, FILE_FORMATS[op.kind], pieces, k, tuple(options), reads_columnar(graph, node), types)
    files = len({f for f, _ in pieces})
    what = (f"{op.kind}, part of {k} ({len(pieces)} pieces in {files} files)" if listing is not None
            else f"{op.kind}, part of the pieces listed when the run starts")
    return head, what


def order_of(graph: ir.IR, node: str) -> str | None:
    """The canonical order of collection ``node``'s output: "key" (sorted by key),
    "element" (sorted), or None (partition order)."""
    op = graph.op(node)
    if isinstance(op, (ir.ReduceByKey, ir.GroupByKey, ir.Join)):
        return "key"
    if isinstance(op, ir.Distinct):
        return "element"
    if isinstance(op, ir.Elementwise) and op.kind in ("filter", "map_values"):
        return order_of(graph, op.input.node)
    if isinstance(op, (ir.Var, ir.Rebind)):
        return order_of(graph, (op.init if isinstance(op, ir.Var) else op.value).node)
    return None


def read_by_stages_only(graph: ir.IR, node: str) -> bool:
    """Whether value ``node`` is read only as a binding of stages (a data key of the
    graphs that run them), so it may stay on the cluster: an actor call's answer then
    goes from the actor to the stages without a round trip through the driver, where
    the engine can do that (Dask, Ray)."""
    readers = [graph.op(dst) for dst, kind in graph.out_edges(node) if kind != "order"]
    return bool(readers) and all(isinstance(op, ir.Elementwise) and op.input.node != node for op in readers)


def actor_answer_for_stages(graph: ir.IR, node: str) -> bool:
    """Whether ``node`` is a graph-level actor call whose answer only stages read."""
    return isinstance(graph.op(node), ir.ActorCall) and read_by_stages_only(graph, node)


# ---- steps -----------------------------------------------------------------------------------


@dataclass
class DriverStep:
    node: str


@dataclass(frozen=True)
class Scan:
    """A shared scan: one task per partition of ``head`` feeds every branch, a branch
    being a consumer of ``head`` (named by its first node) with its own element-wise
    stages and terminal; ``keep`` also outputs the partition, for the readers of
    ``head`` that are not branches (inside the graph or after it)."""

    head: str
    branches: tuple[str, ...]
    keep: bool


@dataclass(frozen=True)
class HoistedSplit:
    """The shuffle split of one side of a join inside loop ``loop`` whose collection
    (``node``) is made before the loop: split once, before the first round, and read by
    every round's merge while the join's bucket count (which ``other``, the side that may
    change, has a say in) is the one it was split for; a round where it is not splits
    again, as if nothing were hoisted."""

    join: str
    side: str  # "left" or "right"
    node: str
    other: str
    loop: str

    @property
    def name(self) -> str:
        """The name the driver keeps the split outputs under (not a node of the IR)."""
        return f"{self.join}@{self.side}"


@dataclass
class GraphStep:
    number: int
    nodes: list[str]
    exports: frozenset[str]  # nodes read after this graph: their keys stay on the cluster
    fuse: dict[str, str]  # node -> the consumer it is fused into
    loop: str | None = None  # the loop whose every round submits this graph
    scans: dict[str, Scan] = field(default_factory=dict)  # scanned collection -> its scan
    declined: dict[str, Scan] = field(default_factory=dict)  # scans the engine does not take
    hoisted: tuple[HoistedSplit, ...] = ()  # splits made here for the loop that follows
    merge_width: int | None = MERGE_WIDTH  # the most merge tasks a shuffle gets; None: one per partition


@dataclass
class LoopStep:
    block: Block
    steps: list
    declined: tuple[HoistedSplit, ...] = ()  # invariant splits the engine runs every round instead


Step = DriverStep | GraphStep | LoopStep


def signature(items: list) -> tuple:
    """Identifies a block's items (the driver re-creates Block objects every round)."""
    return tuple(i if isinstance(i, str) else ("loop", i.loop.id) for i in items)


class Planner:
    """Splits every block of a pipeline into steps, once, in program order. With
    ``shared_scans`` off (an engine that declines them) the scans found are listed in
    each step's ``declined`` instead, so the plan can say what the engine does instead;
    the same for ``hoist_splits`` and the loop-invariant splits of joins. With
    ``group_merges`` off every shuffle has one merge task per partition (see
    :data:`MERGE_WIDTH`)."""

    def __init__(self, graph: ir.IR, shared_scans: bool = True, hoist_splits: bool = True,
                 group_merges: bool = True):
        self.ir = graph
        self.shared_scans = shared_scans
        self.hoist_splits = hoist_splits
        self.merge_width = MERGE_WIDTH if group_merges else None
        self.actors = {n for n, op in graph.items() if isinstance(op, ir.Actor)}
        self.loop_reads: set[str] = set()
        for loop in graph.info.loops.values():
            for operand in (loop.count, loop.until, loop.when):
                if isinstance(operand, ir.NodeRef):
                    self.loop_reads.add(operand.node)
        self._numbers = itertools.count(1)
        self._by_items: dict[tuple, list[Step]] = {}
        self.root = self.plan(blocks(graph))

    def steps_for(self, items: list) -> list[Step]:
        return self._by_items[signature(items)]

    def graph_steps(self, steps: list[Step] | None = None):
        for step in self.root if steps is None else steps:
            if isinstance(step, GraphStep):
                yield step
            elif isinstance(step, LoopStep):
                yield from self.graph_steps(step.steps)

    # planning

    def plan(self, block: Block) -> list[Step]:
        steps: list[Step] = []
        open_nodes: list[str] = []
        deferred: list[str] = []  # vars bound to the open graph's output: set right after it

        def flush():
            if open_nodes:
                steps.append(self._graph_step(list(open_nodes), block.loop.id if block.loop else None))
                open_nodes.clear()
            steps.extend(DriverStep(n) for n in deferred)
            deferred.clear()

        for item in block.items:
            if isinstance(item, Block):
                flush()
                hoisted = self.invariant_splits(item)
                if hoisted and self.hoist_splits:
                    steps.append(GraphStep(next(self._numbers), [], frozenset(h.name for h in hoisted), {},
                                           block.loop.id if block.loop else None, hoisted=hoisted,
                                           merge_width=self.merge_width))
                    hoisted = ()
                steps.append(LoopStep(item, self.plan(item), hoisted))
                continue
            op = self.ir.op(item)
            reads = {src for _, src in op.inputs()}
            if isinstance(op, GRAPH_OPS) or ir.is_dataset_sink(op):
                if any(src in open_nodes for src in _structural(op)) or reads & set(deferred):
                    flush()
                open_nodes.append(item)
                if ir.is_dataset_sink(op):
                    # The tasks write the parts; right after the graph the driver stages
                    # them for the commit.
                    deferred.append(item)
            elif isinstance(op, (ir.Var, ir.Rebind)) and reads & set(open_nodes) and not reads & set(deferred):
                deferred.append(item)  # binding a name moves no data: no need to wait here
            else:
                if (open_nodes or deferred) and (self._must_wait(op, set(open_nodes)) or reads & set(deferred)):
                    flush()
                steps.append(DriverStep(item))
        flush()
        self._by_items[signature(block.items)] = steps
        return steps

    def invariant_splits(self, block: Block) -> tuple[HoistedSplit, ...]:
        """The splits of joins inside ``repeat`` block ``block`` (at any depth) whose side is
        a collection made before the loop: the same every round, so split once. A var is
        not one (it changes every round), nor is a join of a collection with itself."""
        loop = block.loop
        if loop is None or loop.when is not None:
            return ()
        inside = set(block.nodes())
        out = []
        for node in block.nodes():
            op = self.ir.op(node)
            if not isinstance(op, ir.Join) or op.left.node == op.right.node:
                continue
            for side, mine, other in (("left", op.left.node, op.right.node), ("right", op.right.node, op.left.node)):
                if mine not in inside and not isinstance(self.ir.op(mine), (ir.Var, ir.Rebind)):
                    out.append(HoistedSplit(node, side, mine, other, loop.id))
        return tuple(out)

    def _must_wait(self, op: ir.Op, open_nodes: set[str]) -> bool:
        if isinstance(op, ir.Sink):
            return True
        if any(src in open_nodes for _, src in op.inputs()):
            return True
        if isinstance(op, ir.ActorCall):
            return any(op.actor.node in self.handles(n) for n in open_nodes)
        if isinstance(op, ir.PoolCall):  # after the stages its pool serves, in program order
            return any(getattr(self.ir.op(n), "pool", None) == op.pool for n in open_nodes)
        return False

    def handles(self, node: str) -> set[str]:
        """Actors a stage talks to through a handle (``with server = ps``)."""
        op = self.ir.op(node)
        if not isinstance(op, ir.Elementwise):
            return set()
        return {v.node for v in op.bindings.values() if isinstance(v, ir.NodeRef) and v.node in self.actors}

    def _graph_step(self, nodes: list[str], loop: str | None) -> GraphStep:
        inside = set(nodes)
        exports = frozenset(n for n in nodes if n in self.loop_reads or ir.is_dataset_sink(self.ir.op(n)) or any(
            dst not in inside for dst, kind in self.ir.out_edges(n)
            if kind in ("data", "value")))
        fuse: dict[str, str] = {}
        for n in nodes:
            op = self.ir.op(n)
            if n in exports or not _heads_segment(op):
                continue
            outs = self._readers(n)
            if len(outs) != 1 or outs[0] not in inside:
                continue
            if _fusable(op, self.ir.op(outs[0])):
                fuse[n] = outs[0]
        scans = {}
        for n in nodes:
            scan = self._scan(n, nodes, exports, fuse)
            if scan is not None:
                scans[n] = scan
        if not self.shared_scans:
            return GraphStep(next(self._numbers), nodes, exports, fuse, loop, declined=scans,
                             merge_width=self.merge_width)
        return GraphStep(next(self._numbers), nodes, exports, fuse, loop, scans, merge_width=self.merge_width)

    def _readers(self, node: str) -> list[str]:
        return [dst for dst, kind in self.ir.out_edges(node) if kind in ("data", "value")]

    def _scan(self, n: str, nodes: list[str], exports: frozenset[str], fuse: dict[str, str]) -> Scan | None:
        """The shared scan of collection ``n`` of a graph, if it has one: its readers in
        the graph that fuse onto its tasks as branches (each an element-wise chain that
        fusion joins anyway, ending in a terminal), when there are two or more of them,
        or one and the partition is kept for the other readers."""
        op = self.ir.op(n)
        if n in fuse or not _heads_segment(op):
            return None
        inside = set(nodes)
        position = {m: i for i, m in enumerate(nodes)}
        readers = self._readers(n)
        branches, ends = [], []
        for reader in dict.fromkeys(readers):
            end = self._branch_end(n, reader, inside, position, fuse)
            if end is not None and readers.count(reader) == 1:
                branches.append(reader)
                ends.append(end)
        # Two branches ending in one operation (a join of a collection with itself) read
        # the partition as plain inputs instead.
        for end in [e for e in ends if ends.count(e) > 1]:
            while end in ends:
                del branches[ends.index(end)]
                ends.remove(end)
        keep = n in exports or any(r not in branches for r in readers)
        if len(branches) + keep < 2:
            return None
        return Scan(n, tuple(branches), keep)

    def _branch_end(self, n: str, reader: str, inside: set[str], position: dict[str, int],
                    fuse: dict[str, str]) -> str | None:
        """The terminal a branch of ``n``'s scan starting at ``reader`` ends in, when it
        is one: the fusion rule holds from ``n`` on, and its stages bind only values known
        before ``n`` is (made outside the graph, or earlier in it): they are then ready
        when the scan runs."""
        if reader not in inside or not _fusable(self.ir.op(n), self.ir.op(reader)):
            return None
        node = reader
        while True:
            op = self.ir.op(node)
            if not isinstance(op, ir.Elementwise):
                return node
            for operand in op.bindings.values():
                if isinstance(operand, ir.NodeRef) and operand.node in inside and position[operand.node] > position[n]:
                    return None
            if node not in fuse:
                return None
            node = fuse[node]


def _ways(k: int, groups: int | None) -> str:
    """How a split cuts its partition, for the plan: ``split 1024 ways, in 32 groups``."""
    return f"split {k} ways" + (f", in {groups} groups (one per merge task)" if groups else "")


def _heads_segment(op: ir.Op) -> bool:
    """Whether ``op`` makes its partitions in a segment that can go on fused (with more
    element-wise steps and a terminal), rather than in tasks of its own kind."""
    return (isinstance(op, ir.Elementwise) and op.pool is None or
            isinstance(op, ir.Source) and (op.kind != "callable" or op.sharded) or
            isinstance(op, (ir.ReduceByKey, ir.GroupByKey, ir.Join, ir.Distinct)))


def _fusable(op: ir.Op, consumer: ir.Op) -> bool:
    """Whether ``consumer`` can run in the tasks making ``op``'s partitions (the stage
    options that bound a task agree)."""
    if isinstance(consumer, ir.Elementwise) and consumer.pool is None:
        return _compatible(op.options, consumer.options, chain=True)
    if isinstance(consumer, TERMINALS) or ir.is_dataset_sink(consumer):
        return _compatible(op.options, getattr(consumer, "options", None), chain=False)
    return False


def _structural(op: ir.Op) -> list[str]:
    """Nodes whose values shape the graph itself (so they must be known to build it)."""
    if isinstance(op, ir.Source):
        return [src for _, src in op.inputs()]
    if isinstance(op, ir.Top) and isinstance(op.n, ir.NodeRef):
        return [op.n.node]
    if isinstance(op, (ir.Take, ir.Sample)):
        operands = (op.n,) if isinstance(op, ir.Take) else (op.fraction, op.seed)
        return [o.node for o in operands if isinstance(o, ir.NodeRef)]
    return []


def _compatible(a: ir.StageOptions, b: ir.StageOptions | None, chain: bool) -> bool:
    if b is None:
        return True
    if a.resources != b.resources or a.timeout != b.timeout:
        return False
    return a.effectful == b.effectful if chain else True


# ---- task specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A key a task reads: made in the same graph, or kept from an earlier one, where the
    driver holds it as partition ``part`` of ``node`` (``None``: a value or an actor).

    A task with several outputs (a shared scan, see :func:`steps.outputs_of`, or a
    grouped merge, see :func:`steps.task_outputs`) is read one output at a time:
    ``output`` is its index, and ``buckets`` (a split's buckets) says the ref stands for
    that many outputs from ``output`` on, as a list. ``partition``: the shuffle partition
    whose output it is, of a grouped merge's task."""

    key: str
    node: str
    part: int | None = None
    output: int | None = None
    buckets: int | None = None
    partition: int | None = None

    @property
    def text(self) -> str:
        """The ref as a plan shows it: the key, and which output of it (``ys-0[total]``,
        or partition 40 of a grouped merge's task, ``counts-32..63[40]``)."""
        if self.output is None:
            return self.key
        return f"{self.key}[{self.node if self.partition is None else self.partition}]"


@dataclass(frozen=True)
class Arg:
    """A value the driver knows when it builds the graph (a source's arguments, top's n)."""

    operand: Any  # ir.Lit | ir.NodeRef
    path: bool = False  # a file name: made absolute, workers may run elsewhere


@dataclass(frozen=True)
class Rounds:
    """The indices of the current rounds of ``loops`` (outermost first), filled in when a
    task is submitted: part of the idempotency key of a call through a handle."""

    loops: tuple[str, ...] = ()


def loops_of(graph: ir.IR, loop: str | None) -> tuple[str, ...]:
    """The loop ``loop`` and the loops around it, outermost first."""
    chain = []
    while loop is not None:
        chain.append(loop)
        loop = graph.info.loops[loop].parent
    return tuple(reversed(chain))


@dataclass(frozen=True)
class Seq:
    """The number of a pool member's call: the member's next number plus ``offset``."""

    pool: str
    member: int
    offset: int


@dataclass
class TaskSpec:
    """One key of a lowered graph: what it runs, on what, with which options."""

    key: str
    group: str  # the stage or operation the key belongs to
    label: str  # what it does, for people
    body: str | None  # what the task runs (see BODIES); None for a data key
    args: tuple = ()
    retries: int = 0
    resources: dict[str, float] | None = None
    member: tuple[str, int] | None = None  # run next to this pool member
    data: str | None = None  # a data key: the value of this node, shipped once

    @property
    def deps(self) -> list[Ref]:
        return [a for a in self.args if isinstance(a, Ref)]

    @property
    def task_name(self) -> str:
        return "data" if self.body is None else self.body


def resources_of(options: ir.StageOptions | None) -> dict[str, float] | None:
    """A task's resources for a stage's ``resources { ... }`` (CPU, GPU, MEMORY)."""
    if options is None:
        return None
    r = options.resources
    out = {name: float(value) for name, value in (("CPU", r.cpus), ("GPU", r.gpus), ("MEMORY", r.memory))
           if value is not None}
    return out or None


def retries_of(*options: ir.StageOptions | None) -> int:
    given = [o for o in options if o is not None]
    if any(o.effectful for o in given):
        return 0  # no blind retry of an effectful stage
    return max((o.retries for o in given), default=0)


def key_of(node: str) -> str:
    """The key name of a node. Node ids may end in ``-N`` (a second ``count``, say, is
    ``count-2``), which would read as partition N of another node: ``-`` becomes ``#``, so
    every key is ``base``, ``base-i`` or ``base-what...`` with a base of one node only."""
    return node.replace("-", "#")


def part_key(base: str, i: int) -> str:
    return f"{base}-{i}"


class StaticContext:
    """Partition counts known before running (parameters, literals, arithmetic on them)."""

    def __init__(self, graph: ir.IR, params: dict[str, Any]):
        self.ir = graph
        self.params = params
        self.unknown: set[str] = set()
        self.splits: dict[str, int] = {}  # hoisted split -> its bucket count (see HoistedSplit)

    def hoist(self, name: str, k: int) -> None:
        """Hoisted split ``name`` is made with ``k`` buckets."""
        self.splits[name] = k

    def hoisted(self, name: str) -> int | None:
        """The bucket count hoisted split ``name`` was made with, if it was."""
        return self.splits.get(name)

    def value(self, operand):
        if operand is None or isinstance(operand, ir.Lit):
            return None if operand is None else operand.value
        op = self.ir.op(operand.node)
        if isinstance(op, ir.Param):
            return self.params[operand.node]
        if isinstance(op, ir.Const):
            return op.value
        if isinstance(op, ir.Expr):
            return semantics.apply_operator(op.operator, *[self.value(o) for o in op.operands])
        raise LookupError(operand.node)

    def partitions(self, node: str, operand) -> int:
        try:
            return max(0, int(self.value(operand)))
        except (LookupError, TypeError, ValueError, ArithmeticError):
            self.unknown.add(node)
            return 1

    def listing(self, node: str, op: ir.Source) -> tuple | None:
        """A file source's pieces and whether it names one file: not known before running
        (a plan reads no files), so neither is its partition count without `partitions`."""
        if op.partitions is None:
            self.unknown.add(node)
        return None

    def staging(self, node: str, op: ir.Sink) -> str:
        """Where a dataset sink's tasks write its parts (named by the run)."""
        try:
            return f"{self.value(op.path)} (staged beside it until the run succeeds)"
        except LookupError:
            return "the sink's staging folder"

    def pool_size(self, pool: str) -> int:
        try:
            return max(1, int(self.value(self.ir.op(pool).pool_size)))
        except (LookupError, TypeError, ValueError, ArithmeticError):
            self.unknown.add(pool)
            return 1

    def nparts(self, node: str) -> int:
        op = self.ir.op(node)
        if isinstance(op, ir.Source):
            return self.partitions(node, op.partitions)
        if isinstance(op, (ir.Elementwise, ir.ReduceByKey, ir.GroupByKey, ir.Distinct, ir.SortBy, ir.Sample,
                           ir.ZipWithIndex)):
            return self.nparts(op.input.node)
        if isinstance(op, ir.Join):
            return max(self.nparts(op.left.node), self.nparts(op.right.node))
        if isinstance(op, ir.UnionAll):
            return sum(self.nparts(p.node) for p in op.parts)
        if isinstance(op, ir.Var):
            return self.nparts(op.init.node)
        if isinstance(op, ir.Rebind):
            return self.nparts(op.value.node)
        raise ValueError(f"{node} is not a collection")


def policy_of(options: ir.StageOptions | None) -> steps.Policy:
    """A stage's options as the interpreter applies them."""
    if options is None:
        return steps.Policy()
    return steps.Policy(options.retries, options.timeout, options.effectful)


def fn_ref(ref: ir.FnRef | None) -> steps.Fn | None:
    return steps.Fn(ref.module, ref.attr) if ref is not None else None


class _Slots(list):
    """The keys a chain's tasks read, each once, numbered by position. Finding a key's
    slot is a lookup, not a scan of the list: a merge of P splits takes P slots, and the
    scan made lowering mapreduce at 1,024 partitions quadratic (1M comparisons, 0.63 s
    of a 4.1 s run on Ray under a profiler)."""

    def __init__(self, refs=()):
        super().__init__(refs)
        self._index = {ref: i for i, ref in enumerate(self)}

    def slot(self, ref: "Ref") -> int:
        """The slot of ``ref``, added at the end when new."""
        i = self._index.get(ref)
        if i is None:
            i = self._index[ref] = len(self)
            self.append(ref)
        return i


@dataclass
class _Chain:
    """Work fused into one task per partition: a head (a partition read from a key, a
    source making it, or a shuffle's merge), element-wise stages, maybe a terminal."""

    head: Any  # a physical-plan head (see physical.steps)
    inputs: list  # per partition: a Ref to its items, or None when the head makes them
    refs: _Slots = field(default_factory=_Slots)  # keys every task reads (slots)
    stages: list[steps.Elementwise] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    options: list = field(default_factory=list)
    sides: tuple | None = None  # a merge: the slots of each side's split outputs
    scan: str | None = None  # a branch of the shared scan of this collection

    @property
    def grouped(self) -> bool:
        """Whether the head is a grouped merge: a task per group of partitions."""
        return isinstance(self.head, steps.Merge) and self.head.groups is not None

    @classmethod
    def reading(cls, node: str, refs: list[Ref]) -> "_Chain":
        return cls(steps.Input(node), list(refs))

    def slot(self, ref: Ref) -> int:
        return self.refs.slot(ref)


@dataclass
class _Scanning:
    """A shared scan being lowered: the chain making the partitions, and the branches
    lowered so far (in program order), with the outputs they take."""

    plan: Scan
    chain: _Chain
    stem: str
    branches: list = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    options: list = field(default_factory=list)
    outputs: int = 0


class StepLowering:
    """The task specs of one graph step. ``ctx`` gives partition counts of collections
    made outside the step and of sources (statically for a plan, live for a run).

    Every partition-wise piece of work is a segment of the physical plan (a head, fused
    element-wise stages, an optional terminal: the per-partition half of a reduction, a
    shuffle or a top) that the worker runs with the shared interpreter."""

    def __init__(self, graph: ir.IR, step: GraphStep, ctx, actor_nodes: set[str]):
        self.ir = graph
        self.step = step
        self.ctx = ctx
        self.actors = actor_nodes
        self.inside = set(step.nodes)
        self.specs: dict[str, TaskSpec] = {}
        self.parts: dict[str, list[Ref]] = {}  # collection node -> its partitions' refs
        self.values: dict[str, Ref] = {}  # value node made here -> its key
        self.chains: dict[str, _Chain] = {}  # node fused into its consumer -> pending chain
        self.scans: dict[str, _Scanning] = {}  # scanned collection -> its scan, while its branches come
        self.loops = loops_of(graph, step.loop)  # the loops whose every round runs this graph
        self.ungrouped: list[tuple[str, int]] = []  # (shuffle, k) merged a task a partition: the engine declines
        self.unscanned: list[str] = []  # planned scans of grouped merges' partitions, read as they are instead

    def lower(self) -> list[TaskSpec]:
        for node in self.step.nodes:
            op = self.ir.op(node)
            getattr(self, f"_lower_{op.op}")(node, op)
        for hoisted in self.step.hoisted:
            self._hoist_split(hoisted)
        unfinished = [node for node, scan in self.scans.items() if len(scan.branches) < len(scan.plan.branches)]
        if unfinished:
            raise AssertionError(f"the shared scans of {', '.join(unfinished)} lack branches")
        return list(self.specs.values())

    # helpers

    def _add(self, spec: TaskSpec) -> Ref:
        self.specs[spec.key] = spec
        return Ref(spec.key, spec.group)

    def parts_of(self, node: str) -> list[Ref]:
        if node in self.parts:
            return self.parts[node]
        if node in self.inside:
            raise AssertionError(f"{node} is fused away but read")
        return [Ref(part_key(key_of(node), i), node, i) for i in range(self.ctx.nparts(node))]

    def nparts(self, node: str) -> int:
        if node in self.chains:
            return len(self.chains[node].inputs)
        if node in self.scans:
            return len(self.scans[node].chain.inputs)
        return len(self.parts_of(node))

    def chain_of(self, node: str, reader: str | None = None) -> _Chain:
        """The pending chain ending at ``node`` (fused into the caller), a new branch of
        ``node``'s shared scan when ``reader`` is one, or a new chain reading ``node``'s
        partitions."""
        if node in self.chains:
            return self.chains.pop(node)
        scan = self.scans.get(node)
        if scan is not None and reader in scan.plan.branches:
            return _Chain(None, scan.chain.inputs, scan.chain.refs, scan=node)
        return _Chain.reading(node, self.parts_of(node))

    def value_ref(self, node: str) -> Ref:
        """A value read by a task: made in this graph, or shipped once as a data key."""
        if node in self.values:
            return self.values[node]
        key = key_of(node)
        if key not in self.specs:
            made = isinstance(self.ir.op(node), (ir.Reduce, ir.Count, ir.Top, ir.Take))
            per_round = " per round" if self.step.loop else ""
            label = ("value made by an earlier graph, read where it is" if made else
                     f"an actor call's answer, read only by stages{per_round}"
                     if actor_answer_for_stages(self.ir, node) else
                     f"value from the driver, shipped once{per_round}")
            self.specs[key] = TaskSpec(key, node, label, None, data=node)
        return Ref(key, node, None)

    def _bindings(self, bindings: dict, chain: _Chain) -> tuple:
        out = []
        for name, operand in bindings.items():
            if isinstance(operand, ir.Lit):
                out.append((name, steps.Lit(operand.value)))
            elif operand.node in self.actors:
                ref = Ref(f"{key_of(operand.node)}-actor", operand.node, None)
                out.append((name, steps.Handle(chain.slot(ref), operand.node, Rounds(self.loops))))
            else:
                out.append((name, steps.Slot(chain.slot(self.value_ref(operand.node)), operand.node)))
        return tuple(out)

    def _start(self, node: str, chain: _Chain, label: str, options) -> None:
        """``node`` makes its partitions with ``chain``'s head: fused into its consumer's
        tasks, or tasks of its own now."""
        chain.names.append(node)
        chain.labels.append(label)
        chain.options.append(options)
        self._continue(node, chain)

    def _continue(self, node: str, chain: _Chain) -> None:
        if node in self.step.fuse:
            self.chains[node] = chain
        elif node in self.step.scans and not chain.grouped:
            # A grouped merge's partitions are not scanned: its group tasks make them, and
            # each reader reads them as it reads any collection's (a rare shape: a shuffle
            # of more than MERGE_WIDTH partitions read twice in its own graph).
            self._open_scan(node, chain)
        elif node in self.step.scans:
            self.unscanned.append(node)
            self.parts[node] = self._emit(chain, None, None, None)
        else:
            self.parts[node] = self._emit(chain, None, None, None)

    # shared scans: one task per partition, a branch per consumer

    def _open_scan(self, node: str, chain: _Chain) -> None:
        """Start ``node``'s shared scan: its tasks' keys are taken now, in program order
        (what reads them comes later), and filled in when the last branch arrives."""
        scan = self.scans[node] = _Scanning(self.step.scans[node], chain, key_of(node))
        for i in range(len(chain.inputs)):
            self.specs[part_key(scan.stem, i)] = None  # its place among the specs
        if scan.plan.keep:
            scan.outputs = 1
            self.parts[node] = [Ref(part_key(scan.stem, i), node, i, output=0) for i in range(len(chain.inputs))]
        if not scan.plan.branches:
            self._close_scan(scan)

    def _data_first(self, place: str, keys: list[str]) -> None:
        """Move the data keys among ``keys`` that were added after ``place`` (a branch's
        binding, shipped from the driver) to just before it: the scan's tasks read them."""
        order = list(self.specs)
        late = [k for k in keys if k in self.specs and self.specs[k] is not None and self.specs[k].data is not None
                and order.index(k) > order.index(place)]
        if not late:
            return
        specs = {}
        for key, spec in self.specs.items():
            if key == place:
                specs.update((k, self.specs[k]) for k in late)
            if key not in late:
                specs[key] = spec
        self.specs = specs

    def _branch(self, chain: _Chain, terminal, label: str, options) -> list[Ref]:
        """A branch of a shared scan: ``chain``'s stages and ``terminal`` run in the scan's
        tasks; gives the refs of its outputs there, one per partition."""
        scan = self.scans[chain.scan]
        first, width = scan.outputs, steps.outputs_of(terminal)
        scan.outputs += width
        scan.branches.append((tuple(chain.stages), terminal))
        scan.labels.append(f"[{terminal.node}] " + " -> ".join(chain.labels + [label]))
        scan.names.extend(chain.names + [terminal.node])
        scan.options.extend(chain.options + [options])
        if len(scan.branches) == len(scan.plan.branches):
            self._close_scan(scan)
        buckets = width if isinstance(terminal, steps.Split) else None
        return [Ref(part_key(scan.stem, i), terminal.node, None, first, buckets) for i in range(len(scan.chain.inputs))]

    def _close_scan(self, scan: "_Scanning") -> None:
        chain = scan.chain
        head = scan.plan.head
        kept = [f"[{head}] the partition, kept"] if scan.plan.keep else []
        label = " -> ".join(chain.labels) + ", one pass feeding: " + "; ".join(kept + scan.labels)
        terminal = steps.Branches(head, tuple(scan.branches), scan.plan.keep)
        options = chain.options + scan.options
        retries = retries_of(*options)
        given = [o for o in options if o is not None]
        res = resources_of(given[0] if given else None)
        segment = steps.Segment(scan.stem, chain.head, tuple(chain.stages), terminal, tuple(chain.names + scan.names))
        body = "merge" if chain.sides is not None else "segment"
        self._data_first(part_key(scan.stem, 0), [ref.key for ref in chain.refs])
        for i, base in enumerate(chain.inputs):
            middle = (chain.sides,) if chain.sides is not None else (base,)
            self._add(TaskSpec(part_key(scan.stem, i), head, label, body, (segment, i, *middle, *chain.refs),
                               retries, res))

    def _emit(self, chain: _Chain, terminal, term_label: str | None, term_options,
              name: str | None = None, group: str | None = None) -> list[Ref]:
        """One task per partition running ``chain`` (and ``terminal``); a branch of a
        shared scan runs in the scan's tasks instead."""
        if chain.scan is not None:
            return self._branch(chain, terminal, term_label, term_options)
        stem = name or key_of(chain.names[-1])
        label = " -> ".join(chain.labels + ([term_label] if term_label else []))
        options = chain.options + [term_options]
        retries = retries_of(*options)
        given = [o for o in options if o is not None]
        res = resources_of(given[0] if given else None)
        nodes = tuple(chain.names) + ((terminal.node,) if terminal is not None else ())
        segment = steps.Segment(stem, chain.head, tuple(chain.stages), terminal, nodes)
        if chain.grouped:
            return self._merge_groups(chain, segment, stem, group or chain.names[-1], label, retries, res)
        if chain.sides is not None:
            return [self._add(TaskSpec(part_key(stem, i), group or chain.names[-1], label, "merge",
                                       (segment, i, chain.sides, *chain.refs), retries, res))
                    for i in range(len(chain.inputs))]
        return [self._add(TaskSpec(part_key(stem, i), group or chain.names[-1], label, "segment",
                                   (segment, i, base, *chain.refs), retries, res))
                for i, base in enumerate(chain.inputs)]

    def _merge_groups(self, chain: _Chain, segment: steps.Segment, stem: str, group: str, label: str,
                      retries: int, res) -> list[Ref]:
        """The tasks of a grouped merge, one per group of partitions (keyed by the
        partitions it makes, ``counts-0..31``), and a ref per partition: its output of
        its group's task (a list of them when the segment ends in a split)."""
        head = chain.head
        width = steps.outputs_of(segment.terminal)
        buckets = width if steps.several(segment.terminal) else None
        refs = []
        for j, (a, b) in enumerate(steps.group_bounds(head.k, head.groups)):
            key = f"{stem}-{a}..{b - 1}"
            self._add(TaskSpec(key, group, f"{label}: partitions {a}..{b - 1} of {head.k} (group {j} of "
                                           f"{head.groups})", "merge", (segment, j, chain.sides, *chain.refs),
                               retries, res))
            refs += [Ref(key, group, None, (r - a) * width, buckets, r) for r in range(a, b)]
        return refs

    # sources

    def _lower_source(self, node: str, op: ir.Source) -> None:
        k = self.ctx.partitions(node, op.partitions) if op.partitions is not None else 1
        retries, res = retries_of(op.options), resources_of(op.options)
        args = [Arg(a) for a in op.args]
        kwargs = {key: Arg(v) for key, v in op.kwargs.items()}
        if op.kind == "callable" and not op.sharded:
            everything = self._add(TaskSpec(f"{key_of(node)}-all", node, f"call {op.fn.dotted} (once, on a worker)",
                                            "source_call", (node, fn_ref(op.fn), args, kwargs),
                                            retries, res))
            self.parts[node] = [self._add(TaskSpec(part_key(key_of(node), i), node, f"part {i} of {k}",
                                                   "take_part",
                                                   (node, i, k, everything), retries, res)) for i in range(k)]
            return
        fmt = FILE_FORMATS.get(op.kind)
        listing = self.ctx.listing(node, op) if fmt is not None else None
        if fmt is not None and (fmt in ("parquet", "csv") or listing is not None and not listing[1]):
            self._lower_files(node, op, fmt, listing)
            return
        chain = _Chain(None, [None] * k)
        if op.kind == "range":
            chain.head = steps.RangeSlice(node, args[0], k)
            what = f"range, part of {k}"
        elif op.kind == "read_text":
            # One small task counts the lines once; each partition then reads its bytes only.
            index = self._add(TaskSpec(f"{key_of(node)}-index", node, "count the lines", "line_index",
                                       (node, Arg(op.args[0], path=True)), retries, res))
            chain.head = steps.ReadText(node, Arg(op.args[0], path=True), k, chain.slot(index))
            what = f"read_text, part of {k}"
        elif op.kind == "read_jsonl":
            chain.head = steps.ReadJsonl(node, Arg(op.args[0], path=True), k)
            what = f"read_jsonl, part of {k}"
        else:
            chain.head = steps.Sharded(node, fn_ref(op.fn), tuple(args), tuple(kwargs.items()), k,
                                       policy_of(op.options))
            what = f"{op.fn.dotted} sharded, part of {k}"
        self._start(node, chain, what, op.options)

    def _lower_files(self, node: str, op: ir.Source, fmt: str, listing: tuple | None) -> None:
        head, what = files_head(self.ir, node, op, self.ctx, listing)
        self._start(node, _Chain(head, [None] * head.k), what, op.options)

    # element-wise

    def _lower_elementwise(self, node: str, op: ir.Elementwise) -> None:
        if op.pool is not None:
            self._lower_pool_stage(node, op)
            return
        chain = self.chain_of(op.input.node, node)
        chain.stages.append(steps.Elementwise(node, op.kind, fn_ref(op.fn), self._bindings(op.bindings, chain),
                                              policy_of(op.options), batch=op.batch,
                                              columnar=op.batch is not None and reads_columnar(self.ir, node)))
        chain.names.append(node)
        chain.labels.append(f"{op.kind} {op.fn.dotted}" + (f" as {op.batch}" if op.batch else ""))
        chain.options.append(op.options)
        self._continue(node, chain)

    def _lower_pool_stage(self, node: str, op: ir.Elementwise) -> None:
        pool = op.pool.node
        size = self.ctx.pool_size(pool)
        chain = _Chain(None, [])  # only for its slots
        step = steps.Elementwise(node, op.kind, None, self._bindings(op.bindings, chain), policy_of(op.options),
                                 pool=pool, method=op.method, batch=op.batch,
                                 columnar=op.batch is not None and reads_columnar(self.ir, node))
        out = []
        for i, base in enumerate(self.parts_of(op.input.node)):
            m = i % size
            member = Ref(f"{key_of(pool)}-member-{m}", pool, m)
            out.append(self._add(TaskSpec(
                part_key(key_of(node), i), node,
                f"{op.kind} {pool}.{op.method}{f' as {op.batch}' if op.batch else ''} on pool member {m}",
                "pool",
                (step, i, Seq(pool, m, i // size), m, member, base, *chain.refs),
                retries_of(op.options), resources_of(op.options), member=(pool, m))))
        self.parts[node] = out

    # partition-wise halves of reductions, shuffles and top

    def _partials(self, node: str, src: str, terminal, label: str, options, name: str) -> list[Ref]:
        """Per-partition results of ``terminal`` over ``src``: in the tasks of ``src``'s
        chain when fused, else in tasks keyed ``{name}-{i}``."""
        if src in self.chains and self.step.fuse.get(src) == node:
            return self._emit(self.chains.pop(src), terminal, label, options)
        return self._emit(self.chain_of(src, node), terminal, label, options, name=name, group=node)

    def _lower_reduce(self, node: str, op: ir.Reduce) -> None:
        fn, policy = fn_ref(op.fn), policy_of(op.options)
        partials = self._partials(node, op.input.node, steps.Fold(node, fn, policy),
                                  f"fold {op.fn.dotted} (partial of {node})", op.options, key_of(node))
        retries, res = retries_of(op.options), resources_of(op.options)
        level, depth = partials, 1
        fan = semantics.FAN_IN
        while len(level) > fan:
            level = [self._add(TaskSpec(f"{key_of(node)}-L{depth}-{j}", node,
                                        f"combine {op.fn.dotted} (level {depth}, inputs {i}..{min(i + fan, len(level)) - 1})",
                                        "finish", (steps.Combine(node, fn, False, policy), *level[i:i + fan]),
                                        retries, res))
                     for j, i in enumerate(range(0, len(level), fan))]
            depth += 1
        self.values[node] = self._add(TaskSpec(key_of(node), node, f"combine {op.fn.dotted} (in partition order)",
                                               "finish", (steps.Combine(node, fn, True, policy), *level),
                                               retries, res))

    def _lower_count(self, node: str, op: ir.Count) -> None:
        lengths = self._partials(node, op.input.node, steps.Count(node), "len", None, key_of(node))
        self.values[node] = self._add(TaskSpec(key_of(node), node, "sum of lengths", "finish",
                                               (steps.CountTotal(node), *lengths)))

    def _lower_top(self, node: str, op: ir.Top) -> None:
        src = op.input.node
        order = order_of(self.ir, src)
        by, n = fn_ref(op.by), Arg(op.n)
        cands = self._partials(node, src, steps.TopPartial(node, n, by, order), "top n (candidates)", None,
                               key_of(node))
        self.values[node] = self._add(TaskSpec(key_of(node), node, "top n of the candidates", "finish",
                                               (steps.TopMerge(node, n, by, order), *cands)))

    def _lower_sink(self, node: str, op: ir.Sink) -> None:
        """A dataset sink: every partition written as a part file by its task (fused onto
        the chain that makes it), then the names of the parts, for the driver's commit."""
        staging = self.ctx.staging(node, op)
        parts = self._partials(node, op.input.node, steps.WritePart(node, op.format, staging),
                               f"write a {op.format} part into {staging}", None, key_of(node))
        self.values[node] = self._add(TaskSpec(key_of(node), node, "the parts written, in partition order",
                                               "finish", (steps.Written(node), *parts)))

    # shuffles: a split per input partition, a merge per output partition

    def _groups(self, node: str, k: int) -> int | None:
        """How many merge tasks make the ``k`` partitions of shuffle ``node``: None (one
        each) up to the step's ``merge_width``, else that many groups. A shuffle the
        engine declines to group is noted (``ungrouped``) where grouping would apply."""
        width = self.step.merge_width
        if width is None:
            if k > MERGE_WIDTH:
                self.ungrouped.append((node, k))
            return None
        return width if k > width else None

    def _merge(self, node: str, op, how: str, fn, splits: list[list[Ref]], label: str, k: int,
               groups: int | None) -> None:
        chain = _Chain(steps.Merge(node, how, fn, policy_of(op.options), *((k, groups) if groups else ())),
                       [None] * k)
        chain.sides = tuple(tuple(chain.slot(ref) for ref in side) for side in splits)
        self._start(node, chain, label, op.options)

    def _lower_reduce_by_key(self, node: str, op: ir.ReduceByKey) -> None:
        src = op.input.node
        k = self.nparts(src)
        fn, groups = fn_ref(op.fn), self._groups(node, k)
        splits = self._partials(node, src, steps.Split(node, "reduce_by_key", k, fn, policy_of(op.options),
                                                       groups=groups),
                                f"combine by key {op.fn.dotted}, {_ways(k, groups)}", op.options,
                                f"{key_of(node)}-split")
        self._merge(node, op, "reduce_by_key", fn, [splits], f"merge {op.fn.dotted} by key", k, groups)

    def _lower_group_by_key(self, node: str, op: ir.GroupByKey) -> None:
        src = op.input.node
        k = self.nparts(src)
        groups = self._groups(node, k)
        splits = self._partials(node, src, steps.Split(node, "group_by_key", k, groups=groups),
                                f"{_ways(k, groups)} by key", op.options, f"{key_of(node)}-split")
        self._merge(node, op, "group_by_key", None, [splits], "group by key", k, groups)

    def _lower_distinct(self, node: str, op: ir.Distinct) -> None:
        src = op.input.node
        k = self.nparts(src)
        groups = self._groups(node, k)
        splits = self._partials(node, src, steps.Split(node, "distinct", k, groups=groups),
                                f"{_ways(k, groups)} by element", op.options, f"{key_of(node)}-split")
        self._merge(node, op, "distinct", None, [splits], "distinct", k, groups)

    def _lower_join(self, node: str, op: ir.Join) -> None:
        left, right = op.left.node, op.right.node
        k = max(self.nparts(left), self.nparts(right))
        groups = self._groups(node, k)
        term = steps.Split(node, "join", k, groups=groups)
        sides = []
        for side, src in (("left", left), ("right", right)):
            name = f"{node}@{side}"
            if self.ctx.hoisted(name) == k:  # split before the loop, for this bucket count
                sides.append([Ref(part_key(key_of(name), i), name, i) for i in range(self.nparts(src))])
            else:
                sides.append(self._partials(node, src, term, f"{_ways(k, groups)} by key", op.options,
                                            f"{key_of(node)}-{side}"))
        self._merge(node, op, "join", None, sides, "join by key", k, groups)

    def _hoist_split(self, hoisted: HoistedSplit) -> None:
        """The split of a join's side that is the same every round of its loop, made
        before the first round with the bucket count the rounds are expected to use (the
        other side's partitions as the loop will see them); see :class:`HoistedSplit`."""
        other = self._expected_nparts(hoisted.other, hoisted.loop)
        if other is None:
            return  # cannot tell before the loop: every round splits it
        op = self.ir.op(hoisted.join)
        k = max(self.nparts(hoisted.node), other)
        chain = _Chain.reading(hoisted.node, self.parts_of(hoisted.node))
        groups = self._groups(hoisted.join, k)
        label = (f"{_ways(k, groups)} by key, once for the rounds of {hoisted.loop} that join {k} ways "
                 f"(`{hoisted.node}` does not change in them)")
        self.parts[hoisted.name] = self._emit(chain, steps.Split(hoisted.join, "join", k, groups=groups), label,
                                              op.options, name=key_of(hoisted.name), group=hoisted.join)
        self.ctx.hoist(hoisted.name, k)

    def _expected_nparts(self, node: str, loop: str) -> int | None:
        """How many partitions ``node`` will have in loop ``loop``'s rounds, as far as can
        be told before the loop: a collection made before it (a var: its value now) as it
        is, one made in a round from its inputs; None where that cannot be told."""
        op = self.ir.op(node)
        if loop not in loops_of(self.ir, op.loop) or isinstance(op, ir.Var):
            return self.ctx.nparts(node)
        inputs = {ir.Elementwise: "input", ir.ReduceByKey: "input", ir.GroupByKey: "input", ir.Distinct: "input",
                  ir.SortBy: "input", ir.Sample: "input", ir.ZipWithIndex: "input", ir.Rebind: "value"}
        if type(op) in inputs:
            return self._expected_nparts(getattr(op, inputs[type(op)]).node, loop)
        if isinstance(op, (ir.Join, ir.UnionAll)):
            counts = [self._expected_nparts(r.node, loop) for r in ((op.left, op.right) if isinstance(op, ir.Join)
                                                                    else op.parts)]
            if None in counts:
                return None
            return max(counts) if isinstance(op, ir.Join) else sum(counts)
        return None

    def _lower_union(self, node: str, op: ir.UnionAll) -> None:
        self.parts[node] = [ref for part in op.parts for ref in self.parts_of(part.node)]

    # ordering, sampling and indexing: positions in collection order

    def _lower_take(self, node: str, op: ir.Take) -> None:
        src = op.input.node
        order = order_of(self.ir, src)
        n = Arg(op.n)
        cands = self._partials(node, src, steps.TakePartial(node, n, order), "first n (candidates)", None,
                               key_of(node))
        self.values[node] = self._add(TaskSpec(key_of(node), node, "first n of the candidates, in partition order",
                                               "finish", (steps.TakeMerge(node, n, order), *cands)))

    def _sorted_parts(self, node: str, src: str, by: ir.FnRef | None, by_element: bool, options,
                      stem: str, what: str) -> list[Ref]:
        """``src`` sorted (see semantics.sort_key) by key range, into as many partitions:
        each partition sorted into a run by its task; evenly spaced keys of each run
        (one small task per run) choose the splitters (one task); each run cut at the
        splitters into its pieces of every range; one merge per range, of those pieces in
        partition order. No task holds more than a partition, a run or a range (see
        semantics.sorted_ranges: the local backend computes the same partitions)."""
        if src in self.chains:  # fused here: its partitions are made first (the runs read them)
            self.parts[src] = self._emit(self.chains.pop(src), None, None, None)
        k = self.nparts(src)
        if k == 0:
            return []
        order = order_of(self.ir, src)
        width = semantics.sort_width(by is not None, by_element, order)
        retries, res = retries_of(options), resources_of(options)
        sort = _Chain(steps.SortRun(node, fn_ref(by), by_element, order, policy_of(options)), list(self.parts_of(src)),
                      names=[node], labels=[f"{what}: this partition's sorted run"], options=[options])
        runs = self._emit(sort, None, None, None, name=f"{stem}-run", group=node)
        samples = self._emit(_Chain.reading(node, runs), steps.SortSample(node, k),
                             "evenly spaced keys of the run, weighted", None, name=f"{stem}-sample", group=node)
        splitters = self._add(TaskSpec(f"{stem}-splitters", node,
                                       f"{k - 1} splitter{'' if k == 2 else 's'} of {k} key ranges from the {k} runs' keys",
                                       "finish", (steps.SortSplitters(node, k, width), *samples), retries, res))
        cutting = _Chain.reading(node, runs)
        groups = self._groups(node, k)
        cut = steps.Split(node, "range", k, splitters=cutting.slot(splitters), groups=groups)
        into = f", in {groups} groups (one per merge task)" if groups else ""
        pieces = self._emit(cutting, cut, f"cut the run at the splitters into its {k} key ranges{into}", None,
                            name=f"{stem}-split", group=node)
        merge = _Chain(steps.Merge(node, "sort", None, policy_of(options), *((k, groups) if groups else ())),
                       [None] * k, names=[node],
                       labels=["merge one key range from every run's piece, in partition order"],
                       options=[options])
        merge.sides = (tuple(merge.slot(ref) for ref in pieces),)
        return self._emit(merge, None, None, None, name=stem, group=node)

    def _lower_sort_by(self, node: str, op: ir.SortBy) -> None:
        what = f"sort by {op.by.dotted}" if op.by else "sort by element"
        self.parts[node] = self._sorted_parts(node, op.input.node, op.by, op.by is None, op.options, key_of(node),
                                              what)

    def _in_collection_order(self, node: str, src: str) -> list[Ref]:
        """The partitions of ``src`` laid out in collection order: as they are, or for a
        keyed result (hash buckets, each sorted) sorted by key range (see _sorted_parts)."""
        if order_of(self.ir, src) is None:
            return self.parts_of(src)
        return self._sorted_parts(node, src, None, False, None, f"{key_of(node)}-ordered",
                                  "put in collection order")

    def _positioned(self, node: str, op, how: str, label: str, **extra) -> None:
        """``how`` over ``op``'s input with global positions: the partitions' lengths, their
        offsets (one small task), then each partition with its offset."""
        parts = self._in_collection_order(node, op.input.node)
        stem = key_of(node)
        lengths = self._emit(_Chain.reading(op.input.node, parts), steps.Count(node), "len", None,
                             name=f"{stem}-len", group=node)
        offsets = self._add(TaskSpec(f"{stem}-offsets", node, "first index of each partition", "finish",
                                     (steps.Offsets(node), *lengths)))
        chain = _Chain.reading(op.input.node, parts)
        chain.head = steps.Positioned(node, how, chain.slot(offsets), **extra)
        self._start(node, chain, label, None)

    def _lower_zip_with_index(self, node: str, op: ir.ZipWithIndex) -> None:
        self._positioned(node, op, "zip", "pair each item with its global index")

    def _lower_sample(self, node: str, op: ir.Sample) -> None:
        self._positioned(node, op, "sample", "keep the items whose (seed, index) hash is below the fraction",
                         fraction=Arg(op.fraction), seed=Arg(op.seed))


class PhysicalPlan:
    """A pipeline planned once for one set of parameters: the steps of every block and
    the tasks of every graph step, with partition counts known before running (those
    known only at run time are planned with one partition and listed in ``unknown``).
    ``shared_scans``, ``hoist_splits`` or ``group_merges`` off: the engine declines them
    (see :class:`Planner`); ``ungrouped`` lists, per graph step, the shuffles it then
    merges in a task per partition where they would have been grouped."""

    def __init__(self, graph: ir.IR, params: dict[str, Any], shared_scans: bool = True, hoist_splits: bool = True,
                 group_merges: bool = True):
        self.ir = graph
        self.params = params
        self.planner = Planner(graph, shared_scans, hoist_splits, group_merges)
        self.static = StaticContext(graph, params)
        self.tasks: dict[int, list[TaskSpec]] = {}
        self.ungrouped: dict[int, list[tuple[str, int]]] = {}
        self.unscanned: dict[int, list[str]] = {}  # per graph step: scans its grouped merges made moot
        self.parts: dict[str, list[str]] = {}  # collection node -> its partitions' keys
        self.refs: dict[str, list[Ref]] = {}  # collection node -> its partitions' refs
        for step in self.planner.graph_steps():
            lowering = StepLowering(graph, step, self.static, self.planner.actors)
            self.tasks[step.number] = lowering.lower()
            self.ungrouped[step.number] = lowering.ungrouped
            self.unscanned[step.number] = lowering.unscanned
            for node, refs in lowering.parts.items():
                self.parts[node] = [r.key for r in refs]
                self.refs[node] = refs

    @property
    def root(self) -> list[Step]:
        return self.planner.root

    @property
    def unknown(self) -> set[str]:
        return self.static.unknown

    def rounds(self, loop: ir.Loop) -> str:
        """How many rounds ``loop`` runs, as far as is known before running."""
        try:
            count = f"{self.static.value(loop.count)} rounds"
        except (LookupError, TypeError, ValueError, ArithmeticError):
            count = f"`{loop.count.node}` rounds"
        if loop.until is not None:
            until = loop.until.node if isinstance(loop.until, ir.NodeRef) else repr(loop.until.value)
            count = f"at most {count}, until `{until}`"
        return count
