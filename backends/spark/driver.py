"""The Spark driver: the shared driver loop, with every graph step of the physical plan
translated into RDD operations.

The planner's tasks come in groups that share one segment (a key per partition); on
Spark a group is one RDD, and what each task body becomes is a small table:

* ``segment``: ``mapPartitionsWithIndex`` over the RDD holding its input partitions (or,
  when the head makes the items, over ``parallelize(range(k), k)``), one
  :class:`worker.Pass` calling the shared interpreter's ``run_segment``. Spark pipelines
  consecutive Python passes, so a source, its fused stages and the map side of the next
  shuffle or action read each partition once;
* a segment ending in a ``Split``: its buckets keyed by destination, ``partitionBy(k)``
  (the destination is the shared stable key hash), then the ``merge`` group's pass;
* ``finish`` (a reduction's fixed fan-in combine tree, a count's total, a top's final
  merge), ``source_call`` and ``line_index``: on the driver, over what one job collected
  (the partials, in partition order) or reads itself;
* ``take_part``: the driver's blocks, ``parallelize``-d one per partition;
* ``pool``: the stage runs inside the task, partition i served by this Python worker's
  replica of member ``i % size`` (see :class:`worker.Pool`); a pool-wide call is one job
  of ``size`` tasks, task m answering for member m;
* a value a task reads (a slot): a broadcast, made once while the value stays the same
  and dropped when its round ends.

Nothing runs until the driver needs a value or the items of a collection: a graph's
values are one job each, a collection stays an RDD. A collection read by every round of
a loop it is made outside of is cached once; a collection loop variable comes to the
driver at the end of each round (its lineage stays one round long, and a record for
``--resume`` holds it). Actors live in the driver (the shared ``VersionedHost``).
"""

from __future__ import annotations

import math
import pickle
import re
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from py4j.protocol import Py4JError

from pipec.compiler import ir
from pipec.dsl.diagnostics import PipelineRuntimeError
from pipec.backends.base import NoProgress
from pipec.backends.physical import steps as s
from pipec.backends.physical.planner import GraphStep, Ref, StepLowering, fn_ref, loops_of
from pipec.backends.runtime import semantics, sources, storage
from pipec.backends.runtime.actors import VersionedHost
from pipec.backends.runtime.driver import LiveContext, PlannedDriver
from pipec.backends.runtime.interpreter import StageFailure, UnknownStep, failure, run_finisher
from pipec.backends.runtime.tasks import resolve
from pipec.backends.spark import session as sessions
from pipec.backends.spark import worker
from pipec.backends.spark.plan import held_by_spark, loop_invariant


@dataclass
class Rdd:
    """A collection as the driver holds it: an RDD of its items and its partition count;
    ``data`` when the driver holds the partitions too (sent by it, or brought back)."""

    rdd: Any
    parts: int
    data: list | None = None
    # Whether ``rdd`` is made from ``data`` (from_driver), not from a lineage that may read
    # a round's broadcasts: only such an RDD outlives the round that brought it back.
    sent: bool = False
    # The actor pools whose members its lineage calls: Spark computes an RDD again for
    # every action, so one still to be read is brought back before a pool-wide call of
    # one of them changes the members (see SparkDriver.call_pool).
    pools: frozenset = frozenset()


# The plan's task bodies (physical.planner.BODIES) on Spark: the tasks of one segment (or
# pool stage, or callable source's parts) are the partitions of one RDD; the others run
# on the driver.
RDD_BODIES = ("segment", "merge", "pool", "take_part")
DRIVER_BODIES = ("finish", "source_call", "line_index")


