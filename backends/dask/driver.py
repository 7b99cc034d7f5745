"""The Dask driver: the shared driver loop, with graph steps submitted to Dask.

Driver steps (values, actor calls, vars, sinks) run through :class:`Driver`; every graph
step becomes one Dask task graph built from the plan's task specs and submitted at once.
Collections and values a later step reads stay on the cluster (the driver holds their
futures), so a loop's inputs are computed once and every round reuses them.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import fields, is_dataclass, replace
import logging
import time
from collections import Counter
from typing import Any

from dask.task_spec import DataNode, Task, TaskRef
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from distributed import Future, as_completed, wait

from pipec.compiler import ir
from pipec.backends.base import Machine, NoProgress, notify
from pipec.backends.dask import placement, worker
from pipec.backends.dask.plugins import PathsPlugin, StoragePlugin
from pipec.backends.physical import steps
from pipec.backends.physical.planner import Arg, GraphStep, Ref, Rounds, Seq, StepLowering, TaskSpec, key_of
from pipec.backends.runtime import storage
from pipec.backends.runtime.driver import LiveContext, PlannedDriver
from pipec.backends.runtime.interpreter import StageFailure
from pipec.backends.runtime.tasks import ensure_path

log = logging.getLogger("pipec.dask")


# A value the driver ships to a graph travels inside the graph (one data key) up to this
# size; a bigger one is scattered to a worker first (graphs go through the scheduler).
_SCATTER_ABOVE = 1 << 20
# A small one goes inside every task that reads it, while its copies add up to no more
# than this: a data key is a task of its own, run on some worker, reported to the
# scheduler and fetched from there by the others before its readers start, an extra hop
# on every round's critical path (paramserver's weights: 10 floats read by 8 tasks).
_INLINE_UPTO = 1 << 16


# The plan's task bodies (see physical.planner.BODIES) as Dask task functions.
BODIES = {"segment": worker.segment_task, "segments": worker.segments_task, "merge": worker.merge_task,
          "finish": worker.finisher_task, "source_call": worker.source_call, "take_part": worker.take_part,
          "line_index": worker.line_index, "pool": worker.pool_call, "actor_call": worker.actor_call}


class Parts:
    """A collection kept on the cluster: one future per partition, in order. With
    ``outputs``, partition i is output ``outputs[i]`` of its future's value (a grouped
    merge's task holds a run of partitions: the driver keeps the task's key, not a key
    per partition, which would be a task each for the scheduler). ``homes``: the worker
    each partition was placed on, when the driver spread them (see _spread)."""

    __slots__ = ("futures", "outputs", "homes")

    def __init__(self, futures: list, outputs: list | None = None, homes: list | None = None):
        self.futures = futures
        self.outputs = outputs
        self.homes = homes

    def output(self, i: int) -> int | None:
        """Which output of its future's value partition ``i`` is (None: the whole value)."""
        return None if self.outputs is None else self.outputs[i]

    def gather(self, client) -> list:
        """Every partition's value, opened, in order."""
        values = client.gather(self.futures)
        return [worker.unseal(v if self.output(i) is None else worker.unseal(v)[self.output(i)])
                for i, v in enumerate(values)]


def _whole_partitions(spec) -> bool:
    """Whether a task's outputs are partitions of one collection and nothing else (a
    grouped merge's task without a terminal), so the driver may hold its key for them."""
    segment = spec.args[0] if spec is not None and spec.body == "merge" else None
    return (segment is not None and isinstance(segment.head, steps.Merge) and segment.head.groups is not None
            and segment.terminal is None)


class Lazy:
    """A value kept on the cluster until the driver needs it (then fetched once; the
    sealed value goes to ``observe`` first, when given)."""

    __slots__ = ("future", "_value", "_fetched", "observe")

    def __init__(self, future, observe=None):
        self.future = future
        self._fetched = False
        self._value = None
        self.observe = observe

    def get(self):
        if not self._fetched:
            sealed = self.future.result()
            if self.observe is not None:
                self.observe(sealed)
            self._value = worker.unseal(sealed)
            self._fetched = True
        return self._value


class PendingCall:
    """A numbered, logged actor call whose result only stages read (``with w = ps.w()``):
    the next graph that reads it makes the call as a task, and the result goes from the
    actor's answer to the stages without a round trip through the driver. Anything else
    that needs it first (the driver reading the value, another call to the actor) makes
    it from the driver, as before; either way it is applied once, in program order."""

    __slots__ = ("node", "op", "seq", "args", "kwargs")

    def __init__(self, node: str, op: ir.ActorCall, seq: int, args: list, kwargs: dict):
        self.node, self.op, self.seq, self.args, self.kwargs = node, op, seq, args, kwargs


