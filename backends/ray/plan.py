"""The Ray plan: the shared physical plan (:mod:`pipec.backends.physical.planner`) with
Ray's mapping. ``explain``, ``to_json`` and ``graph`` show it
(:mod:`pipec.backends.physical.explain`); ``run`` starts the engine and hands it to the
driver, which submits one Ray task per task of the plan."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipec.compiler import ir
from pipec.compiler.capabilities import FEATURES
from pipec.dsl.diagnostics import Diagnostic
from pipec.backends.base import Backend, Machine
from pipec.backends.physical import explain as explaining
from pipec.backends.physical.planner import PhysicalPlan, actor_answer_for_stages
from pipec.backends.ray.engine import start_runtime, stop_runtime

TASK_NOTE = ("each task is one Ray task named by its key (a split has one return per bucket, a shared "
             "scan one per output, `key[name]` being name's; a merge reads bucket j of every split; a task "
             "giving partitions one more, its status, which the driver waits on while the partitions stay "
             "in the object store); what it reads are ObjectRefs; pool tasks are calls of the member actor")


def parts_returned_by_source(specs) -> dict[str, int]:
    """The callable sources of one graph (``specs``) whose one task returns their ``k``
    parts as ``k`` Ray returns: source key -> ``k``. Their ``take_part`` tasks then run
    nothing: each is one return of the source's task. As tasks of their own, each read the
    whole list (17 MB for paramserver): on cold workers the source took 0.85 s of a 1.7 s
    run, and takes 0.2 s this way."""
    sources = {spec.key for spec in specs if spec.body == "source_call"}
    if not sources:  # most graphs (every round's): no pass over their dependencies
        return {}
    readers = defaultdict(list)
    for spec in specs:
        for dep in spec.deps:
            if dep.key in sources:
                readers[dep.key].append(spec)
    out = {}
    for key in sources:
        takers = readers[key]
        if takers and all(t.body == "take_part" for t in takers) and \
                sorted(t.args[1] for t in takers) == list(range(takers[0].args[2])):
            out[key] = takers[0].args[2]
    return out


class RayPlan(explaining.MappedPlan):
    backend = "ray"
    driver = "pipec.backends.ray.driver:RayDriver"

    def __init__(self, graph: ir.IR, params: dict[str, Any], address: str | None = None):
        super().__init__(graph, params)
        self.address = address
        self.physical = PhysicalPlan(graph, params)

    @property
    def mapping(self) -> explaining.Mapping:
        engine = f"the Ray cluster at {self.address}" if self.address else "embedded local Ray (or RAY_ADDRESS)"
        return explaining.Mapping("ray", engine, TASK_NOTE, {"address": self.address},
                                  task_notes=self._task_notes, actor_text=_actor_text)

    def _task_notes(self, spec) -> list[str]:
        if spec.member:
            return [f"a call of {spec.member[0]} member {spec.member[1]}"]
        if spec.body == "source_call" and spec.key in self._parted:
            return [f"one Ray task with {self._parted[spec.key]} returns, one a part"]
        if spec.body == "take_part" and spec.args[3].key in self._parted:
            return [f"return {spec.args[1]} of {spec.args[3].key}: no task of its own"]
        if spec.data and actor_answer_for_stages(self.ir, spec.data):
            return ["the call's ObjectRef, handed to the stages as it is (confirmed after the graph)"]
        return []

    @functools.cached_property
    def _parted(self) -> dict[str, int]:
        return {key: k for graph in self.physical.tasks.values() for key, k in parts_returned_by_source(graph).items()}

    @contextlib.contextmanager
    def engine(self, driver):
        """This process's Ray, or one started (or joined) for the run and left after it."""
        started = start_runtime(self.address, runtime_env=self._runtime_env())
        try:
            yield
        finally:
            if started:
                stop_runtime()

    def _runtime_env(self) -> dict | None:
        """When joining a cluster, ship the user's modules to every node (py_modules): the
        top-level packages and modules the pipeline names, found in its module folders."""
        if not (self.address or os.environ.get("RAY_ADDRESS")):
            return None
        tops = set()
        for _, op in self.ir.items():
            for ref in (getattr(op, "fn", None), getattr(op, "cls", None), getattr(op, "by", None)):
                if isinstance(ref, ir.FnRef):
                    tops.add(ref.module.split(".")[0])
        shipped = []
        for root in self.ir.info.module_paths():
            for top in sorted(tops):
                package, module = Path(root) / top, Path(root) / f"{top}.py"
                if (package / "__init__.py").exists():
                    shipped.append(str(package))
                elif module.exists():
                    shipped.append(str(module))
        return {"py_modules": shipped} if shipped else None


class RayBackend(Backend):
    name = "ray"
    description = ("Ray tasks and actors: fused stages, partitions in the object store, actors restored "
                   "from snapshots with calls replayed exactly once")
    capabilities = frozenset(FEATURES)
    gap_hints: dict[str, str] = {}
    engine_module, extra = "ray", "ray"

    def check(self, graph: ir.IR) -> list[Diagnostic]:
        """Capability gaps, and stages asking for more than a node of the runtime a run
        would use has, where that is known before it starts (they would wait forever):
        the one-node Ray this process is connected to, or the embedded one on this
        machine. A cluster joined when the run starts is asked then (RayDriver)."""
        out = super().check(graph)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            if len(nodes) == 1:
                r = nodes[0]
                has = Machine(int(r.get("CPU", 0)), int(r.get("GPU", 0)), int(r.get("memory", 0)))
                out += self.over_resources(graph, has, "node of the Ray runtime this process runs")
        elif not (self.address or os.environ.get("RAY_ADDRESS")):
            out += self.over_resources(graph, Machine.this_one(), "node of the embedded Ray runtime (this machine)")
        return out

    def lower(self, graph: ir.IR, params: dict[str, Any]) -> RayPlan:
        return RayPlan(graph, params, self.address)


def _actor_text(op: ir.Actor) -> str:
    if op.pool_size is not None:
        return f"  -- a pool of Ray actors (max_restarts {op.restarts})"
    # pipec restarts it, from a standby process started ahead (Ray's max_restarts is 0)
    extra = [f"restarts {op.restarts}" + (" from a standby process" if op.restarts else ""),
             "calls replayed exactly once"]
    if op.checkpoint_every:
        extra.append(f"checkpoint every {op.checkpoint_every} calls")
    return f"  -- a Ray actor ({', '.join(extra)})"