class _Graph:
    """One graph step's task specs as RDDs and driver-side values, built on demand."""

    def __init__(self, driver: "SparkDriver", specs: list):
        self.driver = driver
        self.specs = {spec.key: spec for spec in specs}
        self.groups: dict[int, list] = {}  # a segment (or pool step) -> its tasks, by partition
        self.place: dict[str, tuple[int, int]] = {}  # task key -> (group, partition)
        for spec in specs:
            if spec.data is None and spec.body not in RDD_BODIES + DRIVER_BODIES:
                raise UnknownStep(f"the spark backend has no translation for task body `{spec.body}`")
            if spec.body in RDD_BODIES:
                anchor = spec.args[3] if spec.body == "take_part" else spec.args[0]
                group = self.groups.setdefault(id(anchor), [])
                self.place[spec.key] = (id(anchor), len(group))
                group.append(spec)
        self.rdds: dict[tuple[int, int], Any] = {}
        self.lineage: dict[int, frozenset] = {}  # a group -> the pools its RDD's lineage calls
        self.held: dict[int, Rdd] = {}  # groups whose partitions the driver holds too
        self.values: dict[str, Any] = {}
        self.collected: dict[int, list] = {}

    # ---- collections

    def collection(self, refs: list[Ref]) -> Rdd:
        """The collection whose partitions are ``refs``, as the driver keeps it (with the
        partitions too when they are the driver's blocks: no job to see them again)."""
        rdd = self.rdd_of(refs)
        groups = {self.place[ref.key][0] if ref.key in self.place else None for ref in refs}
        if len(groups) == 1 and (group := groups.pop()) in self.held and len(refs) == len(self.groups[group]):
            return self.held[group]
        return Rdd(rdd, len(refs), pools=self.pools_of(refs))

    def pools_of(self, refs) -> frozenset:
        """The actor pools the lineage of the partitions ``refs`` calls (their RDDs built)."""
        out: frozenset = frozenset()
        for ref in refs:
            if ref is None:
                continue
            if ref.key in self.place:
                out |= self.lineage.get(self.place[ref.key][0], frozenset())
            elif isinstance(self.driver.env.get(ref.node), Rdd):
                out |= self.driver.env[ref.node].pools
        return out

    def rdd_of(self, refs: list[Ref]):
        """The RDD whose partitions are ``refs``, in order: one group's or held collection's
        RDD, or the union of several (a ``union`` of collections)."""
        runs: list[list] = []  # [source, partitions seen]
        for ref in refs:
            source = ("group", self.place[ref.key][0]) if ref.key in self.place else ("held", ref.node)
            if runs and runs[-1][0] == source:
                runs[-1][1] += 1
            else:
                runs.append([source, 1])
        rdds = [self.group_rdd(key) if kind == "group" else self.driver.env[key].rdd for (kind, key), _ in runs]
        if not rdds:
            return self.driver.sc.emptyRDD()
        return rdds[0] if len(rdds) == 1 else self.driver.sc.union(rdds)

    def group_rdd(self, group: int, tag: int = 0):
        """The RDD of a group of tasks (a split's keyed by ``tag``, the side that reads it)."""
        built = self.rdds.get((group, tag))
        if built is None:
            built = self.rdds[(group, tag)] = self._build(self.groups[group], tag)
        return built

    def _build(self, specs: list, tag: int):
        driver, first = self.driver, specs[0]
        if first.body == "take_part":
            items = self.value(first.args[3])
            held = self.held[id(first.args[3])] = driver.from_driver(first.group, semantics.split(items, len(specs)))
            return held.rdd
        if first.body == "pool":
            step = first.args[0]
            segment = s.Segment(step.node, s.Input(step.node), (step,), None, (step.node,))
            pools = (driver.env[step.pool],)
            bases = [spec.args[5] for spec in specs]
            source, refs = self.rdd_of(bases), first.args[6:]
        elif first.body == "merge":
            segment, sides, refs = first.args[0], first.args[2], first.args[3:]
            pools = ()
            mapped = [self._split_side(refs, slots, side) for side, slots in enumerate(sides)]
            source = (mapped[0] if len(mapped) == 1 else driver.sc.union(mapped)).partitionBy(
                len(specs), worker.destination)
            bases = [refs[i] for side in sides for i in side]
        else:
            segment, refs = first.args[0], first.args[3:]
            pools = tuple(driver.env[e.pool] for e in segment.steps if e.pool is not None)
            bases = [spec.args[2] for spec in specs]
            source = self.rdd_of(bases) if bases[0] is not None else driver.indices(len(specs))
        split_slots = set(x for side in first.args[2] for x in side) if first.body == "merge" else set()
        slots = tuple(None if i in split_slots else driver.broadcast(ref, self.value(ref))
                      for i, ref in enumerate(refs))
        task = worker.Pass(driver.context, driver.filled(segment), slots, pools, tag)
        self.lineage[id(first.args[0])] = frozenset(p.node for p in pools) | self.pools_of(bases)
        rdd = source.mapPartitionsWithIndex(task)
        rdd.setName(f"{first.group}: {first.label}")
        if first.resources and not driver.session.local:
            driver.with_resources(first.group, rdd, first.resources)
        return rdd

    def _split_side(self, refs: tuple, slots: tuple, side: int):
        """The split outputs a merge reads on ``side``, keyed for the shuffle."""
        groups = list(dict.fromkeys(self.place[refs[i].key][0] for i in slots))
        rdds = [self.group_rdd(group, side) for group in groups]
        return rdds[0] if len(rdds) == 1 else self.driver.sc.union(rdds)

    # ---- values

    def value(self, ref: Ref):
        """The value of ``ref``: made in this graph (a job's partials, combined on the
        driver), shipped from the driver, or kept from an earlier graph."""
        spec = self.specs.get(ref.key)
        if spec is None or spec.data is not None:
            return self.driver.materialize(self.driver.env[ref.node])
        if ref.key in self.place:  # one partition's partial: the job collects them all
            group, i = self.place[ref.key]
            if group not in self.collected:
                self.collected[group] = self.driver.job(spec.group, self.group_rdd(group), len(self.groups[group]))
            return self.collected[group][i]
        if ref.key not in self.values:
            self.values[ref.key] = self._on_driver(spec)
        return self.values[ref.key]

    def _on_driver(self, spec):
        """A task the driver runs itself: a finisher, a callable source, a line index.
        Its time counts for its operation (the jobs it waits on count for theirs)."""
        partials = [self.value(r) for r in spec.args[1:]] if spec.body == "finish" else None
        start = time.perf_counter()
        try:
            return self._run_on_driver(spec, partials)
        finally:
            timings = self.driver.result.timings
            timings[spec.group] = timings.get(spec.group, 0.0) + time.perf_counter() - start

    def _run_on_driver(self, spec, partials: list | None):
        driver = self.driver
        try:
            if spec.body == "finish":
                return run_finisher(driver.filled(spec.args[0]), partials)
            if spec.body == "source_call":
                where, fn, args, kwargs = driver.filled(spec.args)
                try:
                    return list(resolve(fn.module, fn.attr)(*args, **kwargs))
                except Exception as exc:
                    raise failure(where, None, exc) from None
            if spec.body == "line_index":
                where, path = driver.filled(spec.args)
                try:
                    return sources.line_index(path)
                except OSError as exc:
                    raise StageFailure(where, None, "plain", f"cannot read {path}: {exc.strerror or exc}") from None
        except StageFailure as exc:
            raise driver.stage_failed(exc) from None
        raise UnknownStep(f"the spark backend has no translation for task body `{spec.body}`")


