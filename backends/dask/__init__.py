"""The Dask backend: each round of a pipeline is a real Dask task graph.

``lower`` splits the pipeline into driver steps and graph steps (see
:mod:`pipec.backends.dask.lowering`) and lowers every graph step to task specs with readable
keys (``grads-3``, ``total``) and explicit dependencies; ``explain``, ``to_json`` and
``graph`` show exactly those, and ``run`` submits them. Actors are Dask actors hosted in
an :class:`~pipec.backends.runtime.actors.ActorHost`, so they survive the death of their
worker (checkpoint and replay). Importing this package does not import Dask: only
``run`` starts the engine.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from pipec.compiler import ir
from pipec.compiler.capabilities import FEATURES
from pipec.dsl.diagnostics import ERROR, Diagnostic, UnsupportedOnBackend
from pipec.dsl.source import SourceFile, Span
from pipec.backends.base import Backend, Plan, Progress, RunResult
from pipec.backends.dask.engine import LocalShape, scheduler_address
from pipec.backends.dask.lowering import (DriverStep, LoopStep, Planner, Ref, StaticContext, StepLowering, TaskSpec,
                                    key_of)
from pipec.backends.local import describe

KEY_NOTE = ("`stage-i` is partition i of a stage, a bare name is a value; at run time every key "
            "gets the suffix @RUN.N (N numbers the graphs submitted), so rounds never collide")


class DaskBackend(Backend):
    name = "dask"
    description = "Dask task graphs on an embedded local cluster, or on a scheduler (--address)"
    # Every feature: actors are Dask actors made fault tolerant by checkpoint and replay,
    # timeouts are enforced in the task body. GPUs need a cluster whose workers have them.
    capabilities = frozenset(FEATURES)
    gap_hints: dict[str, str] = {}

    def __init__(self, address: str | None = None, shape: LocalShape | None = None):
        super().__init__(address)
        self.shape = shape

    def lower(self, graph: ir.IR, params: dict[str, Any]) -> "DaskPlan":
        address = scheduler_address(self.address)
        shape = None if address else (self.shape or LocalShape.of_machine())
        if shape is not None:
            _check_resources(graph, shape)
        return DaskPlan(graph, params, address, shape)


def _check_resources(graph: ir.IR, shape: LocalShape) -> None:
    """A stage asking for more than a local worker has would wait forever: refuse it now."""
    problems = []
    for node, op in graph.items():
        options = getattr(op, "options", None)
        if options is None:
            continue
        r = options.resources
        wanted = []
        if r.gpus:
            wanted.append(("a GPU", "no worker of the local cluster has a GPU"))
        if r.cpus is not None and r.cpus > shape.threads:
            wanted.append((f"{r.cpus:g} cpus", f"each worker of the local cluster has {shape.threads}"))
        if r.memory is not None and r.memory > shape.memory:
            wanted.append((f"{r.memory / 2**30:.1f} GiB of memory",
                           f"each worker of the local cluster has {shape.memory / 2**30:.1f} GiB"))
        for what, why in wanted:
            span = op.span
            where = Span(span.line, span.column, span.end_line, span.end_column, 0, 0) if span else None
            problems.append(Diagnostic(ERROR, f"stage `{op.name or node}` needs {what}: {why}", where,
                                       "ask for less, or run on a cluster that has it (--address)",
                                       graph.info.path, code="unsupported"))
    if problems:
        try:
            source = SourceFile.read(graph.info.path)
        except Exception:
            source = None
        raise UnsupportedOnBackend(problems, source)


class DaskPlan(Plan):
    backend = "dask"

    def __init__(self, graph: ir.IR, params: dict[str, Any], address: str | None, shape: LocalShape | None):
        super().__init__(graph, params)
        self.address = address
        self.shape = shape
        self.planner = Planner(graph)
        self.static = StaticContext(graph, params)
        self.tasks: dict[int, list[TaskSpec]] = {}
        self.parts: dict[str, list[str]] = {}  # collection node -> its partitions' keys
        for step in self.planner.graph_steps():
            lowering = StepLowering(graph, step, self.static, self.planner.actors)
            self.tasks[step.number] = lowering.lower()
            for node, refs in lowering.parts.items():
                self.parts[node] = [r.key for r in refs]

    # ---- what runs

    def engine(self) -> str:
        return f"Dask scheduler at {self.address}" if self.address else self.shape.describe()

    def rounds(self, loop: ir.Loop) -> str:
        try:
            count = f"{self.static.value(loop.count)} rounds"
        except (LookupError, TypeError, ValueError, ArithmeticError):
            count = f"`{loop.count.node}` rounds"
        if loop.until is not None:
            until = loop.until.node if isinstance(loop.until, ir.NodeRef) else repr(loop.until.value)
            count = f"at most {count}, until `{until}`"
        return count

    def _driver_text(self, node: str) -> str:
        op = self.ir.op(node)
        text = f"{node} = {describe(self.ir, node)}"
        if isinstance(op, ir.Actor):
            if op.pool_size is not None:
                text += "  -- a pool of Dask actors, spread over the workers"
            else:
                extra = [f"restarts {op.restarts}"]
                if op.checkpoint_every:
                    extra.append(f"checkpoint every {op.checkpoint_every} calls")
                text += f"  -- a Dask actor ({', '.join(extra)})"
        elif isinstance(op, ir.ActorCall):
            text += "  -- numbered, applied exactly once"
        elif isinstance(op, ir.Sink):
            text += f" -> {op.format}" if op.format else " -> printed"
        return text

    def explain(self) -> str:
        lines = [f"dask plan for pipeline `{self.ir.info.name}`",
                 f"  engine: {self.engine()}",
                 f"  keys: {KEY_NOTE}"]
        if self.static.unknown:
            lines.append(f"  note: the partition counts of {', '.join(sorted(self.static.unknown))} are known "
                         f"only when the pipeline runs; shown here with one partition")
        lines.append("")
        self._explain_steps(self.planner.root, lines, 0)
        return "\n".join(lines) + "\n"

    def _explain_steps(self, steps, lines: list[str], depth: int) -> None:
        pad = "  " * depth
        for step in steps:
            if isinstance(step, DriverStep):
                lines.append(f"{pad}driver  {self._driver_text(step.node)}")
            elif isinstance(step, LoopStep):
                loop = step.block.loop
                lines.append(f"{pad}repeat {self.rounds(loop)}  # {loop.id}; every round runs:")
                self._explain_steps(step.steps, lines, depth + 1)
            else:
                specs = self.tasks[step.number]
                ntasks = sum(1 for s in specs if s.data is None)
                ndata = len(specs) - ntasks
                extra = f", {ndata} data key{'s' if ndata != 1 else ''}" if ndata else ""
                lines.append(f"{pad}graph {step.number}  ({ntasks} task{'s' if ntasks != 1 else ''}{extra})")
                width = max(len(s.key) for s in specs)
                fwidth = max(len(s.task_name) for s in specs)
                for spec in specs:
                    deps = _short_deps([r.key for r in spec.deps])
                    opts = []
                    if spec.retries:
                        opts.append(f"retries {spec.retries}")
                    if spec.resources:
                        opts.append("resources " + ", ".join(f"{k}={v:g}" for k, v in spec.resources.items()))
                    if spec.member:
                        opts.append(f"next to {spec.member[0]} member {spec.member[1]}")
                    tail = f"  [{'; '.join(opts)}]" if opts else ""
                    arrow = f"  <- {deps}" if deps else ""
                    lines.append(f"{pad}  {spec.key:<{width}}  {spec.task_name:<{fwidth}}  {spec.label}{tail}{arrow}")

    def to_json(self) -> dict:
        return {"backend": "dask", "pipeline": self.ir.info.name, "params": self.params,
                "engine": {"address": self.address, "embedded": self.address is None,
                           **({"workers": self.shape.workers, "threads_per_worker": self.shape.threads,
                               "memory_per_worker": self.shape.memory} if self.shape else {})},
                "keys": KEY_NOTE,
                "unknown_partitions": sorted(self.static.unknown),
                "steps": self._steps_json(self.planner.root)}

    def _steps_json(self, steps) -> list[dict]:
        out = []
        for step in steps:
            if isinstance(step, DriverStep):
                out.append({"step": "driver", "node": step.node, "op": self.ir.op(step.node).op,
                            "does": self._driver_text(step.node)})
            elif isinstance(step, LoopStep):
                loop = step.block.loop
                out.append({"step": "loop", "loop": loop.id, "rounds": self.rounds(loop),
                            "steps": self._steps_json(step.steps)})
            else:
                out.append({"step": "graph", "number": step.number, "nodes": step.nodes,
                            "tasks": [_spec_json(s) for s in self.tasks[step.number]]})
        return out

    def graph(self) -> nx.DiGraph:
        """Every key of every graph (a loop's once: keys are the same every round) and
        every driver step; nodes carry ``label`` and ``group``, edges ``kind``."""
        g = nx.DiGraph()
        self._graph_steps(g, self.planner.root, None)
        return g

    def _key_of(self, ref: Ref) -> str:
        """The drawn node a task's input comes from."""
        op = self.ir.op(ref.node) if ref.node in self.ir.graph else None
        if isinstance(op, (ir.Var, ir.Rebind, ir.Actor)):
            return f"driver:{ref.node}"
        keys = self.parts.get(ref.node)
        if ref.part is not None and keys and ref.part < len(keys):
            return keys[ref.part]
        return ref.key

    def _graph_steps(self, g: nx.DiGraph, steps, loop: str | None) -> None:
        for step in steps:
            if isinstance(step, LoopStep):
                self._graph_steps(g, step.steps, step.block.loop.id)
            elif isinstance(step, DriverStep):
                node = step.node
                op = self.ir.op(node)
                g.add_node(f"driver:{node}", label=self._driver_text(node), group=node, kind="driver",
                           loop=loop, step="driver")
                for port, src in op.inputs():
                    kind = self.ir.graph.edges[src, node, port]["kind"]
                    src_op = self.ir.op(src)
                    if src_op.node_shape == ir.COLLECTION and not isinstance(src_op, (ir.Var, ir.Rebind)):
                        for key in self.parts.get(src, []):
                            g.add_edge(key, f"driver:{node}", kind="data")
                    elif any(key_of(src) == s.key for specs in self.tasks.values() for s in specs if s.data is None):
                        g.add_edge(key_of(src), f"driver:{node}", kind="value")
                    else:
                        g.add_edge(f"driver:{src}", f"driver:{node}", kind=kind)
                for src, _, kind in self.ir.graph.in_edges(node, data="kind"):
                    if kind in ("order", "carry"):
                        g.add_edge(f"driver:{src}", f"driver:{node}", kind=kind)
                if isinstance(op, ir.Rebind):
                    g.add_edge(f"driver:{node}", f"driver:{op.var}", kind="carry")
            else:
                for spec in self.tasks[step.number]:
                    g.add_node(spec.key, label=f"{spec.key}\n{spec.label}", group=spec.group,
                               kind="data" if spec.data else "task", loop=loop, step=step.number,
                               task=spec.task_name)
                    if spec.data:
                        g.add_edge(f"driver:{spec.data}", spec.key, kind="value")
                    for ref in spec.deps:
                        src = self._key_of(ref)
                        ref_op = self.ir.op(ref.node) if ref.node in self.ir.graph else None
                        kind = "actor" if isinstance(ref_op, ir.Actor) else (
                            "data" if ref_op is not None and ref_op.node_shape == ir.COLLECTION else "value")
                        if src not in g:
                            g.add_node(src, label=src, group=ref.node, kind="data", loop=None, step=None)
                        g.add_edge(src, spec.key, kind=kind)

    # ---- running

    def run(self, progress: Progress | None = None, run_dir: str | None = None, client=None) -> RunResult:
        """Run on the embedded cluster (started and stopped here), on ``address``, or on
        ``client`` (a :class:`distributed.Client` the caller keeps)."""
        from pipec.backends.dask.driver import DaskDriver
        from pipec.backends.dask.engine import Session
        driver = DaskDriver(self, None, progress, run_dir)
        with Session(self.address, self.shape or LocalShape.of_machine(), driver.run_dir / "engine.log",
                     client) as live:
            driver.client = live
            with live.as_current():  # actor handles unpickled here bind to this client
                result = driver.run()
        self.last_driver = driver
        return result


def _short_deps(keys: list[str]) -> str:
    if len(keys) <= 6:
        return ", ".join(keys)
    return f"{', '.join(keys[:3])}, ... {keys[-1]} ({len(keys)} keys)"


def _spec_json(spec: TaskSpec) -> dict:
    out = {"key": spec.key, "group": spec.group, "task": spec.task_name, "does": spec.label,
           "deps": [r.key for r in spec.deps]}
    if spec.retries:
        out["retries"] = spec.retries
    if spec.resources:
        out["resources"] = spec.resources
    if spec.member:
        out["near"] = {"pool": spec.member[0], "member": spec.member[1]}
    if spec.data:
        out["value_of"] = spec.data
    return out
