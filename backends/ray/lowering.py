"""Static lowering decisions shared by the driver and the explained plan: which stages
fuse into one task, shared scans, and the Ray options of each task and actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from pipec.compiler import ir


# How often Ray runs a pure task again when its worker process or node is lost.
LOST_WORKER_RETRIES = 3

_SHUFFLES = (ir.ReduceByKey, ir.GroupByKey, ir.Join, ir.Distinct)


def _plain(options: ir.StageOptions) -> bool:
    """A stage whose tasks may be fused with others: pure and without its own timeout."""
    return not options.effectful and options.timeout is None


def read_in_tasks(op: ir.Source) -> bool:
    """Whether a source's partitions are made inside the tasks that read them (a range
    block, a text file's own lines, a sharded call) rather than on the driver."""
    return op.kind in ("range", "read_text") or op.sharded


def actor_handles(graph: ir.IR, node: str, op: ir.Elementwise) -> list[str]:
    """The binding names of ``op`` that pass an actor handle."""
    return [name for name, operand in op.bindings.items()
            if isinstance(operand, ir.NodeRef) and graph.op(operand.node).node_shape == ir.ACTOR]


def _forwardable(graph: ir.IR, node: str, op: ir.Op) -> bool:
    """Whether ``op``'s partitions may be computed inside its consumer's tasks (or, for a
    shared scan, its consumers' per-partition halves inside its own)."""
    if isinstance(op, ir.Elementwise):
        return op.fn is not None and not actor_handles(graph, node, op) and _plain(op.options)
    if isinstance(op, ir.Source):
        return read_in_tasks(op) and _plain(op.options)
    if isinstance(op, _SHUFFLES):
        return _plain(op.options)
    return False


def _absorbs(graph: ir.IR, node: str, op: ir.Op, port: str) -> bool:
    """Whether ``op`` can run its input's computation (arriving at ``port``) in its own tasks."""
    if isinstance(op, ir.Elementwise):
        return port == "input" and op.fn is not None and not actor_handles(graph, node, op) and _plain(op.options)
    if isinstance(op, (ir.Reduce, ir.ReduceByKey, ir.GroupByKey, ir.Distinct)):
        return port == "input" and _plain(op.options)
    if isinstance(op, ir.Join):
        return port in ("left", "right") and _plain(op.options)
    return isinstance(op, ir.Count)


def _resources(op: ir.Op) -> ir.Resources:
    options = getattr(op, "options", None)
    return options.resources if isinstance(options, ir.StageOptions) else ir.Resources()


def fusion(graph: ir.IR) -> dict[str, str]:
    """Node -> the consumer whose tasks compute it. A producer fuses into its only
    consumer in the same loop body when both are pure, without a timeout, and ask for the
    same resources; an actor-handle stage never fuses (it must finish in program order)."""
    fused: dict[str, str] = {}
    for node, op in graph.items():
        if op.node_shape != ir.COLLECTION or not _forwardable(graph, node, op):
            continue
        edges = [(dst, port) for _, dst, port, kind in graph.graph.out_edges(node, keys=True, data="kind")
                 if kind != "carry"]
        if len(edges) != 1:
            continue
        dst, port = edges[0]
        dop = graph.op(dst)
        if dop.loop != op.loop or not _absorbs(graph, dst, dop, port) or _resources(op) != _resources(dop):
            continue
        fused[node] = dst
    return fused


@dataclass(frozen=True)
class Chain:
    """What feeds a node at one input port: the head node, then fused element-wise stages.
    ``head_fused`` says whether the head itself is computed in the same tasks (a range or
    sharded source, or a shuffle's merge side) or is a materialised collection."""

    head: str
    steps: tuple[str, ...]
    head_fused: bool


_BRANCH_ENDS = (ir.Reduce, ir.Count, ir.ReduceByKey, ir.GroupByKey, ir.Distinct)


@dataclass(frozen=True)
class Branch:
    """One consumer of a shared scan: element-wise ``steps`` on the scanned partition,
    then the map side of ``owner`` (a fold, a count or a shuffle split)."""

    owner: str
    steps: tuple[str, ...]