class SparkDriver(PlannedDriver):
    backend = "spark"

    def __init__(self, plan, progress=None, run_dir: str | None = None, resume: bool = False):
        super().__init__(plan, progress, run_dir, resume)
        self.cached = loop_invariant(plan.ir)
        self.order = {node: i for i, node in enumerate(plan.ir)}
        self._scopes: list[dict] = [{"cached": [], "broadcasts": []}]
        self._broadcasts: dict[str, tuple[Any, Any]] = {}
        self.hosts: dict[str, VersionedHost] = {}
        self.pool_sizes: dict[str, int] = {}
        self.session: sessions.Session | None = None  # given by SparkPlan.engine
        self._calling: ir.SpanModel | None = None  # the pool-wide call being made
        self._jobs = 0

    # ---- lifecycle

    def run(self):
        try:
            return super().run()
        except Py4JError as exc:  # Spark itself went away (a job's failure is reported by job())
            log = self.session.log if self.session else None
            raise PipelineRuntimeError(self.ir.info.name, f"Spark stopped under the pipeline: {_first_line(exc)}",
                                       hint=f"Spark's log is {log}" if log else None) from None

    def setup(self) -> None:
        """Ship the user's modules to the session :meth:`SparkPlan.engine` holds (the
        driver starts and stops no SparkContext itself)."""
        if self.session is None:
            raise RuntimeError("SparkDriver runs inside SparkPlan.engine, which gives it its session")
        self.sc = self.session.sc
        archive = None if self.session.local else sessions.ship_modules(self.sc, self.ir)
        roots = () if archive else tuple(self.ir.info.module_paths())
        self.context = worker.Context(self.run_id, roots, archive, storage.shipped())

    def engine_info(self) -> dict[str, Any]:
        """Spark's cores, its UI (when asked for: ``spark.ui.enabled``) and version."""
        sc = self.sc
        return {"workers": sc.defaultParallelism, "dashboard": sc.uiWebUrl or None,
                "versions": {"spark": sc.version}}

    def teardown(self) -> None:
        for host in self.hosts.values():
            try:
                host.close()  # a failed run too: no snapshot is left half-written
            except OSError:
                pass
        while self._scopes:
            self._close_scope()  # while the session is up: SparkPlan.engine stops it after the run

    # ---- scopes: what a round caches and broadcasts, dropped when it ends

    def start_round(self, block) -> None:
        self._scopes.append({"cached": [], "broadcasts": []})

    def close_round(self, block) -> None:
        self._close_scope()

    def _close_scope(self) -> None:
        scope = self._scopes.pop()
        for rdd in scope["cached"]:
            try:
                rdd.unpersist()
            except Exception:
                pass
        for key in scope["broadcasts"]:
            entry = self._broadcasts.pop(key, None)
            if entry is not None:
                try:
                    entry[1].destroy()
                except Exception:
                    pass

    def _scope_for(self, node: str) -> dict:
        """Where something derived from ``node`` lives: the run, or the current round."""
        op = self.ir.op(node)
        if op.loop is None and not isinstance(op, (ir.Var, ir.Rebind)):
            return self._scopes[0]
        return self._scopes[-1]

    # ---- graph steps

    def run_graph(self, step: GraphStep) -> None:
        lowering = StepLowering(self.ir, step, LiveContext(self), self.planner.actors)
        graph = _Graph(self, lowering.lower())
        for node in step.exports:
            if node in lowering.parts:
                refs = lowering.parts[node]
                held = self.env[node] = graph.collection(refs)
                made = [graph.specs[ref.key] for ref in refs if ref.key in graph.place]
                if node in self.cached and made and not any(held_by_spark(spec) for spec in made):
                    held.rdd.cache()
                    self._scope_for(node)["cached"].append(held.rdd)
        for node in step.exports:
            if node in lowering.values:
                self.env[node] = graph.value(lowering.values[node])

    def nparts(self, node: str) -> int:
        return self.env[node].parts

    def pool_size(self, pool: str) -> int:
        return self.pool_sizes[pool]

    def indices(self, k: int):
        """An RDD of ``k`` partitions holding their own index: for heads that make the items."""
        return self.sc.parallelize(range(k), k) if k else self.sc.emptyRDD()

    def from_driver(self, node: str, parts: list[list]) -> Rdd:
        """A collection whose partitions the driver holds: one block per partition, opened
        in the pass that reads it (Spark pipelines the two)."""
        if not parts:
            return Rdd(self.sc.emptyRDD(), 0, [])
        try:
            rdd = self.sc.parallelize(parts, len(parts)).flatMap(worker.unblock, preservesPartitioning=True)
        except Exception as exc:
            raise self._unpicklable(node, exc) from None
        return Rdd(rdd, len(parts), parts, sent=True)

    def broadcast(self, ref: Ref, value):
        """The broadcast of the value of ``ref``, made once while the value stays the
        same, and dropped when the round of its node ends."""
        entry = self._broadcasts.get(ref.key)
        if entry is not None and entry[0] is value:
            return entry[1]
        try:
            bc = self.sc.broadcast(value)
        except Exception as exc:
            raise self._unpicklable(ref.node, exc) from None
        if entry is not None:  # the value changed (a new round): free the old copies
            entry[1].unpersist()
        self._broadcasts[ref.key] = (value, bc)
        scope = self._scope_for(ref.node)
        if ref.key not in scope["broadcasts"]:
            scope["broadcasts"].append(ref.key)
        return bc

    def with_resources(self, node: str, rdd, asked: dict[str, float]) -> None:
        """Run ``rdd``'s stage under a stage-level resource profile, where the cluster
        supports one (``pipec check`` warned that local masters do not)."""
        from pyspark.resource import ExecutorResourceRequests, ResourceProfileBuilder, TaskResourceRequests
        task = TaskResourceRequests()
        if "CPU" in asked:
            task.cpus(max(1, math.ceil(asked["CPU"])))
        if "GPU" in asked:
            task.resource("gpu", asked["GPU"])
        builder = ResourceProfileBuilder().require(task)
        if "MEMORY" in asked:
            builder.require(ExecutorResourceRequests().memory(f"{max(1, int(asked['MEMORY']) // 2**20)}m"))
        try:
            rdd.withResources(builder.build)
        except Exception as exc:
            text = ", ".join(f"{k.lower()} {v:g}" for k, v in asked.items())
            warn(f"stage `{node}` runs without its resources ({text}): the cluster refused a stage-level "
                 f"resource profile ({_first_line(exc)})")

    # ---- jobs

    def job(self, node: str, rdd, tasks: int, span: ir.SpanModel | None = None) -> list:
        """Run one Spark job collecting ``rdd`` (one record per partition, or a partition's
        items), with progress; the first StageFailure in program order, then by partition,
        is raised as the error the user sees (at ``span``, by default its node's)."""
        self.progress.stage(node, tasks)
        self._jobs += 1
        group = f"pipec-{self.run_id}-{self._jobs}"
        self.sc.setJobGroup(group, f"pipec {self.ir.info.name}: {node}")
        watcher = _Watcher(self.sc, group, node, self.progress) if _live(self.progress) else None
        start = time.perf_counter()
        try:
            out = rdd.collect()
        except Exception as exc:
            raise self._job_error(node, exc) from None
        finally:
            if watcher is not None:
                watcher.stop()
        self.result.timings[node] = self.result.timings.get(node, 0.0) + time.perf_counter() - start
        if watcher is None:
            self.progress.advance(node, tasks)
        failures = [x for x in out if type(x) is StageFailure]
        failures += [x for part in out if type(part) is list and part and type(part[0]) is StageFailure for x in part]
        if failures:
            first = min(failures, key=lambda f: (self.order.get(f.node.split(".")[0], 0),
                                                 -1 if f.partition is None else f.partition))
            raise self.stage_failed(first, span)
        return out

    def _job_error(self, node: str, exc: Exception) -> PipelineRuntimeError:
        """A job Spark gave up on (a task failed on every attempt: a worker process that
        crashed, an output that cannot be pickled, an executor lost too often), said in
        one line with its cause, pointing at the log."""
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        log = self.session.log if self.session else None
        where = f"Spark's log is {log}" if log else "see the Spark driver's log"
        span = self.ir.op(node).span if node in self.ir else None
        python = _python_cause(text)
        if python and "pickl" in python.lower():
            return self.error(node, f"the output cannot be pickled, so it cannot cross to another process "
                                    f"({python})", span,
                              "return plain data (numbers, strings, lists, dicts, numpy arrays)")
        attempts = re.search(r"Task (\d+) in stage [\d.]+ failed (\d+) times", text)
        if attempts and "Python worker exited unexpectedly" in text:
            cause = (f"task {attempts.group(1)} failed {attempts.group(2)} times: its Python worker process died "
                     f"(it crashed, was killed or ran out of memory)")
        elif python:
            cause = python
        else:
            cause = next((ln for ln in lines if "Exception:" in ln or "Error:" in ln), lines[0] if lines else repr(exc))
            cause = re.sub(r"(org\.apache\.spark\.|java\.lang\.|py4j\.)[\w.$]*(Exception|Error): ", "", cause)
            cause = cause.replace("Job aborted due to stage failure: ", "").lstrip(": ")
        if len(cause) > 300:
            cause = cause[:300] + "..."
        return self.error(node, f"the Spark job failed: {cause}", span, where)

    def _unpicklable(self, node: str, exc: Exception) -> PipelineRuntimeError:
        op = self.ir.op(node) if node in self.ir else None
        return self.error(node, f"a value cannot be pickled, so Spark cannot send it to its workers "
                                f"({type(exc).__name__}: {_first_line(exc)})", op.span if op else None,
                          "use plain data (numbers, strings, lists, dicts, numpy arrays)")

    # ---- collections the driver needs

    def gather(self, node: str) -> list:
        held = self.env[node]
        if held.data is None:
            held.data = self.job(node, held.rdd.glom(), held.parts)
        return [x for part in held.data for x in part]

    def end_round(self, block) -> None:
        """Bring each collection var rebound this round to the driver, so the next round
        starts from data, not from a lineage that grows by a round each time."""
        ran = [r for r in block.when_rebinds(self.ir) if self.env.get(self.ir.op(r).var) is self.env.get(r)]
        for rebind in block.rebinds(self.ir) + ran:  # a `when` block's: in the rounds it ran
            op = self.ir.op(rebind)
            if op.var_shape == ir.COLLECTION:
                self.env[op.var] = self._brought_back(op.var)

    def _brought_back(self, var: str) -> Rdd:
        """Collection ``var`` as partitions the driver holds, sent to Spark again from there."""
        held = self.env[var]
        if held.sent:
            return held
        if held.data is not None:  # gathered this round (`collect(ys)`): its lineage dies with the round
            return self.from_driver(var, held.data)
        return self.from_driver(var, self.job(var, held.rdd.glom(), held.parts))

    def var_partitions(self, var: str) -> list[list]:
        held = self.env[var] = self._brought_back(var)
        return held.data

    def var_from_partitions(self, var: str, parts: list[list]):
        return self.from_driver(var, parts)

    # ---- actors: hosted in the driver

    def start_actor(self, node: str, op: ir.Actor):
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        path = self.snapshot_path(node) if op.checkpoint_every else None
        try:  # restores the snapshot at `path` when a resumed run put one there
            host = VersionedHost(op.cls.module, op.cls.attr, args, kwargs, op.checkpoint_every, path)
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        self.hosts[node] = host
        return host

    def flush_actor(self, actor: str) -> None:
        self.hosts[actor].flush()

    def call_actor(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        # Copies, as a remote actor would get: the actor must not alias the driver's values.
        args, kwargs = _copy((args, kwargs))
        return _copy(self.hosts[actor].call(seq, method, args, kwargs))

    def start_pool(self, node: str, op: ir.Actor, size: int):
        self.pool_sizes[node] = size
        args = tuple(self.value(a) for a in op.args)
        kwargs = tuple((k, self.value(v)) for k, v in op.kwargs.items())
        # a resumed run's pool-wide calls so far: every replica applies them before it serves
        return worker.Pool(node, fn_ref(op.cls), args, kwargs, size, tuple(self.pool_logs.get(node, ())))

    def op_pool_call(self, node: str, op: ir.PoolCall):
        self._calling = op.span  # where an error of the call points (call_pool has no node)
        try:
            return super().op_pool_call(node, op)
        finally:
            self._calling = None

    def call_pool(self, pool: str, seq: int, method: str, args: list, kwargs: dict) -> list:
        """Call ``seq`` on every member: the pool now carries it (every replica applies it
        before it next serves), and one job of ``size`` tasks has a replica of each member
        apply it and answer. Collections still to be read whose lineage calls the pool
        come to the driver first: Spark would otherwise compute them later, with the call
        applied."""
        for node, held in list(self.env.items()):
            if isinstance(held, Rdd) and not held.sent and pool in held.pools and self._read_later(node):
                self.env[node] = self._brought_back(node)
        target = self.env[pool] = replace(self.env[pool], each=tuple(self.pool_logs[pool]))
        try:
            task = worker.EachCall(self.context, target, seq)
            rdd = self.indices(target.size).mapPartitionsWithIndex(task)
        except Exception as exc:
            raise self._unpicklable(pool, exc) from None
        return self.job(pool, rdd, target.size, span=self._calling)

    def _read_later(self, node: str) -> bool:
        """Whether collection ``node`` may still be read: a reader not run yet, one in a
        loop ``node`` is made outside of (it runs again), or a loop variable it becomes."""
        mine = set(loops_of(self.ir, self.ir.op(node).loop))
        for reader, kind in self.ir.out_edges(node):
            if kind == "carry" or reader not in self.env:
                return True
            if any(loop not in mine for loop in loops_of(self.ir, self.ir.op(reader).loop)):
                return True
        return False


# ---- helpers ---------------------------------------------------------------------------------


def _live(progress) -> bool:
    """Whether anyone watches ``progress`` (a terminal), so polling Spark is worth it."""
    return not isinstance(progress, NoProgress) and getattr(progress, "enabled", True)


class _Watcher:
    """Reports a running job's tasks (all its stages) to ``progress`` a few times a second."""

    def __init__(self, sc, group: str, node: str, progress, every: float = 0.25):
        self.sc, self.group, self.node, self.progress, self.every = sc, group, node, progress, every
        self.total, self.done = None, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"pipec-progress-{node}")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.update()

    def update(self) -> None:
        try:
            tracker = self.sc.statusTracker()
            total = done = 0
            for job in tracker.getJobIdsForGroup(self.group):
                info = tracker.getJobInfo(job)
                for stage in (info.stageIds if info else ()):
                    si = tracker.getStageInfo(stage)
                    if si is not None:
                        total, done = total + si.numTasks, done + si.numCompletedTasks
        except Exception:
            return  # the context is stopping; progress is best effort
        if total and total != self.total:
            self.total, self.done = total, 0
            self.progress.stage(self.node, total)
        if done > self.done:
            self.progress.advance(self.node, done - self.done)
            self.done = done

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.update()


def _python_cause(text: str) -> str | None:
    """The last line of the first Python traceback in a Spark job's error: what the
    Python worker raised (``TypeError: cannot pickle '_thread.lock' object``)."""
    found = text.find("Traceback (most recent call last):")
    if found < 0:
        return None
    for line in text[found:].splitlines()[1:]:
        stripped = line.strip()
        if not line.startswith(" ") and re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Warning)\b", stripped):
            return stripped[:300]
    return None


def warn(message: str) -> None:
    """A run-time warning on standard error (the CLI's summary goes to standard out)."""
    print(f"warning: {message}", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _copy(value):
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