class ActorRecord:
    """The driver's side of one actor: its Dask actor, where it lives, restarts left."""

    def __init__(self, node: str, op: ir.Actor, args: list, kwargs: dict):
        self.node, self.op, self.args, self.kwargs = node, op, args, kwargs
        self.restarts_left = op.restarts
        self.incarnation = 0
        self.future = None
        self.actor = None
        self.address: str | None = None
        self.broken = False


class PoolRecord:
    """An actor pool: members spread over the workers, and each member's next call number
    and restarts left (`restarts N` is each member's, as a Ray actor's max_restarts is)."""

    def __init__(self, node: str, op: ir.Actor, args: list, kwargs: dict, size: int):
        self.node, self.op, self.args, self.kwargs = node, op, args, kwargs
        self.restarts_left = [op.restarts] * size
        self.futures: list = [None] * size
        self.actors: list = [None] * size
        self.addresses: list = [None] * size
        self.incarnations = [0] * size
        self.next = [0] * size


class _ActorsGone(Exception):
    """A task failed because an actor it reads could not be reached."""

    def __init__(self, spec, refs: list[Ref], cause: BaseException):
        super().__init__(spec.key)
        self.spec, self.refs, self.cause = spec, refs, cause


def _release(future, actor) -> None:
    for f in (future, getattr(actor, "_future", None)):
        if f is not None:
            f.release()


