"""The Dask backend and its plan: ``explain``, ``to_json``, ``graph`` and ``run`` (the
package docstring, :mod:`pipec.backends.dask`, says how a pipeline becomes Dask tasks)."""

from __future__ import annotations

import contextlib
from typing import Any

from pipec.compiler import ir
from pipec.compiler.capabilities import FEATURES
from pipec.dsl.diagnostics import Diagnostic
from pipec.backends.base import Backend, Machine
from pipec.backends.dask import placement
from pipec.backends.dask.engine import LocalShape, scheduler_address
from pipec.backends.physical import explain as explaining
from pipec.backends.physical.planner import PhysicalPlan, TaskSpec, actor_answer_for_stages

KEY_NOTE = ("each task is a Dask key: `stage-i` is partition i of a stage, a bare name is a value; "
            "a shared scan's key holds its outputs, and `key[name]` (name's output) is picked inside the "
            "task reading it, or is a key of its own when read after the graph; at run time every key gets "
            "the suffix @RUN.N (N numbers the graphs submitted), so rounds never collide")


class DaskBackend(Backend):
    name = "dask"
    description = "Dask task graphs on an embedded local cluster, or on a scheduler (--address)"
    # Actors are Dask actors made fault tolerant by checkpoint and replay, timeouts are
    # the interpreter's. GPUs need a cluster whose workers have them.
    capabilities = frozenset(FEATURES)
    engine_module, extra = "distributed", "dask"

    def __init__(self, address: str | None = None, shape: LocalShape | None = None, client=None):
        """``address`` of a scheduler, the ``shape`` of the embedded cluster, or a
        :class:`distributed.Client` the caller keeps (``client``)."""
        super().__init__(address)
        self.client = client
        self.shape = shape
        self.scheduler = scheduler_address(address)

    def local_shape(self) -> LocalShape | None:
        """The embedded cluster's shape; None when a scheduler or a client is given."""
        if self.scheduler or self.client is not None:
            return None
        return self.shape or LocalShape.of_machine()

    def check(self, graph: ir.IR) -> list[Diagnostic]:
        """Capability gaps, and stages asking for more than a worker of the embedded
        cluster has (they would wait forever; a cluster's workers are asked when it runs)."""
        out = super().check(graph)
        shape = self.local_shape()
        if shape is not None:
            out += self.over_resources(graph, Machine(shape.threads, 0, shape.memory), "worker of the local cluster")
        return out

    def lower(self, graph: ir.IR, params: dict[str, Any]) -> "DaskPlan":
        return DaskPlan(graph, params, self.scheduler, self.local_shape(), self.client)


class DaskPlan(explaining.MappedPlan):
    """The physical plan on Dask: every graph step is one Dask task graph whose keys are
    the plan's task keys; actors are Dask actors."""

    backend = "dask"
    driver = "pipec.backends.dask.driver:DaskDriver"

    def __init__(self, graph: ir.IR, params: dict[str, Any], address: str | None, shape: LocalShape | None,
                 client=None):
        super().__init__(graph, params)
        self.address = address
        self.shape = shape
        self.client = client
        self.physical = PhysicalPlan(graph, params)
        self._placement: dict[str, str] | None = None  # plan key -> its placement note (see placement)

    @property
    def mapping(self) -> explaining.Mapping:
        engine = (f"Dask scheduler at {self.address}" if self.address else
                  self.shape.describe() if self.shape else "the Dask cluster of the given client")
        return explaining.Mapping(
            "dask", engine, KEY_NOTE,
            {"address": self.address, "embedded": self.address is None,
             **({"workers": self.shape.workers, "threads_per_worker": self.shape.threads,
                 "memory_per_worker": self.shape.memory} if self.shape else {})},
            task_notes=self._task_notes, actor_text=_actor_text)

    def _task_notes(self, spec: TaskSpec) -> list[str]:
        if spec.member:
            return [f"next to {spec.member[0]} member {spec.member[1]}"]
        if spec.data and actor_answer_for_stages(self.ir, spec.data):
            return ["the call is a task of this graph, on the actor's worker: its answer never passes "
                    "through the driver"]
        if self._placement is None:
            self._placement = placement.notes(self.physical)
        note = self._placement.get(spec.key)
        return [note] if note else []

    @contextlib.contextmanager
    def engine(self, driver):
        """The embedded cluster (started and stopped here), the scheduler at ``address``,
        or the backend's ``client`` (a :class:`distributed.Client` the caller keeps)."""
        from pipec.backends.dask.engine import Session
        with Session(self.address, self.shape or LocalShape.of_machine(), driver.log_dir / "engine.log",
                     self.client) as live:
            driver.client = live
            with live.as_current():  # actor handles unpickled here bind to this client
                yield


def _actor_text(op: ir.Actor) -> str:
    if op.pool_size is not None:
        return "  -- a pool of Dask actors, spread over the workers"
    extra = [f"restarts {op.restarts}"]
    if op.checkpoint_every:
        extra.append(f"checkpoint every {op.checkpoint_every} calls")
    return f"  -- a Dask actor ({', '.join(extra)})"
