"""The physical plan explained once, for every engine: as text, as JSON, as a graph.

``pipec compile --backend B`` and ``pipec graph --backend B`` show the same
:class:`~.planner.PhysicalPlan`; an engine adds only its :class:`Mapping`: one line on
where the plan runs, one note on what a task becomes there (a Dask key, a Ray task, a
Spark pass) and per-task notes (placement, resources). Nothing here needs an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from pipec.compiler import ir
from pipec.backends.base import Plan
from pipec.backends.physical.planner import DriverStep, HoistedSplit, LoopStep, PhysicalPlan, Ref, Scan, TaskSpec, key_of

if TYPE_CHECKING:  # networkx costs ~70 ms to import; only plan drawing needs it
    import networkx as nx


@dataclass
class Mapping:
    """What an engine adds to the shared explanation."""

    backend: str
    engine: str  # where the plan runs ("embedded local cluster, 2 worker processes x 1 thread")
    tasks: str  # what a task is on this engine, and how keys are named at run time
    engine_json: dict = field(default_factory=dict)
    task_notes: Callable[[TaskSpec], list[str]] = lambda spec: []
    actor_text: Callable[[ir.Actor], str] = lambda op: ""
    declined_scans: str | None = None  # what the engine does instead of a shared scan, and why
    declined_hoists: str | None = None  # what it does instead of splitting a join's side once, and why
    declined_groups: str | None = None  # why it merges a wide shuffle in a task per partition


def describe(graph: ir.IR, node: str) -> str:
    """A one-line summary of a node's operation, for plans and graphs."""
    op = graph.op(node)
    ins = [src for _, src in op.inputs()]
    fn = getattr(op, "fn", None)
    callee = fn.dotted if isinstance(fn, ir.FnRef) else (f"{op.pool.node}.{op.method}" if getattr(op, "pool", None) else "")
    label = getattr(op, "kind", None) or getattr(op, "operator", None) or op.op
    if isinstance(op, ir.ActorCall):
        return f"{op.actor.node}.{op.method}(#{op.seq})"
    if isinstance(op, ir.PoolCall):
        return f"{op.pool.node}.each.{op.method}(#{op.seq})"
    if isinstance(op, ir.Const):
        return repr(op.value)
    if isinstance(op, ir.Format):
        return f"path {op.template!r} with {', '.join(op.fields)}"
    parts = [label, callee] if callee else [label]
    text = " ".join(parts)
    return f"{text}({', '.join(ins)})" if ins else text


def driver_text(plan: PhysicalPlan, mapping: Mapping, node: str) -> str:
    """What a driver step does, with the engine's word on how it hosts actors."""
    op = plan.ir.op(node)
    text = f"{node} = {describe(plan.ir, node)}"
    if isinstance(op, ir.Actor):
        text += mapping.actor_text(op)
    elif isinstance(op, ir.ActorCall):
        text += "  -- numbered, applied exactly once"
    elif isinstance(op, ir.PoolCall):
        text += "  -- numbered, applied exactly once to every member"
    elif isinstance(op, ir.Sink):
        text += f" -> {op.format}" if op.format else " -> printed"
    return text


def _when_text(loop) -> str:
    """The condition of a ``when`` region: the node that computes it, or its literal."""
    return f"`{loop.when.node}`" if isinstance(loop.when, ir.NodeRef) else repr(loop.when.value)


def explain(plan: PhysicalPlan, mapping: Mapping) -> str:
    """The plan as text: driver steps, loops, and each graph's tasks with their inputs."""
    lines = [f"{mapping.backend} plan for pipeline `{plan.ir.info.name}`",
             f"  engine: {mapping.engine}",
             f"  tasks: {mapping.tasks}"]
    if plan.unknown:
        lines.append(f"  note: the partition counts of {', '.join(sorted(plan.unknown))} are known "
                     f"only when the pipeline runs; shown here with one partition")
    lines.append("")
    _explain_steps(plan, mapping, plan.root, lines, 0)
    return "\n".join(lines) + "\n"


