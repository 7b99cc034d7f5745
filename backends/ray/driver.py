"""The driver of a Ray run: the shared driver loop, with every graph step of the physical
plan submitted as Ray tasks, one per task of the plan (named by its key, reading the
ObjectRefs of the tasks it depends on), and actors restored by replaying their calls in
order, each applied exactly once."""

from __future__ import annotations

import pickle
import re
import time
from dataclasses import fields, is_dataclass, replace
from functools import partial
from typing import Any

from pipec.compiler import ir
from pipec.backends.base import Machine, NoProgress, RunResult, notify
from pipec.backends.physical import steps as s
from pipec.backends.physical.planner import Arg, GraphStep, Ref, Rounds, Seq, StepLowering
from pipec.backends.runtime import storage
from pipec.backends.runtime.driver import FOLD_UPTO, LiveContext, PlannedDriver, pickled_size
from pipec.backends.runtime.interpreter import StageFailure
from pipec.backends.runtime.tasks import WorkerSetup
from pipec.dsl.diagnostics import PipelineRuntimeError
from pipec.backends.runtime.actors import SKIPPED
from pipec.backends.ray.plan import parts_returned_by_source
from pipec.backends.ray.worker import ActorLost, Gap, remote_calls


# How long the driver waits for a restarted actor to come back before giving up.
ACTOR_RESTART_WAIT = 120.0
# Recovering a pure task from a lost worker is the engine's job, whatever `retries` (which
# is about exceptions user code raises) says; an effectful task is never re-run blindly.
LOST_WORKER_RETRIES = 3
_RAY_RESOURCE = {"CPU": "num_cpus", "GPU": "num_gpus", "MEMORY": "memory"}


class Parts:
    """A collection kept in Ray's object store: one ObjectRef per partition, in order."""

    def __init__(self, refs: list):
        self.refs = list(refs)


class Lazy:
    """A value kept in the object store until the driver needs it (then fetched once, and
    given to ``observe`` when there is one)."""

    def __init__(self, ref, observe=None):
        self.ref, self.observe = ref, observe
        self.fetched, self.value = False, None


class CallResult(Lazy):
    """A graph-level actor call whose result only stages read (``with w = ps.w()``): sent
    at once, its ObjectRef handed to the stages, with no round trip through the driver
    before the graph is submitted. It is settled (checked: a user error, an actor that
    restarted; confirmed in the replay log) after the graph that read it, or sooner when
    the driver needs it."""

    def __init__(self, ref, node: str, op: ir.ActorCall, seq: int, args: list, kwargs: dict):
        super().__init__(ref)
        self.node, self.op, self.seq, self.args, self.kwargs = node, op, seq, args, kwargs


def _actor_options(op: ir.Actor, name: str) -> dict[str, Any]:
    """An actor's Ray options. Ray never restarts it (``max_restarts 0``): pipec does,
    from a standby process started ahead (see RayDriver._take_over), and a process Ray
    will not restart is reported dead within milliseconds, where one it restarts is only
    reported unavailable after a second. Method retries stay off, because pipec replays
    graph-level calls itself, in order, exactly once."""
    return {"max_restarts": 0, "max_task_retries": 0, "name": name}


def _pool_options(op: ir.Actor, name: str) -> dict[str, Any]:
    """A pool member's Ray options: Ray restarts its process (``max_restarts``), which
    replays the calls made to every member; method retries stay off."""
    return {"max_restarts": op.restarts, "max_task_retries": 0, "name": name}


def task_options(graph: ir.IR, spec, first=None) -> dict[str, Any]:
    """Ray options for the task of ``spec`` (``first``: its first argument, the segment
    of a segment or merge task). Ray re-runs a pure task lost with its worker at least
    LOST_WORKER_RETRIES times, never an effectful one; user code that raises is retried
    inside the task by the interpreter, so Ray's exception retries stay off. A split has
    one return per bucket, a shared scan one per output."""
    segment = first if isinstance(first, s.Segment) else None
    nodes = segment.nodes if segment is not None else (spec.group,)
    effectful = any(getattr(getattr(graph.op(n), "options", None), "effectful", False)
                    for n in nodes if n in graph)
    out: dict[str, Any] = {"max_retries": 0 if effectful else max(spec.retries, LOST_WORKER_RETRIES),
                           "retry_exceptions": False, "name": spec.key, "num_cpus": 1}
    for name, amount in (spec.resources or {}).items():
        out[_RAY_RESOURCE[name]] = int(amount) if name == "MEMORY" else amount
    returns = s.task_outputs(segment, spec.args[1]) if segment is not None and spec.body in ("segment", "merge") \
        else 1
    if returns > 1:
        out["num_returns"] = returns
    return out


class _Remote:
    """A Ray remote function with its options, and how many returns its body gives."""

    def __init__(self, remote, outputs: int):
        self.remote, self.outputs = remote.remote, outputs