class DaskDriver(PlannedDriver):
    backend = "dask"

    def __init__(self, plan, progress=None, run_dir: str | None = None, resume: bool = False):
        super().__init__(plan, progress, run_dir, resume)
        self.client = None  # the session's, once the plan's engine is up (DaskPlan.engine)
        self.tag = self.run_id[:8]
        self._submissions = itertools.count(1)
        self._placement = itertools.count()
        self.events: list[str] = []
        self.submitted: list[list[str]] = []  # plan keys of each graph submitted (for tests)
        self.pending: dict[str, PendingCall] = {}  # actor -> its call not made yet
        self._batched: dict[str, tuple[str, int]] = {}  # plan key -> (its batch's key, position)
        self._homes: dict[str, str] = {}  # plan key -> the worker its task was placed on
        self._also_keep: set[str] = set()  # keys of this graph read by the driver's combines
        self._storage_plugin: str | None = None  # the name of the run's StoragePlugin, while registered

    # ---- lifecycle

    def setup(self) -> None:
        self._check_resources()
        roots = list(self.ir.info.module_paths())
        if roots:
            self.client.register_plugin(PathsPlugin(roots), name=f"pipec-paths-{abs(hash(tuple(roots)))}")
            try:
                self.client.run_on_scheduler(ensure_path, roots)
            except Exception:  # a scheduler that cannot run our code still schedules
                pass
        # The storage options given in Python, on every worker before any task of the run
        # (a plugin, like the paths: Dask actors and later workers get them too).
        options = storage.shipped()
        if options is not None:
            self._storage_plugin = f"pipec-storage-{self.run_id}"
            self.client.register_plugin(StoragePlugin(options), name=self._storage_plugin)

    def _check_resources(self) -> None:
        """Stages ask Dask for the resources a worker declares (``--resources``, which the
        embedded cluster sets from this machine): one asking more than any worker of the
        cluster declares would wait forever, so the run is refused before any task."""
        declared = [w.get("resources") or {} for w in self.client.scheduler_info()["workers"].values()]
        machines = [Machine(r.get("CPU", 0), r.get("GPU", 0), r.get("MEMORY", 0)) for r in declared]
        self.refuse_over_resources(machines, "worker of the cluster (as --resources)",
                                   'start the workers with what the stage asks, e.g. --resources "CPU=2,GPU=1", '
                                   "or ask for less")

    def engine_info(self) -> dict[str, Any]:
        """Dask's workers, its dashboard and the dask and distributed versions."""
        import dask
        import distributed
        return {"workers": len(self.client.scheduler_info()["workers"]), "dashboard": self.client.dashboard_link,
                "versions": {"dask": dask.__version__, "distributed": distributed.__version__}}

    def teardown(self) -> None:
        # Let the cluster forget this run's keys and actors now (on a shared cluster the
        # driver object may outlive the run). An actor handle holds a future of its own.
        for value in list(self.env.values()):
            if isinstance(value, ActorRecord):
                _release(value.future, value.actor)
                value.future = value.actor = None
            elif isinstance(value, PoolRecord):
                for m, (future, actor) in enumerate(zip(value.futures, value.actors)):
                    _release(future, actor)
                    value.futures[m] = value.actors[m] = None
        self.env.clear()
        if self._storage_plugin is not None:  # the workers forget the run's credentials
            try:
                self.client.unregister_worker_plugin(self._storage_plugin)
            except Exception:  # a cluster that went away has nothing left to forget
                pass
            self._storage_plugin = None

    # ---- blocks

    def nparts(self, node: str) -> int:
        return len(self.env[node].futures)

    def pool_size(self, pool: str) -> int:
        return len(self.env[pool].futures)

    def var_partitions(self, var: str) -> list[list]:
        return self.env[var].gather(self.client)

    def var_from_partitions(self, var: str, parts: list[list]):
        return Parts(self.client.scatter([worker.seal(part) for part in parts], hash=False))

    def end_round(self, block) -> None:
        # This round's results are not read again (vars were rebound already): let the
        # cluster forget them now rather than when the next round replaces them.
        for node in block.nodes():
            if node not in self.planner.loop_reads:
                self.env.pop(node, None)

    def materialize(self, value: Any) -> Any:
        if isinstance(value, PendingCall):
            return self._make_pending(value.op.actor.node)
        return value.get() if isinstance(value, Lazy) else value

    def run_top(self, top) -> None:
        super().run_top(top)
        for actor in list(self.pending):  # not read after all: applied all the same
            self._make_pending(actor)

    def gather(self, node: str) -> list:
        return [x for part in self.env[node].gather(self.client) for x in part]

    # ---- graph steps

    def run_graph(self, step: GraphStep) -> None:
        unexplained = 0
        while True:
            try:
                self._run_graph_once(step)
                self._checkpoint_handle_actors(step)
                return
            except _ActorsGone as gone:
                # The graph could not reach an actor: bring back every actor it reads that
                # is gone, then the graph runs again (its stages are pure; calls made
                # through handles are sent again, as the compiler warned).
                lost = [ref for ref in gone.refs if not self._reachable(ref)]
                if not lost:  # they answer now: a slow moment, try again (not forever)
                    unexplained += 1
                    if unexplained > 2:
                        raise self.error(gone.spec.group, str(gone.cause), self._span(gone.spec.group)) from None
                for ref in lost:
                    self._recover(ref)

    def _checkpoint_handle_actors(self, step: GraphStep) -> None:
        """Snapshot every actor this graph's stages called through handles: those calls
        are in no replay log, so a later loss of the actor must restore them from here."""
        for actor in sorted({a for node in step.nodes for a in self.planner.handles(node)}):
            record = self.env.get(actor)
            if isinstance(record, ActorRecord) and record.op.restarts > 0:
                while True:
                    try:
                        self._result(record, record.actor.checkpoint())
                        self.logs[actor].checkpointed()  # what a resume record names
                        break
                    except Exception as exc:
                        if isinstance(exc, worker.ActorLost) or self._lost(record, exc):
                            # Lost before it saved: the graph's calls are gone with it.
                            record.broken = True
                            raise _ActorsGone(self._last_specs[0], [Ref(f"{key_of(actor)}-actor", actor)], exc)
                        raise

    def _run_graph_once(self, step: GraphStep) -> None:
        for actor in {a for node in step.nodes for a in self.planner.handles(node)} & set(self.pending):
            self._make_pending(actor)  # before the stages call it through handles
        lowering = StepLowering(self.ir, step, LiveContext(self), self.planner.actors)
        specs = lowering.lower()
        suffix = f"@{self.tag}.{next(self._submissions)}"
        in_step = {spec.key: spec for spec in specs}
        self._resolved: dict[int, tuple] = {}
        aliases: dict[str, Any] = {}  # data keys whose value is already on the cluster
        self._inline: dict[str, Any] = {}  # data keys whose value travels in their readers
        readers = Counter(ref.key for spec in specs for ref in spec.deps)
        layers: dict[tuple, dict] = {}
        annotations: dict[tuple, dict] = {}
        task_specs = []
        for spec in specs:
            if spec.data is not None:
                held = self.env[spec.data]
                if isinstance(held, PendingCall):
                    task_specs.append(self._call_task(spec, held))
                    continue
                if isinstance(held, Lazy):
                    aliases[spec.key] = held.future
                    continue
                sealed = worker.seal(held)
                if len(sealed.data) > _SCATTER_ABOVE:  # big: straight to a worker, not via the scheduler
                    aliases[spec.key] = self.client.scatter(sealed, hash=False)
                    continue
                if sealed.nbytes * max(1, readers[spec.key]) <= _INLINE_UPTO:
                    self._inline[spec.key] = sealed
                    continue
                layers.setdefault(("data",), {})[spec.key + suffix] = DataNode(spec.key + suffix, sealed)
                annotations[("data",)] = {}
                continue
            task_specs.append(spec)
        homes = self._spread(step, lowering, in_step)
        task_specs, self._batched = self._batch(step, lowering, task_specs, in_step, homes)
        self._homes = homes
        on_driver = self.folded_on_driver(step, lowering, {spec.key for spec in task_specs} | set(self._batched))
        task_specs = [spec for spec in task_specs if spec.key not in on_driver]
        self._also_keep = {self._batched.get(ref.key, (ref.key,))[0] for spec in on_driver.values()
                           for ref in spec.deps}

        for spec in task_specs:
            # No Dask retries: user code is retried inside the task by the interpreter (never
            # an effectful stage); a task lost with its worker is rescheduled by Dask itself.
            notes: dict[str, Any] = {}
            if spec.resources:
                notes["resources"] = spec.resources
            if spec.member is not None:
                pool, m = spec.member
                notes["workers"] = [self.env[pool].addresses[m]]
                notes["allow_other_workers"] = True
            elif spec.key in homes:  # a preference: a task whose worker is gone runs elsewhere
                notes["workers"] = [homes[spec.key]]
                notes["allow_other_workers"] = True
            sig = (spec.group, tuple(sorted((k, repr(v)) for k, v in notes.items())))
            key = spec.key + suffix
            args = [self._resolve(a, aliases, in_step, suffix) for a in spec.args]
            layers.setdefault(sig, {})[key] = Task(key, BODIES[spec.body], *args)
            annotations[sig] = notes
        self.submitted.append([spec.key for spec in specs])
        self._last_specs = task_specs
        futures: dict[str, Any] = {}
        picks: dict[str, Any] = {}  # a kept output of a shared scan -> its own key's future
        if task_specs:
            read = {dep for layer in layers.values() for task in layer.values() for dep in task.dependencies}
            # A shared scan's partition read after this graph gets a key of its own, so
            # the driver holds just the partition, not every output of the scan's key (a
            # grouped merge's task holds partitions only: its key is held, see Parts).
            kept = {ref.text: ref for node in step.exports for ref in lowering.parts.get(node, ())
                    if ref.output is not None and not _whole_partitions(in_step[ref.key])}
            if kept:
                layers[("picks",)] = {name + suffix: Task(name + suffix, worker.pick, TaskRef(ref.key + suffix),
                                                          ref.output, ref.buckets) for name, ref in kept.items()}
                annotations[("picks",)] = {}
            names = {sig: f"{sig[0]}-{i}{suffix}" for i, sig in enumerate(layers)}
            hlg = HighLevelGraph({names[sig]: MaterializedLayer(layer, annotations=annotations[sig] or None)
                                  for sig, layer in layers.items()},
                                 {names[sig]: set() for sig in layers})
            keys = [spec.key + suffix for spec in task_specs]
            submitted = self.client.get(hlg, keys + [name + suffix for name in kept], sync=False)
            futures = {spec.key: f for spec, f in zip(task_specs, submitted)}
            picks = dict(zip(kept, submitted[len(keys):]))
            # The calls' results stay for later readers (a second Future holds the key).
            calls = {spec.data: Future(futures[spec.key].key, self.client) for spec in task_specs if spec.data}
            try:
                self._wait(step, task_specs, futures, lowering, read)
            except BaseException:
                for future in calls.values():
                    future.release()
                raise
            for node, future in calls.items():
                self._made(self.env[node], Lazy(future))
        finished = self._finish(on_driver, futures) if on_driver else {}
        self._keep(step, lowering, futures, aliases, picks, finished)
        self._advance_pools(task_specs)

    def _resolve(self, arg, aliases: dict, in_step: dict, suffix: str):
        """A task argument as Dask gets it: refs become keys, placeholders values."""
        # Keys held from earlier graphs are named, not embedded as futures: the graph
        # must not keep them alive (the driver's handles decide how long they live).
        if isinstance(arg, Ref):
            if arg.key in self._batched:  # its partition's result, in its batch's list
                batch, position = self._batched[arg.key]
                return Task(None, worker.pick_partition, TaskRef(batch + suffix), position)
            if arg.key in self._inline:
                return self._inline[arg.key]
            if arg.key in aliases:
                return TaskRef(aliases[arg.key].key)
            if arg.key in in_step:
                if arg.output is not None:
                    # One output of a shared scan's key, picked inside the reading task
                    # (no key of its own: nothing more for the scheduler to track).
                    return Task(None, worker.pick, TaskRef(arg.key + suffix), arg.output, arg.buckets)
                return TaskRef(arg.key + suffix)
            held = self.env.get(arg.node)
            if isinstance(held, Parts) and held.output(arg.part) is not None:
                return Task(None, worker.pick, TaskRef(self._held(arg).key), held.output(arg.part))
            return TaskRef(self._held(arg).key)
        if isinstance(arg, Arg):
            value = self.value(arg.operand)
            return storage.absolute(value) if arg.path and isinstance(value, str) else value  # URLs as they are
        if isinstance(arg, Rounds):
            return tuple(self.round_index.get(loop, 0) for loop in arg.loops)
        if isinstance(arg, Seq):
            return self.env[arg.pool].next[arg.member] + arg.offset
        if is_dataclass(arg) and not isinstance(arg, type):
            # A step of the physical plan: its Args become this run's values (once per
            # submission: every partition's task shares the same segment object).
            done = self._resolved.get(id(arg))
            if done is None or done[0] is not arg:
                changes = {f.name: self._resolve(getattr(arg, f.name), aliases, in_step, suffix) for f in fields(arg)}
                done = self._resolved[id(arg)] = (arg, replace(arg, **changes))
            return done[1]
        if isinstance(arg, tuple):
            return tuple(self._resolve(a, aliases, in_step, suffix) for a in arg)
        if isinstance(arg, list):
            return [self._resolve(a, aliases, in_step, suffix) for a in arg]
        if isinstance(arg, dict):
            return {k: self._resolve(v, aliases, in_step, suffix) for k, v in arg.items()}
        return arg

    # ---- placement: a loop's partitions spread, a worker's share one task (see placement)

    def _spread(self, step: GraphStep, lowering, in_step: dict) -> dict[str, str]:
        """Plan key -> worker, for the tasks of this graph that :mod:`.placement` spreads."""
        collections = placement.spread_keys(self.ir, step.exports, lowering.parts, in_step) if step.loop is None \
            else {}
        return placement.homes(collections, self._workers()) if collections else {}

    def _batch(self, step: GraphStep, lowering, specs: list, in_step: dict, homes: dict):
        """``specs`` with each worker's share of a segment made one task (see
        :func:`placement.batches`), and plan key -> (batch key, position). ``homes``
        gets each batch's worker."""
        kept = {ref.key for node in step.exports for ref in lowering.parts.get(node, ())}
        kept |= {lowering.values[node].key for node in step.exports if node in lowering.values}
        eligible = placement.eligible(specs, kept)

        def home_of(spec) -> str | None:
            if spec.key not in eligible:
                return None
            base = spec.args[2]
            held = self.env.get(base.node)
            if not isinstance(held, Parts) or held.homes is None or held.output(base.part) is not None:
                return None
            return held.homes[base.part]
        out, batched, where = placement.batches(specs, home_of, set(in_step))
        homes.update(where)
        return out, batched

    # ---- a small value the driver reads: its last combine runs on the driver

    def _observe(self, node: str, sealed) -> None:
        """The driver fetched value ``node``: its size decides whether later graphs fold it
        on the driver (see :meth:`PlannedDriver.folded_on_driver`)."""
        self.observed(node, sealed.nbytes if isinstance(sealed, worker.Sealed) else None)

    def _finish(self, on_driver: dict[str, TaskSpec], futures: dict) -> dict[str, Any]:
        """Fold each value of ``on_driver`` from its partials, gathered at once; node ->
        value. A partition that failed in its batch raises its failure here, as its
        combine task would have; so does the fold."""
        wanted = sorted(self._also_keep)
        gathered = dict(zip(wanted, self.client.gather([futures[key] for key in wanted])))
        for key in wanted:
            futures[key].release()

        def partial(dep: Ref):
            if dep.key not in self._batched:
                got = gathered[dep.key]
                return worker.unseal(got if dep.output is None else worker.pick(got, dep.output))
            batch, position = self._batched[dep.key]
            got = gathered[batch][position]
            if isinstance(got, worker.FailedPartition):
                raise self.stage_failed(got.failure) from None
            return worker.unseal(got)
        return self.fold_on_driver(on_driver, partial)

    def _advance_pools(self, specs) -> None:
        last: dict[tuple[str, int], int] = {}
        for spec in specs:
            for arg in spec.args:
                if isinstance(arg, Seq):
                    last[(arg.pool, arg.member)] = max(last.get((arg.pool, arg.member), -1), arg.offset)
        for (pool, m), offset in last.items():
            self.env[pool].next[m] += offset + 1

    def _held(self, ref: Ref):
        """The future of a key kept from an earlier graph (or an actor's)."""
        held = self.env[ref.node]
        if isinstance(held, Parts):
            return held.futures[ref.part]
        if isinstance(held, Lazy):
            return held.future
        if isinstance(held, ActorRecord):
            return held.future
        if isinstance(held, PoolRecord):
            return held.futures[ref.part]
        raise AssertionError(f"{ref.key} is not on the cluster")

    def _wait(self, step: GraphStep, specs, futures: dict, lowering, read: set) -> None:
        """Wait for a submitted graph; ``read`` holds the keys its own tasks read."""
        by_key = {f.key: spec for spec, f in zip(specs, futures.values())}
        widths = Counter(batch for batch, _ in self._batched.values())  # batch key -> partitions it runs
        groups: Counter = Counter()
        for spec in specs:
            groups[spec.group] += widths.get(spec.key, 1)
        for group, n in groups.items():
            self.progress.stage(group, n)
        in_step = {spec.key: spec for spec in specs}
        keep = {ref.key for node in step.exports for ref in lowering.parts.get(node, [])
                if ref.output is None or _whole_partitions(in_step.get(ref.key))}
        keep |= {lowering.values[node].key for node in step.exports if node in lowering.values}
        keep |= self._also_keep  # the partials of a value finished on the driver, until it has them
        start = time.perf_counter()
        done_at: dict[str, float] = {}
        # A pool member serves its partitions in order, so its task for partition i waits
        # inside the member for partition i-1's: if that one never runs (what it reads
        # failed), waiting for every end would wait for good. Such graphs are watched
        # task by task, and the first failure ends the wait.
        pooled = any(spec.member is not None for spec in specs)
        if isinstance(self.progress, NoProgress) and not pooled:
            # Nobody watches task by task: wait for the graph's ends only (every other task
            # finishes before what reads it), one wake-up instead of one per task.
            ends = [f for f in futures.values() if f.key not in read]
            wait(ends)
            if all(f.status == "finished" for f in ends):
                seconds = time.perf_counter() - start
                for spec, future in zip(specs, futures.values()):
                    done_at[spec.group] = seconds
                    if spec.key not in keep:
                        future.release()
                self._record_timings(done_at)
                return
            # A task failed: the loop below finds the failure the reference meets first.
        pending = as_completed(list(futures.values()), loop=self.client.loop)
        released: set[str] = set()
        try:
            for future in pending:
                spec = by_key[future.key]
                if future.status != "finished":
                    self._fail(self._first_failure(future, pending, by_key), specs)
                self.progress.advance(spec.group, widths.get(spec.key, 1))
                done_at[spec.group] = time.perf_counter() - start
                if spec.key not in keep:
                    future.release()  # not read after this graph: the cluster may drop it
                    released.add(future.key)
        except BaseException:
            for f in futures.values():  # nobody wants the rest: the scheduler drops it
                if f.key not in released:
                    f.release()
            raise
        self._record_timings(done_at)

    def _record_timings(self, done_at: dict[str, float]) -> None:
        for group, seconds in done_at.items():
            self.result.timings[group] = self.result.timings.get(group, 0.0) + seconds

    def _span(self, node: str):
        return self.ir.op(node).span if node in self.ir else None

    def _first_failure(self, future, pending, by_key, patience: float = 5.0):
        """Of the tasks of this graph that fail, the one the reference backend meets first
        (earliest stage in program order, then lowest partition), so the error reported
        is the same on every backend. Tasks still running get ``patience`` seconds."""
        failures = [(future, by_key[future.key], future.exception())]
        if isinstance(failures[0][2], worker.ActorLost) or worker.is_lost(failures[0][2]):
            return failures[0]  # an actor to bring back, not an error to report
        deadline = time.monotonic() + patience
        try:
            while time.monotonic() < deadline:
                batch = pending.next_batch(block=False)
                if not batch and pending.is_empty():
                    break
                for other in batch:
                    if other.status not in ("finished", "pending"):
                        failures.append((other, by_key[other.key], other.exception()))
                if not batch:
                    time.sleep(0.05)
        except Exception:  # ordering errors is best effort; the first one stands
            pass
        order = self._program_order()

        def rank(item):
            _, spec, exc = item
            where = getattr(exc, "node", None) or spec.group
            partition = getattr(exc, "partition", None)
            real = isinstance(exc, StageFailure)
            return (not real, order.get(where, len(order)), partition if partition is not None else 1 << 30)
        return min(failures, key=rank)

    def _program_order(self) -> dict[str, int]:
        if not hasattr(self, "_order"):
            self._order = {node: i for i, node in enumerate(self.ir)}
        return self._order

    def _fail(self, failure, specs) -> None:
        future, spec, exc = failure
        if isinstance(exc, StageFailure) and spec.body == "actor_call" and exc.kind == "error":
            call = self.env[spec.data]
            raise self.stage_failed(exc, call.op.span) from None  # where the driver's call points
        if isinstance(exc, worker.ActorLost) or worker.is_lost(exc):
            # The failure may reach us through a task downstream of the one that called
            # the actor: consider every actor this graph reads.
            actors = list({ref: None for s in specs for ref in s.deps if ref.node in self.planner.actors})
            if actors:
                raise _ActorsGone(spec, actors, exc)
        op = self.ir.op(spec.group) if spec.group in self.ir else None
        if isinstance(exc, StageFailure):
            raise self.stage_failed(exc) from None
        if type(exc).__name__ == "KilledWorker":
            raise self.error(spec.group, f"the workers running task {spec.key} died again and again; "
                                         f"Dask gave up on it", op.span if op else None,
                             "a stage that runs out of memory kills its worker: use more partitions") from None
        if type(exc).__name__ in ("CancelledError", "FutureCancelledError"):
            raise self.error(spec.group, f"task {spec.key} was cancelled by the cluster", op.span if op else None)
        raise self.error(spec.group, f"{type(exc).__name__}: {exc}", op.span if op else None) from None

    def _keep(self, step: GraphStep, lowering, futures: dict, aliases: dict, picks: dict,
              finished: dict) -> None:
        """Hold the futures of what later steps read (the rest is released already), and
        the values ``finished`` on the driver."""
        def future_of(ref: Ref):
            if ref.text in picks:
                return picks[ref.text]
            if ref.key in aliases:
                return aliases[ref.key]
            if ref.key in futures:
                return futures[ref.key]
            return self._held(ref)
        for node in step.exports:
            if node in finished:
                self.env[node] = finished[node]
            elif node in lowering.parts:
                refs = lowering.parts[node]
                outputs = [r.output if r.text not in picks and r.key in futures else None for r in refs]
                homes = [self._homes.get(r.key) for r in refs]
                self.env[node] = Parts([future_of(r) for r in refs], outputs if any(o is not None for o in outputs)
                                       else None, homes if all(homes) else None)
            elif node in lowering.values:
                self.env[node] = Lazy(future_of(lowering.values[node]), observe=functools.partial(self._observe, node))

    # ---- actors

    def _workers(self, avoid: str | None = None) -> list[str]:
        addresses = [a for a in self.client.run_on_scheduler(worker.worker_addresses) if a != avoid]
        if not addresses:
            self.client.wait_for_workers(1, timeout=60)
            addresses = [a for a in self.client.run_on_scheduler(worker.worker_addresses) if a != avoid]
        return addresses

    def _spawn(self, cls, args: tuple, key: str, where: str):
        """A Dask actor of ``cls`` on worker ``where`` (elsewhere if it has gone)."""
        future = self.client.submit(cls, *args, actor=True, workers=[where], allow_other_workers=True,
                                    key=key, pure=False)
        return future, future.result()

    def start_actor(self, node: str, op: ir.Actor):
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        record = ActorRecord(node, op, args, kwargs)
        try:
            self._start_host(record)
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        return record

    def _start_host(self, record: ActorRecord, avoid: str | None = None) -> None:
        op = record.op
        workers = self._workers(avoid)
        where = workers[next(self._placement) % len(workers)]
        # An actor that can restart always has a snapshot file: periodic checkpoints go
        # there, and so do the snapshots taken after graphs that call it through handles.
        snapshot = self.snapshot_path(record.node) if op.checkpoint_every or op.restarts > 0 else None
        record.future, record.actor = self._spawn(
            worker.DaskActorHost,
            (list(self.ir.info.module_paths()), op.cls.module, op.cls.attr, record.args, record.kwargs,
             op.checkpoint_every, snapshot),
            f"{key_of(record.node)}-actor@{self.tag}.{record.incarnation}", where)
        record.address = record.actor._address

    def start_pool(self, node: str, op: ir.Actor, size: int):
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        record = PoolRecord(node, op, args, kwargs, size)
        workers = self._workers()
        try:
            for m in range(size):
                self._start_member(record, m, workers[m % len(workers)])
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        return record

    def _start_member(self, record: PoolRecord, m: int, where: str) -> None:
        op = record.op
        record.futures[m], record.actors[m] = self._spawn(
            worker.PoolMember,
            (list(self.ir.info.module_paths()), op.cls.module, op.cls.attr, record.args, record.kwargs, record.next[m],
             self.each_path(record.node) if self.pool_logs.get(record.node) else None),
            f"{key_of(record.node)}-member-{m}@{self.tag}.{record.incarnations[m]}", where)
        record.addresses[m] = record.actors[m]._address

    def call_pool(self, pool: str, seq: int, method: str, args: list, kwargs: dict) -> list:
        record: PoolRecord = self.env[pool]
        sealed = worker.seal((args, kwargs))
        answers = []
        for m in range(len(record.actors)):
            while True:
                try:
                    future = record.actors[m].each(seq, method, sealed)
                    answers.append(worker.unseal(worker.await_actor(future, record.actors[m], pool, m, self.client)))
                    break
                except Exception as exc:
                    if isinstance(exc, worker.ActorLost) or worker.is_lost(exc) or \
                            isinstance(exc, (OSError, RuntimeError, TimeoutError)) and not \
                            self._alive(record.actors[m]):
                        # Re-created from its constructor and the calls to every member so
                        # far (this one included): it answers this call from that replay.
                        self._recover(Ref(f"{key_of(pool)}-member-{m}", pool, m))
                        continue
                    raise
        return answers

    def op_actor_call(self, node: str, op: ir.ActorCall):
        actor = op.actor.node
        if actor in self.pending:
            self._make_pending(actor)  # calls reach an actor in program order
        if not (isinstance(self.env[actor], ActorRecord) and self.read_by_stages_only(node)):
            return super().op_actor_call(node, op)
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        call = PendingCall(node, op, self.logs[actor].record(op.method, args, kwargs), args, kwargs)
        self.pending[actor] = call
        return call

    def _make_pending(self, actor: str):
        """The driver makes actor ``actor``'s pending call now; gives its result."""
        call = self.pending[actor]
        result = self.apply_call(call.node, call.op, call.seq, call.args, call.kwargs)
        self._made(call, result)
        return result

    def _call_task(self, spec, call: PendingCall):
        """The task that makes pending ``call`` in place of data key ``spec``."""
        actor = call.op.actor.node
        return replace(spec, body="actor_call", label=f"call {actor}.{call.op.method}(#{call.seq})",
                       args=(call.node, f"{actor}.{call.op.method}", call.seq, call.op.method,
                             worker.seal((call.args, call.kwargs)), Ref(f"{key_of(actor)}-actor", actor)))

    def _made(self, call: PendingCall, value) -> None:
        """Pending ``call`` was applied (its result is ``value``): confirmed in the log."""
        actor = call.op.actor.node
        del self.pending[actor]
        self.env[call.node] = value
        if not isinstance(value, Lazy):
            return  # apply_call confirmed it
        self.logs[actor].confirm(call.seq)
        notify(self.progress, "actor_call", actor, call.seq, call.op.method, False)

    def flush_actor(self, actor: str) -> None:
        record = self.env.get(actor)
        if not isinstance(record, ActorRecord) or record.broken:
            return
        try:
            self._result(record, record.actor.flush())
        except Exception as exc:
            if isinstance(exc, worker.ActorLost) or self._lost(record, exc):
                return  # lost since its last call: no write of it is in flight any more
            raise

    def call_actor(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        record: ActorRecord = self.env[actor]
        while True:
            try:
                if record.broken:
                    self._restore(record, upto=seq)
                return self._result(record, record.actor.call_sealed(seq, method, worker.seal((args, kwargs))))
            except Exception as exc:
                if isinstance(exc, worker.ActorLost) or self._lost(record, exc):
                    record.broken = True
                    continue
                raise

    def _result(self, record: ActorRecord, future):
        """Wait for an actor call; a silent actor whose worker is gone counts as lost."""
        return worker.unseal(worker.await_actor(future, record.actor, record.node, None, self.client))

    def _alive(self, actor) -> bool:
        if worker.actor_worker_gone(actor, self.client):
            return False
        try:
            return bool(actor.ping().result(timeout=10))
        except Exception:
            return False

    def _lost(self, record: ActorRecord, exc: BaseException) -> bool:
        if worker.is_lost(exc):
            return True
        if isinstance(exc, (OSError, RuntimeError, TimeoutError)):
            return not self._alive(record.actor)
        return False

    def _restore(self, record: ActorRecord, upto: int | None) -> None:
        """Re-create a lost actor on a live worker from its snapshot; replay the calls
        after it (those before ``upto``: the caller sends ``upto`` itself)."""
        node, op = record.node, record.op
        if record.restarts_left <= 0:
            hint = ("give the actor `restarts N` (and `checkpoint every N calls`) to survive a worker's death"
                    if op.restarts == 0 else f"it was restarted {op.restarts} times already")
            raise self.error(node, f"actor `{node}` was lost with its worker and has no restarts left",
                             op.span, hint)
        record.restarts_left -= 1
        record.incarnation += 1
        dead = record.address
        _release(record.future, record.actor)
        self._start_host(record, avoid=dead)
        applied = self._result(record, record.actor.applied_seq())
        replay = [e for e in self.logs[node].since(applied) if upto is None or e[0] < upto]
        for seq, method, args, kwargs in replay:
            self._result(record, record.actor.call_sealed(seq, method, worker.seal((args, kwargs))))
        record.broken = False
        start = f"from its checkpoint (call {applied})" if applied >= 0 else "from scratch"
        self._event(f"actor `{node}` was lost with worker {dead}; re-created on {record.address} "
                    f"{start} and replayed {len(replay)} call{'s' if len(replay) != 1 else ''}")

    def _reachable(self, ref: Ref) -> bool:
        record = self.env[ref.node]
        if isinstance(record, PoolRecord):
            return self._alive(record.actors[ref.part])
        return self._alive(record.actor)

    def _recover(self, ref: Ref) -> None:
        """Bring back an actor (or pool member) that a graph could not reach."""
        record = self.env[ref.node]
        if isinstance(record, ActorRecord):
            record.broken = True
            pending = self.pending.get(ref.node)  # the graph's call task sends that one itself
            self._restore(record, upto=pending.seq if pending is not None else None)
            return
        m = ref.part
        if record.restarts_left[m] <= 0:
            raise self.error(ref.node, f"a member of actor pool `{ref.node}` was lost with its worker and "
                                       f"the pool has no restarts left", record.op.span,
                             "give the pool `restarts N` to survive a worker's death")
        record.restarts_left[m] -= 1
        record.incarnations[m] += 1
        dead = record.addresses[m]
        _release(record.futures[m], record.actors[m])
        workers = self._workers(avoid=dead)
        self._start_member(record, m, workers[m % len(workers)])
        self._event(f"member {m} of actor pool `{ref.node}` was lost with worker {dead}; "
                    f"re-created on {record.addresses[m]}")

    def _event(self, message: str) -> None:
        self.events.append(message)
        notify(self.progress, "fault", message)
        log.warning(message)
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / "events.log", "a", encoding="utf-8") as fh:
                fh.write(message + "\n")
        except OSError:
            pass