def _explain_steps(plan: PhysicalPlan, mapping: Mapping, steps, lines: list[str], depth: int) -> None:
    pad = "  " * depth
    for step in steps:
        if isinstance(step, DriverStep):
            lines.append(f"{pad}driver  {driver_text(plan, mapping, step.node)}")
        elif isinstance(step, LoopStep) and step.block.loop.when is not None:
            loop = step.block.loop
            lines.append(f"{pad}when {_when_text(loop)}  # {loop.id}; in the rounds where it is true, runs:")
            _explain_steps(plan, mapping, step.steps, lines, depth + 1)
        elif isinstance(step, LoopStep):
            loop = step.block.loop
            lines.append(f"{pad}repeat {plan.rounds(loop)}  # {loop.id}; every round runs:")
            for hoisted in step.declined:
                lines.append(f"{pad}  note: `{hoisted.node}` is split for `{hoisted.join}` every round, though it "
                             f"does not change in {loop.id}: {mapping.declined_hoists}")
            _explain_steps(plan, mapping, step.steps, lines, depth + 1)
        else:
            specs = plan.tasks[step.number]
            ntasks = sum(1 for s in specs if s.data is None)
            ndata = len(specs) - ntasks
            extra = f", {ndata} data key{'s' if ndata != 1 else ''}" if ndata else ""
            before = (f"  # before {step.hoisted[0].loop}: the splits its rounds share" if step.hoisted and not step.nodes
                      else "")
            lines.append(f"{pad}graph {step.number}  ({ntasks} task{'s' if ntasks != 1 else ''}{extra}){before}")
            for scan in step.declined.values():
                lines.append(f"{pad}  note: no shared scan of {_scan_text(scan)}: {mapping.declined_scans}")
            for node in plan.unscanned.get(step.number, ()):
                lines.append(f"{pad}  note: no shared scan of `{node}`: grouped merge tasks make its partitions, "
                             f"and each reader reads them")
            for node, k in plan.ungrouped.get(step.number, ()):
                lines.append(f"{pad}  note: `{node}` merges its {k} partitions in {k} tasks, not in groups of "
                             f"partitions: {mapping.declined_groups}")
            width = max(len(s.key) for s in specs)
            fwidth = max(len(s.task_name) for s in specs)
            for spec in specs:
                deps = _short_deps([r.text for r in spec.deps])
                opts = []
                if spec.retries:
                    opts.append(f"retries {spec.retries}")
                if spec.resources:
                    opts.append("resources " + ", ".join(f"{k}={v:g}" for k, v in spec.resources.items()))
                opts += mapping.task_notes(spec)
                tail = f"  [{'; '.join(opts)}]" if opts else ""
                arrow = f"  <- {deps}" if deps else ""
                lines.append(f"{pad}  {spec.key:<{width}}  {spec.task_name:<{fwidth}}  {spec.label}{tail}{arrow}")


def _scan_text(scan: Scan) -> str:
    readers = [f"`{b}`" for b in scan.branches]
    kept = " (and kept for its other readers)" if scan.keep else ""
    return f"`{scan.head}` for {', '.join(readers)}{kept}"


def to_json(plan: PhysicalPlan, mapping: Mapping) -> dict:
    """The plan as JSON data (the same content as :func:`explain`)."""
    return {"backend": mapping.backend, "pipeline": plan.ir.info.name, "params": plan.params,
            "engine": mapping.engine_json, "tasks": mapping.tasks,
            "unknown_partitions": sorted(plan.unknown),
            "steps": _steps_json(plan, mapping, plan.root)}


def _steps_json(plan: PhysicalPlan, mapping: Mapping, steps) -> list[dict]:
    out = []
    for step in steps:
        if isinstance(step, DriverStep):
            out.append({"step": "driver", "node": step.node, "op": plan.ir.op(step.node).op,
                        "does": driver_text(plan, mapping, step.node)})
        elif isinstance(step, LoopStep) and step.block.loop.when is not None:
            loop = step.block.loop
            out.append({"step": "when", "loop": loop.id, "when": _when_text(loop),
                        "steps": _steps_json(plan, mapping, step.steps)})
        elif isinstance(step, LoopStep):
            loop = step.block.loop
            entry = {"step": "loop", "loop": loop.id, "rounds": plan.rounds(loop),
                     "steps": _steps_json(plan, mapping, step.steps)}
            if step.declined:
                entry["declined_hoists"] = [_hoist_json(h) for h in step.declined]
            out.append(entry)
        else:
            entry = {"step": "graph", "number": step.number, "nodes": step.nodes,
                     "tasks": [_spec_json(s, mapping) for s in plan.tasks[step.number]]}
            if step.hoisted:
                entry["hoisted_splits"] = [_hoist_json(h) for h in step.hoisted]
            if plan.ungrouped.get(step.number):
                entry["ungrouped_merges"] = [{"node": node, "partitions": k} for node, k in plan.ungrouped[step.number]]
            unscanned = plan.unscanned.get(step.number, ())
            if unscanned:
                entry["unscanned_grouped_merges"] = list(unscanned)
            for name, scans in (("shared_scans", {n: s for n, s in step.scans.items() if n not in unscanned}),
                                ("declined_scans", step.declined)):
                if scans:
                    entry[name] = [{"head": s.head, "branches": list(s.branches), "keep": s.keep}
                                   for s in scans.values()]
            out.append(entry)
    return out