def _gives_partitions(spec, first) -> bool:
    """Whether a task's outputs are (or include) partitions of a collection: a segment
    or merge without a terminal, or a shared scan keeping the partition. The partitions
    stay in the object store, for the tasks and graphs that read them; the driver waits
    on a last, tiny return instead (see ``worker.with_status``): fetching a partition to
    learn that its task ended held every exported partition in the driver's memory
    (543 MB for 200 MB of strings kept across rounds)."""
    if spec.body not in ("segment", "merge") or not isinstance(first, s.Segment):
        return False
    terminal = first.terminal
    return terminal is None or isinstance(terminal, s.Branches) and terminal.keep


def _fetch_errors(ray, refs) -> None:
    """Fetch the other returns of a failed task (a split's buckets, a callable source's
    parts), which hold its error: Ray logs "Unhandled error" with the traceback for each
    error object nobody fetched once its ObjectRef is dropped, noise on the user's
    terminal for a failure pipec reports itself."""
    for ref in refs:
        try:
            ray.get(ref)
        except Exception:
            pass


class RayRunResult(RunResult):
    """A run's results plus what fault tolerance did: actor recoveries per actor."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recoveries: dict[str, int] = {}


class _Restarted(Exception):
    """An actor restarted again while the driver replayed its calls."""


class _MemberLost(Exception):
    """A pool member died while serving a partition: the graph runs again."""


class _HandleActorLost(Exception):
    """A stage lost the actor it calls through a handle (``args[0]``: the ActorLost):
    the actor is restored and the graph runs again."""


class RayDriver(PlannedDriver):
    backend = "ray"

    def __init__(self, plan, progress=None, run_dir: str | None = None, resume: bool = False):
        super().__init__(plan, progress, run_dir, resume)
        self.result = RayRunResult(backend=self.backend, run_dir=str(self.run_dir))

    # ---- lifecycle

    def setup(self) -> None:
        import ray
        self.ray = ray
        # Every task and actor gets it first: the module folders, and the storage options
        # given in Python (Ray's runtime_env would show them in its dashboard and state API).
        self.worker_setup = WorkerSetup(tuple(self.ir.info.module_paths()), storage.shipped())
        self.task_setup = pickle.dumps(self.worker_setup)  # pickled once for every task (see worker._setup)
        self.fns = remote_calls()
        self.actors: dict[str, Any] = {}
        # Per actor: how it is made (op, args, kwargs), its standby (see _take_over), the
        # restarts used of its `restarts N`, and how many processes it has had.
        self.actor_specs: dict[str, tuple] = {}
        self.standbys: dict[str, Any] = {}
        self.restarts_used: dict[str, int] = {}
        self.generations: dict[str, int] = {}
        self.standby_due: set[str] = set()  # actors whose standby starts after their first answer
        self.pools: dict[str, list] = {}
        self.puts: dict[str, tuple[Any, Any]] = {}
        self.names: dict[str, str] = {}  # Ray task name -> the IR node its errors belong to
        self.remotes: dict[tuple, Any] = {}
        self.call_op: ir.ActorCall | None = None
        self.call_ref = None
        self.unsettled: dict[str, CallResult] = {}  # actor -> its call sent and not settled
        self._check_resources()

    def engine_info(self) -> dict[str, Any]:
        """Ray's CPUs, its dashboard (where it is installed and started) and version."""
        from ray._private.worker import get_dashboard_url
        try:
            url = get_dashboard_url() or None
        except Exception:  # no dashboard in this runtime
            url = None
        if url and "://" not in url:
            url = "http://" + url
        cpus = self.ray.cluster_resources().get("CPU")
        return {"workers": int(cpus) if cpus else None, "dashboard": url, "versions": {"ray": self.ray.__version__}}

    def teardown(self) -> None:
        handles = list(self.actors.values()) + list(self.standbys.values())
        for handle in handles + [h for hs in self.pools.values() for h in hs]:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:
                pass
        self.env.clear()
        self.puts.clear()

    def _check_resources(self) -> None:
        """A task asking for more than any node of the cluster has would wait forever:
        refuse before any task (RayBackend.check refused already, at the source, where the
        runtime was known before the run)."""
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        self.refuse_over_resources([Machine(r.get("CPU", 0), r.get("GPU", 0), r.get("memory", 0)) for r in nodes],
                                   "node of the Ray cluster",
                                   "lower the stage's `resources`, or run on a cluster that has them")

    # ---- blocks

    def nparts(self, node: str) -> int:
        return len(self.env[node].refs)

    def pool_size(self, pool: str) -> int:
        return len(self.pools[pool])

    def var_partitions(self, var: str) -> list[list]:
        return self.fetch(self.env[var].refs)

    def var_from_partitions(self, var: str, parts: list[list]):
        return Parts([self.ray.put(part) for part in parts])

    def end_round(self, block) -> None:
        self._settle_calls()  # a record names only calls that answered
        # This round's results are not read again (vars were rebound already): the object
        # store may drop them now rather than when the next round replaces them.
        for node in block.nodes():
            if node not in self.planner.loop_reads:
                self.env.pop(node, None)

    def materialize(self, value: Any) -> Any:
        if isinstance(value, CallResult) and not value.fetched:
            self._settle(value.op.actor.node)
        if isinstance(value, Lazy):
            if not value.fetched:
                value.value, value.fetched = self.fetch([value.ref])[0], True
                if value.observe is not None:
                    value.observe(value.value)
            return value.value
        return value

    def gather(self, node: str) -> list:
        return [x for part in self.fetch(self.env[node].refs) for x in part]

    # ---- graph steps

    def run_top(self, top) -> None:
        super().run_top(top)
        self._settle_calls()

    def run_graph(self, step: GraphStep) -> None:
        for actor in {a for node in step.nodes for a in self.planner.handles(node)} & set(self.unsettled):
            self._settle(actor)  # answered before the stages call it through handles
        attempts, restores = 0, 0
        while True:
            try:
                self._run_graph_reading_calls(step)
                self._checkpoint_handle_actors(step)
                break
            except _HandleActorLost as lost:
                # The actor restarts from the snapshot taken before this graph (Ray runs
                # its constructor again), the graph-level calls its snapshot lacks are
                # replayed, and the graph runs again: the handle calls of the lost attempt
                # died with the old process's state, so the re-run applies each once.
                restores += 1
                self._restore_for_stage(lost.args[0], restores)
            except _MemberLost as lost:
                # Ray restarts the member (or not); the graph's stages are pure, so the
                # graph runs again, up to the stage's retries or the pool's restarts.
                spec = lost.args[0]
                op, pool = self.ir.op(spec.group), self.ir.op(spec.member[0])
                allowed = 0 if op.options.effectful else max(op.options.retries, pool.restarts)
                attempts += 1
                if attempts > allowed or not self._alive(self.pools[spec.member[0]][spec.member[1]]):
                    raise self.error(spec.group, f"an actor of pool `{spec.member[0]}` died while serving "
                                                 f"partition {spec.args[1]}", op.span,
                                     "give the pool `restarts N` or the stage `retries N`") from None

    def _run_graph_reading_calls(self, step: GraphStep) -> None:
        """Run the graph, then settle the actor calls it read by reference. A call that
        found its actor restarted is recovered (replayed, its result now the driver's), and
        the graph runs again on that result; a call that failed is the error reported,
        before whatever its readers then met."""
        while True:
            try:
                self._run_graph_once(step)
            except Exception:
                if self._settle_calls():
                    continue
                raise
            if not self._settle_calls():
                return

    def _settle_calls(self) -> bool:
        """Settle every call sent and not settled; whether one had to be recovered."""
        recovered = False
        for actor in list(self.unsettled):
            recovered |= self._settle(actor)
        return recovered

    def _settle(self, actor: str) -> bool:
        """Check and confirm actor ``actor``'s unsettled call (see CallResult); whether it
        was recovered (its readers read a failed answer)."""
        call = self.unsettled.pop(actor)
        self.call_op = call.op
        try:
            try:
                result = self._actor_result(call.ref)
                recovered = isinstance(result, Gap)
            except self.ray.exceptions.RayActorError:
                recovered = True
            if recovered:
                result = self._recover(actor, call.seq, call.op.method, call.args, call.kwargs)
        finally:
            self.call_op = None
        if isinstance(result, str) and result == SKIPPED:
            raise self.error(call.node, f"call {call.seq} was not applied again after a restore", call.op.span)
        call.value, call.fetched = result, True
        if recovered:
            self.env[call.node] = result  # the stages read it again from a fresh put
        self.logs[actor].confirm(call.seq)
        self._answered(actor)
        notify(self.progress, "actor_call", actor, call.seq, call.op.method, False)
        return recovered

    def _checkpoint_handle_actors(self, step: GraphStep) -> None:
        """Snapshot every actor the graph's stages called through handles: those calls are
        in no replay log, so a later restart, or a resumed run, must find them in the
        snapshot. An actor lost before it saved lost them with it: the graph runs again."""
        for actor in sorted({a for node in step.nodes for a in self.planner.handles(node)}):
            if actor in self.actors:
                try:
                    saved = self.ray.get(self.actors[actor].checkpoint.remote())
                    lost = "restarted since the stage ran" if isinstance(saved, Gap) else None
                except self.ray.exceptions.RayActorError as exc:
                    lost = type(exc).__name__
                if lost is not None:
                    stage = next(n for n in step.nodes if actor in self.planner.handles(n))
                    raise _HandleActorLost(ActorLost(stage, None, actor, lost))
                self.logs[actor].checkpointed()
                self._answered(actor)

    def _restore_for_stage(self, lost: ActorLost, restores: int) -> None:
        """Bring back the actor a stage lost (see run_graph); errors name the stage."""
        op, stage = self.ir.op(lost.actor), self.ir.op(lost.node)
        if op.restarts == 0:
            raise self.error(lost.node, f"actor `{lost.actor}` died while the stage called it, and it has "
                                        f"`restarts 0`", stage.span,
                             f"give `{lost.actor}` `restarts N` so pipec can restore it and run the stage "
                             f"again, each call applied once")
        if restores > op.restarts + 1:  # it keeps answering, yet calls keep failing
            raise self.error(lost.node, f"actor `{lost.actor}` could not be reached from the stage "
                                        f"({lost.detail})", stage.span)
        self._replay(lost.actor, stage.span, where=lost.node)

    def _run_graph_once(self, step: GraphStep) -> None:
        lowering = StepLowering(self.ir, step, LiveContext(self), self.planner.actors)
        specs = lowering.lower()
        out: dict[str, Any] = {}  # plan key -> ObjectRef (a list of them for a split)
        self._resolved: dict[int, tuple] = {}
        self._packed: dict[int, tuple] = {}
        tasks = []
        statused: set[str] = set()  # keys whose task gives a last status return (see _gives_partitions)
        on_driver = self.folded_on_driver(step, lowering, {spec.key for spec in specs if spec.data is None})
        parted = parts_returned_by_source(specs)
        for spec in specs:
            if spec.data is not None:
                out[spec.key] = self._data(spec.data)
                continue
            if spec.key in on_driver:
                continue
            if spec.body == "take_part" and spec.args[3].key in parted:
                whole = out[spec.args[3].key]
                out[spec.key] = whole[spec.args[1]] if isinstance(whole, list) else whole
                continue
            args = self._merge_args(spec, out) if spec.body == "merge" else [self._resolve(a, out) for a in spec.args]
            status = spec.body == "pool" or spec.key in parted or _gives_partitions(spec, args[0] if args else None)
            if spec.body == "pool":  # a member's partition, then its status (see PoolMember.run)
                step_, i, seq, m, member, base, *bound = args
                ref = member.run.options(name=spec.key, num_returns=2).remote(step_, i, seq, base, *bound)
            elif spec.key in parted:  # the source's k parts as its k Ray returns, then a status
                k = parted[spec.key]
                remote = self._remote(spec, args, "source_parts", k, status=True)
                ref = remote.remote("source_parts", remote.outputs, self.task_setup, *args, k)
            else:
                remote = self._remote(spec, args, status=status)
                if isinstance(args[0], s.Segment):
                    args[0] = self._pack(args[0])
                extra = (spec.body, remote.outputs) if status else ()
                ref = remote.remote(*extra, self.task_setup, *args)
            if status:
                *data, done = ref  # the partitions stay in the object store; the driver waits on `done`
                out[spec.key] = data if len(data) > 1 else data[0]
                tasks.append((spec, [done, *data]))
                statused.add(spec.key)
            else:
                out[spec.key] = ref
                tasks.append((spec, ref))
            self.names[spec.key] = spec.group
        values = self._wait(tasks)
        waited = {spec.key: value for (spec, _), value in zip(tasks, values) if spec.key not in statused}
        folded = self._fold(on_driver, out, waited) if on_driver else {}
        for node in step.exports:
            if node in lowering.parts:
                self.env[node] = Parts([self._resolve(r, out) for r in lowering.parts[node]])
            elif node in folded:
                self.env[node] = folded[node]
            elif node in lowering.values:
                self.env[node] = Lazy(self._resolve(lowering.values[node], out), observe=partial(self._observe, node))

    def _merge_args(self, spec, out: dict) -> list:
        """A merge task's arguments: the segment, its index and the slots ``sides`` name
        as they are (plain ints, 1,024 of them at 1,024 partitions), then each bound
        argument, those slots' being output ``index`` of a split (see :meth:`_bucket`)."""
        segment, index, sides, *bound = spec.args
        slots = {slot for side in sides for slot in side}
        return [self._resolve(segment, out), index, sides,
                *(self._bucket(arg, out, index) if slot in slots else self._resolve(arg, out)
                  for slot, arg in enumerate(bound))]

    def _bucket(self, arg, out: dict, index: int):
        """Output ``index`` (a bucket or a merge group) of the split that ``arg`` reads, or
        the one ObjectRef of a split into one bucket. Taken straight from the split's
        ObjectRefs: a 1,024-way shuffle's merges read 16,384 of them, and resolving each
        to its split's list of 16 first cost 0.2 s a run."""
        held = out.get(arg.key) if isinstance(arg, Ref) else None
        if isinstance(held, list) and arg.output is not None:
            return held[arg.output + index] if arg.buckets is not None else held[arg.output]
        value = self._resolve(arg, out)
        return value[index] if isinstance(value, list) else value

    def _fold(self, on_driver: dict, out: dict, waited: dict) -> dict[str, Any]:
        """The values of ``on_driver`` folded here from their partials (see
        :meth:`PlannedDriver.folded_on_driver`), ``waited`` holding the tasks' values as
        :meth:`_wait` fetched them; node -> value."""
        wanted = list(dict.fromkeys((dep.key, dep.output) for spec in on_driver.values() for dep in spec.deps))
        # A task's one ObjectRef was fetched by the wait; one output of several is fetched here.
        fetch = [(key, output) for key, output in wanted if key not in waited or isinstance(out[key], list)]
        partials = {(key, output): waited[key] for key, output in wanted if (key, output) not in fetch}
        if fetch:
            refs = [out[key] if output is None else s.pick(out[key], output, None) for key, output in fetch]
            partials.update(zip(fetch, self.fetch(refs)))
        return self.fold_on_driver(on_driver, lambda dep: partials[dep.key, dep.output])

    def _observe(self, node: str, value) -> None:
        """The driver fetched value ``node``: its size decides whether later graphs fold it
        here (see :meth:`PlannedDriver.folded_on_driver`)."""
        self.observed(node, pickled_size(value, FOLD_UPTO))

    def _remote(self, spec, args, body: str | None = None, returns: int = 1, status: bool = False):
        """The Ray remote function for a task, with its options: the function of its
        ``body`` (the spec's own unless given) with ``returns`` Ray returns at least; with
        ``status``, ``worker.with_status`` around it, one return more. Its ``outputs``
        attribute is the body's own number of returns."""
        options = task_options(self.ir, spec, args[0] if args else None)
        if returns > 1:
            options["num_returns"] = returns
        outputs = options.get("num_returns", 1)
        if status:
            options["num_returns"] = outputs + 1
        body = "with_status" if status else body or spec.body
        sig = (body, tuple(sorted(options.items())))
        remote = self.remotes.get(sig)
        if remote is None:
            remote = self.remotes[sig] = _Remote(self.fns.bodies[body].options(**options), outputs)
        return remote

    def _pack(self, segment: s.Segment) -> bytes:
        """A segment pickled once for all its tasks (Ray pickling it per task costs more
        per submit); workers unpickle each blob once."""
        done = self._packed.get(id(segment))
        if done is None or done[0] is not segment:
            done = self._packed[id(segment)] = (segment, self.ray.cloudpickle.dumps(segment))
        return done[1]

    def _data(self, node: str):
        """A value the driver ships to tasks: put in the object store once per value."""
        held = self.env[node]
        if isinstance(held, Lazy):
            return held.ref
        cached = self.puts.get(node)
        if cached is None or cached[0] is not held:
            try:
                cached = self.puts[node] = (held, self.ray.put(held))
            except Exception as exc:
                op = self.ir.op(node)
                raise self.error(node, f"a value cannot be put in Ray's object store ({type(exc).__name__}: "
                                       f"{exc})", op.span, "use plain data (numbers, strings, lists, numpy arrays)") \
                    from None
        return cached[1]

    def _resolve(self, arg, out: dict):
        """A task argument as Ray gets it: refs become ObjectRefs or actor handles."""
        if isinstance(arg, Ref):
            if arg.key not in out:
                return self._held(arg)
            # One output of a task with several is one of its ObjectRefs (Ray returns); a
            # task with one output (a grouped merge's group of one) has one ObjectRef.
            held = out[arg.key]
            return held if arg.output is None or not isinstance(held, list) else s.pick(held, arg.output,
                                                                                         arg.buckets)
        if isinstance(arg, Arg):
            value = self.value(arg.operand)
            return storage.absolute(value) if arg.path and isinstance(value, str) else value  # URLs as they are
        if isinstance(arg, Rounds):
            return tuple(self.round_index.get(loop, 0) for loop in arg.loops)
        if isinstance(arg, Seq):
            return arg.offset  # a Ray actor runs one caller's calls in submission order
        if is_dataclass(arg) and not isinstance(arg, type):
            # A step of the physical plan with this run's values (once per submission:
            # every partition's task shares the same segment object).
            done = self._resolved.get(id(arg))
            if done is None or done[0] is not arg:
                changes = {f.name: self._resolve(getattr(arg, f.name), out) for f in fields(arg)}
                done = self._resolved[id(arg)] = (arg, replace(arg, **changes))
            return done[1]
        if isinstance(arg, tuple):
            return tuple(self._resolve(a, out) for a in arg)
        if isinstance(arg, list):
            return [self._resolve(a, out) for a in arg]
        if isinstance(arg, dict):
            return {k: self._resolve(v, out) for k, v in arg.items()}
        return arg

    def _held(self, ref: Ref):
        """The ObjectRef (or actor handle) of a key kept from an earlier graph."""
        if ref.node in self.actors:
            return self.actors[ref.node]
        if ref.node in self.pools:
            return self.pools[ref.node][ref.part]
        held = self.env[ref.node]
        if isinstance(held, Parts):
            return held.refs[ref.part]
        if isinstance(held, Lazy):
            return held.ref
        raise AssertionError(f"{ref.key} is not in the object store")

    def _wait(self, tasks: list) -> list:
        """Wait for a graph's tasks (``(spec, its ObjectRef or list of them)``) and give the
        value of each one's (first) ObjectRef, in order; the failure reported is the one
        the reference backend meets first (earliest stage in program order, then lowest
        partition)."""
        if not tasks:
            return []
        ray = self.ray
        returns = [ref for _, ref in tasks]  # a task's ObjectRef, or its list of them
        tasks = [(spec, ref[0] if isinstance(ref, list) else ref) for spec, ref in tasks]
        refs = [ref for _, ref in tasks]
        start = time.perf_counter()
        if not isinstance(self.progress, NoProgress):  # watched: one task at a time (else the get waits)
            groups: dict[str, int] = {}
            for spec, _ in tasks:
                groups[spec.group] = groups.get(spec.group, 0) + 1
            for group, n in groups.items():
                self.progress.stage(group, n)
            group_of = {ref: spec.group for spec, ref in tasks}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, fetch_local=False)
                for ref in ready:
                    self.progress.advance(group_of[ref])
        try:
            values = ray.get(refs)
        except Exception:
            values = None
        seconds = time.perf_counter() - start
        for spec, _ in tasks:
            self.result.timings[spec.group] = self.result.timings.get(spec.group, 0.0) + seconds / len(tasks)
        if values is not None:
            return values
        failures = []
        order = {node: i for i, node in enumerate(self.ir)}
        for (spec, ref), every in zip(tasks, returns):
            try:
                ray.get(ref)
            except Exception as exc:
                _fetch_errors(ray, every[1:] if isinstance(every, list) else ())
                if isinstance(exc, ray.exceptions.RayActorError) and spec.member is not None:
                    raise _MemberLost(spec) from None
                failures.append((spec, exc))
        for _, exc in failures:
            if isinstance(getattr(exc, "cause", None), ActorLost):
                raise _HandleActorLost(exc.cause) from None

        def rank(item):
            spec, exc = item
            cause = getattr(exc, "cause", None)
            real = isinstance(cause, StageFailure)
            where = getattr(cause, "node", None) or spec.group
            partition = getattr(cause, "partition", None)
            return (not real, order.get(where.split(".")[0], len(order)),
                    partition if partition is not None else 1 << 30)
        spec, exc = min(failures, key=rank)
        raise self.task_error(exc, spec) from None

    def fetch(self, refs: list) -> list:
        """The values of ``refs``; a failure names the stage that failed."""
        try:
            return self.ray.get(refs)
        except Exception as exc:
            raise self.task_error(exc) from None

    def task_error(self, exc: BaseException, spec=None) -> PipelineRuntimeError:
        """A Ray failure as a pipec error naming the stage (and partition) that failed
        (``spec``: the task's, when known; else the pipeline is named, never the engine)."""
        ray = self.ray
        where = spec.group if spec is not None and spec.group in self.ir else self.ir.info.name
        span = self.ir.op(where).span if where in self.ir else None
        cause = getattr(exc, "cause", None)
        failure = cause if isinstance(cause, StageFailure) else exc if isinstance(exc, StageFailure) else None
        if failure is not None:
            err = self.stage_failed(failure)
            call = self.call_op
            if call is not None and failure.node == f"{call.actor.node}.{call.method}":
                return self.error(err.where, err.message, call.span, err.hint)  # the call's line
            return err
        if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
            # Failed outside the user's function: Ray could not pickle what the task returned.
            # Ray's message starts with the task's name (ours: the segment's), in colour.
            found = re.search(r"ray::([^\s(]+)\(", re.sub(r"\x1b\[[0-9;]*m", "", str(exc)))
            owner = self.names.get(found.group(1)) if found else None
            span = self.ir.op(owner).span if owner in self.ir else span
            if "pickle" in str(cause).lower():
                return self.error(owner or where, f"the output cannot be pickled, so it cannot cross to another "
                                                  f"process ({type(cause).__name__}: {cause})", span,
                                  "return plain data (numbers, strings, lists, dicts, numpy arrays)")
            return self.error(owner or where, f"{type(cause).__name__}: {cause}", span)
        if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
                            ray.exceptions.OwnerDiedError, ray.exceptions.NodeDiedError)):
            return self._lost_worker_error(exc, spec)
        if isinstance(exc, ray.exceptions.OutOfMemoryError):
            return self.error(where, "a task was killed for running out of memory", span,
                              "use more partitions, or ask for `resources { memory ... }`")
        return self.error(where, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", span)

    def _lost_worker_error(self, exc: BaseException, spec) -> PipelineRuntimeError:
        """A task lost with its worker more often than Ray re-runs it, or never re-run since
        its stage is effectful. Names the stage; suggests nothing that would re-run an
        effectful stage (`retries` is about exceptions user code raises, not lost workers)."""
        owner = spec.group if spec is not None and spec.group in self.ir else None
        if owner is None:  # an object lost after its task finished: Ray rebuilds it by lineage
            return self.error(self.ir.info.name, f"a result was lost with its worker and could not be rebuilt "
                                                 f"({type(exc).__name__})", None)
        op = self.ir.op(owner)
        if getattr(getattr(op, "options", None), "effectful", False):
            return self.error(owner, "a worker running the stage was lost, and an `effectful` stage is never "
                                     "run again", op.span,
                              "move the effect into an actor call or a sink, then drop `effectful`")
        tries = max(spec.retries, LOST_WORKER_RETRIES) + 1
        return self.error(owner, f"the stage's worker was lost {tries} times in a row ({type(exc).__name__})",
                          op.span)

    # ---- actors

    def start_actor(self, node: str, op: ir.Actor):
        return self._create_actor(node, op, [self.value(a) for a in op.args],
                                  {k: self.value(v) for k, v in op.kwargs.items()})

    def _create_actor(self, node: str, op: ir.Actor, args: list, kwargs: dict):
        # Every actor has a snapshot file: periodic checkpoints go there, and so do the
        # snapshots taken after graphs that call it through handles (what a replacement,
        # and a resumed run, restore those calls from).
        self.actor_specs[node] = (op, args, kwargs)
        self.restarts_used[node], self.generations[node] = 0, 0
        handle = self.actors[node] = self._actor_process(node)
        self.result.recoveries[node] = 0
        # Its standby starts once the actor has answered a call: on two cores, starting
        # both processes together delayed the actor's first answer, which the run waits for.
        self.standby_due.add(node)
        return handle

    def _actor_process(self, node: str, standby: bool = False):
        """A new Ray actor for pipec actor ``node``: the first is named
        ``pipec.<pipeline>.<actor>.<run>``, later ones (standbys) ``...<actor>~<n>...``."""
        op, args, kwargs = self.actor_specs[node]
        n = self.generations[node]
        self.generations[node] = n + 1
        name = f"pipec.{self.ir.info.name}.{node}{f'~{n}' if n else ''}.{self.run_id}"
        return self.fns.actor.options(**_actor_options(op, name)).remote(
            self.worker_setup, node, op.cls.module, op.cls.attr, args, kwargs, op.checkpoint_every,
            self.snapshot_path(node), standby)

    def _answered(self, actor: str) -> None:
        """Actor ``actor`` answered a call: its standby starts now if it is due."""
        if actor in self.standby_due:
            self.standby_due.discard(actor)
            self._keep_standby(actor)

    def _keep_standby(self, node: str) -> None:
        """Start a standby for actor ``node`` unless it has one or no restart is left:
        Ray starts its process while the run goes on."""
        op = self.actor_specs[node][0]
        if node not in self.standbys and self.restarts_used[node] < op.restarts:
            self.standbys[node] = self._actor_process(node, standby=True)

    def _take_over(self, actor: str, span, where: str):
        """Actor ``actor``'s process is gone (or unreachable): the old Ray actor is killed
        for good (were it only unreachable, it is never called again, and Ray does not
        restart it), and its standby becomes the actor (a new process is started when
        there is none); it builds its host from the last snapshot when the driver first
        asks it what it holds. Counts against `restarts N`."""
        op = self.actor_specs[actor][0]
        if self.restarts_used[actor] >= op.restarts:
            raise self.error(where, f"actor `{actor}` died and cannot be restarted again (`restarts "
                                    f"{op.restarts}` used up)", span)
        self.restarts_used[actor] += 1
        old = self.actors[actor]
        try:
            self.ray.kill(old, no_restart=True)
        except Exception:
            pass  # gone already
        handle = self.standbys.pop(actor, None) or self._actor_process(actor, standby=True)
        self.actors[actor] = handle
        if self.env.get(actor) is old:
            self.env[actor] = handle
        return handle

    def start_pool(self, node: str, op: ir.Actor, size: int):
        return self._create_pool(node, op, size, [self.value(a) for a in op.args],
                                 {k: self.value(v) for k, v in op.kwargs.items()})

    def _create_pool(self, node: str, op: ir.Actor, size: int, args: list, kwargs: dict):
        members = []
        for i in range(size):
            options = _pool_options(op, f"pipec.{self.ir.info.name}.{node}.{i}.{self.run_id}")
            members.append(self.fns.pool.options(**options).remote(
                self.worker_setup, node, op.cls.module, op.cls.attr, args, kwargs, self.each_path(node)))
        self.pools[node] = members
        return members

    def _alive(self, handle) -> bool:
        """Whether the actor answers, waiting while Ray restarts it (a call to a restarting
        actor fails at once with ActorUnavailableError: that means "not yet")."""
        ray = self.ray
        deadline = time.monotonic() + ACTOR_RESTART_WAIT
        while True:
            try:
                ray.get(handle.__ray_ready__.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return True
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            except Exception:
                return False

    def op_actor_call(self, node: str, op: ir.ActorCall):
        actor = op.actor.node
        if actor in self.unsettled:
            self._settle(actor)  # confirmed in program order
        if actor in self.actors and self.read_by_stages_only(node):
            args = [self.value(a) for a in op.args]
            kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
            seq = self.logs[actor].record(op.method, args, kwargs)
            # A Ray actor runs one caller's calls in the order they were sent: program order.
            call = CallResult(self.actors[actor].call.remote(seq, op.method, args, kwargs), node, op, seq, args,
                              kwargs)
            self.unsettled[actor] = call
            return call
        self.call_op, self.call_ref = op, None
        try:
            result = super().op_actor_call(node, op)
        finally:
            self.call_op = None
        if self.call_ref is not None:
            # The result already sits in Ray's object store: a stage binding it reads it
            # from there, with no second put.
            self.puts[node] = (result, self.call_ref)
        return result

    def call_pool(self, pool: str, seq: int, method: str, args: list, kwargs: dict) -> list:
        ray, answers = self.ray, []
        for m, member in enumerate(self.pools[pool]):
            while True:
                try:
                    answers.append(ray.get(member.each.remote(seq, method, args, kwargs)))
                    break
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
                    # Ray restarts the member, which replays the calls to every member
                    # (this one included) and answers it from that replay.
                    if not self._alive(member):
                        raise self.error(pool, f"member {m} of actor pool `{pool}` died and cannot be restarted "
                                               f"(`restarts {self.ir.op(pool).restarts}`)",
                                         self.ir.op(pool).span, "give the pool `restarts N`") from None
        return answers

    def flush_actor(self, actor: str) -> None:
        handle = self.actors.get(actor)
        if handle is None:
            return
        try:
            self.ray.get(handle.flush.remote())
        except self.ray.exceptions.RayActorError:
            pass  # lost since its last call: no write of it is in flight any more
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise cause if isinstance(cause, OSError) else exc

    def call_actor(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        ray = self.ray
        handle = self.actors[actor]
        ref = handle.call.remote(seq, method, args, kwargs)
        try:
            result = self._actor_result(ref)
        except ray.exceptions.RayActorError:
            return self._recover(actor, seq, method, args, kwargs)
        if isinstance(result, Gap):  # restarted while idle: calls since its snapshot are missing
            return self._recover(actor, seq, method, args, kwargs)
        self.call_ref = ref
        self._answered(actor)
        return result

    def _actor_result(self, ref, timeout: float | None = None):
        try:
            return self.ray.get(ref, timeout=timeout)
        except self.ray.exceptions.RayTaskError as exc:
            raise self.task_error(exc) from None

    def _recover(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        """A graph-level call found the actor's process gone: restore it (see _replay), and
        answer call ``seq`` from the replay, or from the host when it was applied before
        the crash (the host kept its result)."""
        span = self.call_op.span if self.call_op is not None else self.ir.op(actor).span
        results = self._replay(actor, span)
        if seq in results:
            return results[seq]
        return self._actor_result(self.actors[actor].call.remote(seq, method, args, kwargs))

    def _replay(self, actor: str, span, where: str | None = None) -> dict[int, Any]:
        """The actor lost its process: its standby takes over (see _take_over) and restores
        the last snapshot, the driver replays, in order, every logged call it has not
        applied, and lets calls through handles in again; a new standby is then started
        for the next loss. Gives the replayed calls' results by number. Errors name
        ``where`` (a stage that lost it), else the actor."""
        ray = self.ray
        op = self.ir.op(actor)
        where = where or actor
        if op.restarts == 0:
            raise self.error(where, f"actor `{actor}`'s process died, and it has `restarts 0`", span,
                             "give it `restarts N` (and `checkpoint every N calls`) so pipec can restore it "
                             "and replay its calls")
        log = self.logs[actor]
        deadline = time.monotonic() + ACTOR_RESTART_WAIT
        handle = self.actors[actor]
        # Asked first: a process Ray knows is gone fails at once (ActorDiedError), and one
        # that answers with a Gap only needs the calls it lacks.
        lost = False
        while True:
            if lost:
                handle = self._take_over(actor, span, where)
            lost = False
            try:
                applied = self._actor_result(handle.applied.remote(), max(0.1, deadline - time.monotonic()))
                results = {}
                for q, m, a, k in log.since(applied):
                    r = self._actor_result(handle.call.remote(q, m, a, k))
                    if isinstance(r, Gap):
                        raise _Restarted  # restored from an older snapshot meanwhile
                    results[q] = r
                ray.get(handle.recovered.remote())
                self.result.recoveries[actor] += 1
                self.standby_due.discard(actor)
                self._keep_standby(actor)
                notify(self.progress, "fault", f"actor `{actor}` lost its process; pipec restored it in a standby "
                                               f"process from its snapshot and replayed its calls after call "
                                               f"{applied}")
                return results
            except ray.exceptions.GetTimeoutError:
                raise self.error(where, f"actor `{actor}` did not come back within {ACTOR_RESTART_WAIT:g} s of "
                                        f"a crash", span) from None
            except ray.exceptions.RayActorError:
                lost = True  # this process is gone (the one that took over, too, may be lost)
            except _Restarted:
                time.sleep(0.05)
            if time.monotonic() > deadline:
                raise self.error(where, f"actor `{actor}` kept failing while pipec replayed its calls",
                                 span) from None