class Lowering:
    """The static decisions for one pipeline: fusion, chains, task options and names."""

    def __init__(self, graph: ir.IR):
        self.ir = graph
        self.fused = fusion(graph)
        self.scans = self._shared_scans()  # collection -> (keep its partitions?, branches)
        self.scanned = {b.owner: (head, b) for head, (_, branches) in self.scans.items() for b in branches}

    def _shared_scans(self) -> dict[str, tuple["Branch", ...]]:
        """Collections read by several consumers whose reductions or shuffle splits can
        run in the collection's own tasks, in one pass over each partition (a branch per
        consumer). A branch qualifies when it is in the same loop body, pure, without a
        timeout, asks for the same resources, and binds only values computed before the
        collection (so computing it early changes nothing)."""
        order = {n: i for i, n in enumerate(self.ir)}
        scans: dict[str, list[Branch]] = {}
        for node, op in self.ir.items():
            if not isinstance(op, _BRANCH_ENDS) or not _plain(op.options if hasattr(op, "options")
                                                              else ir.StageOptions()):
                continue
            chain = self.chain(node, "input")
            head = chain.head
            hop = self.ir.op(head)
            if chain.head_fused or head in self.fused or not _forwardable(self.ir, head, hop):
                continue
            members = list(chain.steps) + [node]
            if any(self.ir.op(m).loop != hop.loop or _resources(self.ir.op(m)) != _resources(hop)
                   for m in members):
                continue
            if any(not self._bound_before(s, order[head]) for s in chain.steps):
                continue
            scans.setdefault(head, []).append(Branch(node, chain.steps))
        out = {}
        for head, branches in scans.items():
            readers = [dst for _, dst, kind in self.ir.graph.out_edges(head, data="kind") if kind != "carry"]
            starts = [b.steps[0] if b.steps else b.owner for b in branches]
            keep = any(readers.count(r) != starts.count(r) for r in set(readers)) or len(readers) != len(starts)
            out[head] = (keep, tuple(branches))
        return out

    def _bound_before(self, step: str, index: int) -> bool:
        order = {n: i for i, n in enumerate(self.ir)}
        op = self.ir.op(step)
        return all(isinstance(v, ir.Lit) or order[v.node] < index for v in op.bindings.values())

    def scan_of(self, node: str) -> tuple[str, "Branch"] | None:
        """(the scanned collection, the branch) when ``node``'s input side runs in
        another collection's tasks."""
        return self.scanned.get(node)

    def chain(self, node: str, port: str) -> Chain:
        op = self.ir.op(node)
        producer = getattr(op, port).node
        consumer, steps = node, []
        while self.fused.get(producer) == consumer:
            pop = self.ir.op(producer)
            if isinstance(pop, ir.Elementwise):
                steps.insert(0, producer)
                consumer, producer = producer, pop.input.node
                continue
            return Chain(producer, tuple(steps), True)
        return Chain(producer, tuple(steps), False)

    def invariant(self, node: str, chain: Chain) -> bool:
        """Whether a shuffle inside a loop reads an input that no round changes (defined
        outside the loop, not a loop variable): its split is then computed once and the
        buckets reused every round."""
        op = self.ir.op(node)
        if op.loop is None or chain.steps or chain.head_fused:
            return False
        head = self.ir.op(chain.head)
        return not isinstance(head, ir.Var) and head.loop != op.loop

    def early(self, node: str) -> bool:
        """Whether actor ``node`` can be started when the run begins, its process starting
        while the driver loads sources: a top-level actor whose arguments are literals or
        parameters (nothing computed)."""
        op = self.ir.op(node)
        if not isinstance(op, ir.Actor) or op.loop is not None:
            return False
        operands = list(op.args) + list(op.kwargs.values()) + ([op.pool_size] if op.pool_size is not None else [])
        return all(isinstance(o, ir.Lit) or isinstance(self.ir.op(o.node), (ir.Param, ir.Const)) for o in operands)

    def members(self, chain: Chain, owner: str | None) -> list[str]:
        """The IR nodes one task of this segment computes, in order."""
        return ([chain.head] if chain.head_fused else []) + list(chain.steps) + ([owner] if owner else [])

    def group(self, chain: Chain, owner: str | None, role: str = "") -> str:
        """The segment's name: its nodes joined by `+`, and its role after a colon. Also
        the Ray task name, so `ray::NAME` shows in process lists while a task runs."""
        names = self.members(chain, owner)
        return "+".join(names) + (f":{role}" if role else "")

    def scan_name(self, chain: Chain, owner: str | None, role: str, also: list[str]) -> str:
        """A segment's name, with the nodes of a shared scan's branches after a `&`."""
        name = self.group(chain, owner, role)
        return name + ("&" + "+".join(also) if also else "")

    def options(self, nodes: list[str]) -> dict[str, Any]:
        """Ray task options for a segment computing ``nodes``: Ray re-runs a task lost with
        its worker as often as the most retries any of them asks for (fused stages are
        pure, so re-running them is harmless), never when one is effectful; user code that
        raises is retried inside the task by the interpreter, so Ray's exception retries
        stay off. Resources are the (shared) resources of the nodes."""
        retries, effectful = 0, False
        resources = ir.Resources()
        for node in nodes:
            options = getattr(self.ir.op(node), "options", None)
            if not isinstance(options, ir.StageOptions):
                continue
            retries = max(retries, options.retries)
            effectful = effectful or options.effectful
            resources = resources.merged(options.resources)
        if effectful:
            retries = 0
        else:
            # Recovering a pure task from a lost worker is the engine's job, whatever
            # `retries` (which is about exceptions user code raises) says.
            retries = max(retries, LOST_WORKER_RETRIES)
        out: dict[str, Any] = {"max_retries": retries, "retry_exceptions": False,
                               "num_cpus": resources.cpus if resources.cpus is not None else 1}
        if resources.gpus:
            out["num_gpus"] = resources.gpus
        if resources.memory:
            out["memory"] = resources.memory
        return out

    def timeout(self, nodes: list[str]) -> float | None:
        """The shortest timeout of ``nodes``: the interpreter cuts each stage's own calls at it."""
        values = [o.timeout for o in (getattr(self.ir.op(n), "options", None) for n in nodes)
                  if isinstance(o, ir.StageOptions) and o.timeout is not None]
        return min(values) if values else None

    def actor_options(self, op: ir.Actor, name: str) -> dict[str, Any]:
        """A Ray actor restarts its process (``max_restarts``); its method retries stay off,
        because pipec replays graph-level calls itself, in order, exactly once."""
        return {"max_restarts": op.restarts, "max_task_retries": 0, "name": name}