def _hoist_json(hoisted: HoistedSplit) -> dict:
    return {"join": hoisted.join, "side": hoisted.side, "collection": hoisted.node, "loop": hoisted.loop}


def _spec_json(spec: TaskSpec, mapping: Mapping) -> dict:
    out = {"key": spec.key, "group": spec.group, "task": spec.task_name, "does": spec.label,
           "deps": [r.text for r in spec.deps]}
    if spec.retries:
        out["retries"] = spec.retries
    if spec.resources:
        out["resources"] = spec.resources
    if spec.member:
        out["near"] = {"pool": spec.member[0], "member": spec.member[1]}
    if spec.data:
        out["value_of"] = spec.data
    return out


def _short_deps(keys: list[str]) -> str:
    if len(keys) <= 6:
        return ", ".join(keys)
    return f"{', '.join(keys[:3])}, ... {keys[-1]} ({len(keys)} keys)"


# ---- drawing ------------------------------------------------------------------------------------


def graph(plan: PhysicalPlan, mapping: Mapping) -> nx.DiGraph:
    """Every task of every graph (a loop's once: its tasks are the same every round) and
    every driver step; nodes carry ``label`` and ``group``, edges ``kind``."""
    import networkx as nx
    g = nx.DiGraph()
    _graph_steps(plan, mapping, g, plan.root, None)
    return g


def _source_of(plan: PhysicalPlan, ref: Ref) -> str:
    """The drawn node a task's input comes from."""
    op = plan.ir.op(ref.node) if ref.node in plan.ir else None
    if isinstance(op, (ir.Var, ir.Rebind, ir.Actor)):
        return f"driver:{ref.node}"
    keys = plan.parts.get(ref.node)
    if ref.part is not None and keys and ref.part < len(keys):
        return keys[ref.part]
    return ref.key


def _graph_steps(plan: PhysicalPlan, mapping: Mapping, g: nx.DiGraph, steps, loop: str | None) -> None:
    graph_ir = plan.ir
    for step in steps:
        if isinstance(step, LoopStep):
            _graph_steps(plan, mapping, g, step.steps, step.block.loop.id)
        elif isinstance(step, DriverStep):
            node = step.node
            op = graph_ir.op(node)
            g.add_node(f"driver:{node}", label=driver_text(plan, mapping, node), group=node, kind="driver",
                       loop=loop, step="driver")
            for port, src in op.inputs():
                kind = graph_ir.edge_kind(src, node, port)
                src_op = graph_ir.op(src)
                if src_op.node_shape == ir.COLLECTION and not isinstance(src_op, (ir.Var, ir.Rebind)):
                    for key in plan.parts.get(src, []):
                        g.add_edge(key, f"driver:{node}", kind="data")
                elif any(key_of(src) == s.key for specs in plan.tasks.values() for s in specs if s.data is None):
                    g.add_edge(key_of(src), f"driver:{node}", kind="value")
                else:
                    g.add_edge(f"driver:{src}", f"driver:{node}", kind=kind)
            for src, _, kind in graph_ir.in_edges(node):
                if kind in ("order", "carry"):
                    g.add_edge(f"driver:{src}", f"driver:{node}", kind=kind)
            if isinstance(op, ir.Rebind):
                g.add_edge(f"driver:{node}", f"driver:{op.var}", kind="carry")
        else:
            for spec in plan.tasks[step.number]:
                g.add_node(spec.key, label=f"{spec.key}\n{spec.label}", group=spec.group,
                           kind="data" if spec.data else "task", loop=loop, step=step.number,
                           task=spec.task_name)
                if spec.data:
                    g.add_edge(f"driver:{spec.data}", spec.key, kind="value")
                for ref in spec.deps:
                    src = _source_of(plan, ref)
                    ref_op = graph_ir.op(ref.node) if ref.node in graph_ir else None
                    kind = "actor" if isinstance(ref_op, ir.Actor) else (
                        "data" if ref_op is not None and ref_op.node_shape == ir.COLLECTION else "value")
                    if src not in g:
                        g.add_node(src, label=src, group=ref.node, kind="data", loop=None, step=None)
                    g.add_edge(src, spec.key, kind=kind)


class MappedPlan(Plan):
    """A Plan made of the shared physical plan (``physical``) and an engine's
    :class:`Mapping` (``mapping``): explained, serialised and drawn here, the same way for
    every engine; the engine subclass says only how it maps tasks and how a run starts."""

    physical: PhysicalPlan

    @property
    def mapping(self) -> Mapping:
        raise NotImplementedError

    def explain(self) -> str:
        return explain(self.physical, self.mapping)

    def to_json(self) -> dict:
        return to_json(self.physical, self.mapping)

    def graph(self) -> nx.DiGraph:
        return graph(self.physical, self.mapping)
