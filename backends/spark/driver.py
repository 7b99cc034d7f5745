"""The Spark driver: walks the pipeline like every backend (the shared Driver), turning
collections into RDDs and every reduction, collect, count or sink into a Spark job.

How each part is lowered:

* A collection is an RDD plus a *pending segment* (:class:`Coll`: a head and fused
  steps of the shared physical plan). Element-wise stages only add steps; the segment
  runs as one ``mapPartitionsWithIndex`` pass (:class:`worker.Pass`) when something needs
  the data, so adjacent stages (and the map side of the next shuffle, or the per-partition
  part of the next action) share one pass over the partition.
* A collection read more than once, or read by a loop it is defined outside of, is
  cached once (round-scoped collections are unpersisted when their round ends).
* Keyed operations bucket each partition with the shared stable key hash, shuffle the
  buckets with ``partitionBy`` keyed by output partition, and merge the buckets of each
  output partition in source-partition order.
* ``reduce``: one pass folds each partition, the per-partition partials come back in
  partition-index order, and the driver combines them with the shared
  ``combine_partials`` (a depth-1 tree, or a level on the executors first; see
  :meth:`SparkDriver.op_reduce`).
* Values used by a stage are broadcast once per round (once per run if they are
  computed outside every loop).
* Actors live in the driver: graph-level calls run there in program order between jobs,
  with sequence numbers, snapshots and a replay log (the shared :class:`ActorHost`). An
  actor pool becomes one instance per Python worker, built on first use.
* A collection loop variable is brought to the driver at the end of each round and
  parallelized again: its lineage stays one round long, and the run can resume from it.

The same code builds a *dry* plan for ``pipec compile``/``graph``: the RDDs are built
(lazily, so no job runs and no user code is imported) and every job, cache, broadcast
and driver-side call is recorded instead of run.
"""

from __future__ import annotations

import math
import pickle
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from py4j.protocol import Py4JError

from pipec.compiler import ir
from pipec.compiler.schedule import Block, blocks
from pipec.dsl.diagnostics import PipelineRuntimeError
from pipec.backends.physical import steps as s
from pipec.backends.physical.planner import fn_ref, policy_of
from pipec.backends.runtime import semantics
from pipec.backends.runtime.actors import VersionedHost
from pipec.backends.base import NoProgress, notify
from pipec.backends.runtime.driver import Driver
from pipec.backends.runtime.interpreter import StageFailure
from pipec.backends.runtime.tasks import ensure_path
from pipec.backends.spark import session as sessions
from pipec.backends.spark import worker


@dataclass(frozen=True)
class Coll:
    """A collection as the driver holds it: an RDD, the segment still to run over each of
    its partitions (a head, fused element-wise steps and the broadcasts they read), and
    its partition count. Nothing is pending when the head is a plain ``Input``."""

    rdd: Any
    parts: int
    head: Any  # a steps.Head
    steps: tuple = ()
    slots: tuple = ()  # the Broadcasts of the steps' Slot bindings
    block: bool = False  # each partition is one record holding its items (sent by the driver)
    data: list | None = None
    held: bool = False  # the driver holds the partitions (``data``; None in a dry plan)

    @property
    def pending(self) -> bool:
        return bool(self.steps) or self.block or not isinstance(self.head, s.Input)


class Pending:
    """A value a dry plan does not compute (it would need a job or user code)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"<{self.text}>"


@dataclass
class Analysis:
    """Static lowering decisions: which collections are cached, and why.

    Only collections a loop reads every round: a collection read twice by the same
    round is computed twice, because PySpark's cache costs a trip through the JVM's
    block store (measured on benchmarks/mapreduce.pipe: 5.9 s cached, 3.3 s computed
    twice), and the shuffle outputs it may start from are reused by Spark anyway."""

    persist: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, graph: ir.IR) -> "Analysis":
        loops = graph.info.loops

        def chain(loop_id):
            out = []
            while loop_id is not None:
                out.append(loop_id)
                loop_id = loops[loop_id].parent
            return out

        persist: dict[str, str] = {}
        for src, dst, kind in graph.graph.edges(data="kind"):
            if kind != "data":
                continue
            op = graph.op(src)
            if isinstance(op, (ir.Var, ir.Rebind)):
                continue  # a var's value changes every round; it is materialised instead
            outer = set(chain(graph.op(dst).loop)) - set(chain(op.loop))
            if outer and src not in persist:
                persist[src] = f"read by every round of {sorted(outer, key=lambda l: len(chain(l)))[0]}"
        return cls(persist)


class SparkDriver(Driver):
    backend = "spark"
    resumable = True

    def __init__(self, plan, progress=None, run_dir: str | None = None, resume: bool = False, dry: bool = False):
        super().__init__(plan.ir, plan.params, progress, run_dir, resume)
        self.plan = plan
        self.dry = dry
        self.analysis = plan.analysis
        self.order = {node: i for i, node in enumerate(plan.ir)}
        self.trace: list[dict] = []
        self._trace_stack: list[list] = [self.trace]
        self._scopes: list[dict] = []
        self._broadcasts: dict[str, tuple[Any, Any]] = {}
        self.hosts: dict[str, VersionedHost] = {}
        self.pools: dict[str, worker.Pool] = {}
        self.session: sessions.Session | None = None

    # ---- entry

    def run(self):
        start = time.perf_counter()
        ensure_path(self.ir.info.module_paths())
        notify(self.progress, "run_started", self.run_dir.name, str(self.run_dir), self.backend)
        self.setup()
        try:
            notify(self.progress, "engine_ready", self.engine_info())
            self.run_top(blocks(self.ir))
            if self.dry:
                self.lowered = self.capture(self)
            else:
                self.commit_sinks()
                self.finish_records()
        except Py4JError as exc:  # Spark itself went away (a job's failure is reported by job())
            log = self.session.log if self.session else None
            raise PipelineRuntimeError(self.ir.info.name, f"Spark stopped under the pipeline: {_first_line(exc)}",
                                       hint=f"Spark's log is {log}" if log else None) from None
        finally:
            self.sinks.abort()
            self.close_records()
            self.teardown()
        self.result.seconds = time.perf_counter() - start
        return self.result

    def setup(self) -> None:
        plan = self.plan
        if not self.dry:
            self.sinks.clean_leftovers()
            self.prepare_run_dir()
        log = None if self.dry else str(self.run_dir / "spark.log")
        self.session = sessions.session(plan.address, log, plan.max_retries, plan.ui)
        self.sc = self.session.sc
        archive = None
        if not self.session.local:
            archive = sessions.ship_modules(self.sc, self.ir)
        roots = () if archive else tuple(self.ir.info.module_paths())
        self.context = worker.Context(self.run_id, roots, archive)
        self._scopes.append({"cached": [], "broadcasts": []})

    def engine_info(self) -> dict[str, Any]:
        """Spark's cores, its UI (when asked for: ``spark.ui.enabled``) and version."""
        sc = self.sc
        return {"workers": sc.defaultParallelism, "dashboard": sc.uiWebUrl or None,
                "versions": {"spark": sc.version}}

    def teardown(self) -> None:
        while self._scopes:
            self._close_scope()
        if self.session is not None:
            self.session.stop()

    # ---- scopes: what a round caches and broadcasts, dropped when it ends

    def _close_scope(self) -> None:
        scope = self._scopes.pop()
        for rdd in scope["cached"]:
            try:
                rdd.unpersist()
            except Exception:
                pass
        for node in scope["broadcasts"]:
            entry = self._broadcasts.pop(node, None)
            if entry is not None and entry[1] is not None:
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

    # ---- tracing (dry plans)

    def note(self, kind: str, node: str | None, text: str, **extra) -> None:
        if self.dry:
            self._trace_stack[-1].append({"kind": kind, "node": node, "text": text, **extra})

    @contextmanager
    def _traced_loop(self, loop: ir.Loop, text: str):
        entry = {"kind": "loop", "node": loop.id, "text": text, "steps": []}
        self._trace_stack[-1].append(entry)
        self._trace_stack.append(entry["steps"])
        try:
            yield
        finally:
            self._trace_stack.pop()

    # ---- loops

    def run_loop(self, block: Block, first: int = 0) -> None:
        if self.dry:
            self._dry_round(block, self.value(block.loop.count))
            return
        super().run_loop(block, first)

    def start_round(self, block: Block) -> None:
        self._scopes.append({"cached": [], "broadcasts": []})

    def close_round(self, block: Block) -> None:
        self._close_scope()

    def _dry_round(self, block: Block, count) -> None:
        loop = block.loop
        until = f" until {_text(self.ir, loop.until)}" if loop.until is not None else ""
        shown = count if not isinstance(count, Pending) else _text(self.ir, loop.count)
        with self._traced_loop(loop, f"repeat {shown}{until}  ({loop.id}); each round:"):
            self.round_index[loop.id] = Pending(f"round index of {loop.id}")
            for rebind in block.rebinds(self.ir):
                op = self.ir.op(rebind)
                if op.var_shape == ir.COLLECTION:
                    # Show the steady state: from the second round on, the var comes from the driver.
                    coll = self.env[op.var]
                    self.env[op.var] = self.from_driver(op.var, [[]] * coll.parts,
                                                        f"var {op.name or op.var} (from the driver)", dry=True)
                    self.note("driver", op.var, f"driver: var {op.name or op.var} is parallelized from the "
                                                f"driver ({coll.parts} partitions; the first round reads its "
                                                f"initial value instead)")
            self._scopes.append({"cached": [], "broadcasts": []})
            try:
                self.run_block(Block(None, block.items))
                for rebind in block.rebinds(self.ir):
                    op = self.ir.op(rebind)
                    self.env[op.var] = self.env[rebind]
                self.end_round(block)
            finally:
                self._close_scope()
        self.result.rounds[loop.id] = 0

    def end_round(self, block: Block) -> None:
        """Bring each collection var rebound this round to the driver, so the next round
        starts from data, not from a lineage that grows by a round each time."""
        for rebind in block.rebinds(self.ir):
            op = self.ir.op(rebind)
            if op.var_shape == ir.COLLECTION:
                self.env[op.var] = self.materialise_var(op.var, self.env[op.var])

    def materialise_var(self, var: str, coll: Coll) -> Coll:
        if coll.held:
            return coll
        name = self.ir.op(var).name or var
        parts = self.job(var, "materialise", coll, None,
                         f"var {name}: its {coll.parts} partitions come to the driver, to be parallelized "
                         f"again for the next round", whole=True)
        if parts is None:
            return self.from_driver(var, [[]] * coll.parts, f"var {name} (from the driver)", dry=True)
        return self.from_driver(var, parts, f"var {name} (from the driver)")

    # ---- resume: collection vars in a record

    def var_partitions(self, var: str) -> list[list]:
        # Materialised here anyway, so the next round reads the driver's copy too.
        coll = self.env[var] = self.materialise_var(var, self.env[var])
        return coll.data

    def var_from_partitions(self, var: str, parts: list[list]):
        return self.from_driver(var, parts, f"var {self.ir.op(var).name or var} (restored)")

    # ---- jobs

    def pass_rdd(self, coll: Coll, terminal=None, **framing):
        """``coll``'s pending segment ending in ``terminal`` (a ``Combine``: a reduction's
        combine level instead) as one pass; ``framing`` is :class:`worker.Pass`'s."""
        if terminal is None and not framing and not coll.pending:
            return coll.rdd
        if isinstance(terminal, s.Combine):
            work = terminal
        else:
            nodes = [coll.head.node, *(e.node for e in coll.steps), *([terminal.node] if terminal else [])]
            work = s.Segment(nodes[-1], coll.head, coll.steps, terminal, tuple(dict.fromkeys(nodes)))
        pools = tuple(self.pools[e.pool] for e in coll.steps if e.pool is not None)
        task = worker.Pass(self.context, work, coll.slots, pools, coll.block, **framing)
        return coll.rdd.mapPartitionsWithIndex(task)

    def materialise(self, node: str, coll: Coll, why: str | None = None) -> Coll:
        """Run ``coll``'s pending segment as its own RDD (cached when ``why`` says so)."""
        rdd = self.pass_rdd(coll)
        text = _pass_text(coll)
        rdd.setName(f"{node}: {text}" if text else node)
        if why is not None:
            rdd.cache()
            self._scope_for(node)["cached"].append(rdd)
            self.note("cache", node, f"cache {node} ({why})")
        return Coll(rdd, coll.parts, s.Input(node))

    def job(self, node: str, action: str, coll: Coll, terminal, text: str, **framing) -> list | None:
        """Run one Spark job: ``coll``'s segment ending in ``terminal`` over every
        partition (see :meth:`pass_rdd`); the per-partition results, in partition order
        (None in a dry plan)."""
        rdd = self.pass_rdd(coll, terminal, **framing)
        rdd.setName(f"{node}: {_pass_text(coll, terminal, **framing)}")
        if self.dry:
            self.note("job", node, text, action=action, tasks=coll.parts, rdd=rdd)
            return None
        self.progress.stage(node, coll.parts)
        self._jobs = getattr(self, "_jobs", 0) + 1
        group = f"pipec-{self.run_id}-{self._jobs}"
        self.sc.setJobGroup(group, f"pipec {self.ir.info.name}: {node} ({action})")
        watcher = _Watcher(self.sc, group, node, self.progress) if _live(self.progress) else None
        try:
            out = rdd.collect()
        except Exception as exc:
            raise self._job_error(node, exc) from None
        finally:
            if watcher is not None:
                watcher.stop()
        if watcher is None:
            self.progress.advance(node, coll.parts)
        failures = [x for x in out if type(x) is StageFailure]
        if failures:  # the first in program order, then by partition
            first = min(failures, key=lambda f: (self.order.get(f.node, 0), -1 if f.partition is None else f.partition))
            raise self.stage_failed(first)
        return out

    def _job_error(self, node: str, exc: Exception) -> PipelineRuntimeError:
        """A job Spark gave up on (a task failed on every attempt: a worker process that
        crashed, an executor lost too often), said in one line, pointing at the log."""
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        cause = next((ln for ln in lines if "Exception:" in ln or "Error:" in ln), lines[0] if lines else repr(exc))
        cause = re.sub(r"(org\.apache\.spark\.|java\.lang\.|py4j\.)[\w.$]*(Exception|Error): ", "", cause)
        cause = cause.replace("Job aborted due to stage failure: ", "").lstrip(": ")
        attempts = re.search(r"Task (\d+) in stage [\d.]+ failed (\d+) times", text)
        if attempts and "Python worker exited unexpectedly" in text:
            cause = (f"task {attempts.group(1)} failed {attempts.group(2)} times: its Python worker process died "
                     f"(it crashed, was killed or ran out of memory)")
        elif len(cause) > 300:
            cause = cause[:300] + "..."
        log = self.session.log if self.session else None
        return self.error(node, f"the Spark job failed: {cause}", self.ir.op(node).span,
                          f"Spark's log is {log}" if log else "see the Spark driver's log")

    # ---- sources

    def collection_source(self, node: str, op: ir.Source):
        k = self.value(op.partitions)
        if isinstance(k, Pending):
            k = 1
        args = [self.value(a) for a in op.args]
        kwargs = {key: self.value(v) for key, v in op.kwargs.items()}
        if op.kind == "range":
            n = args[0]
            if isinstance(n, Pending):
                n, k = 0, 1
            head = s.RangeSlice(node, n, k)
            what = f"range({args[0]!r}) cut into {k} blocks"
        elif op.sharded:
            head = s.Sharded(node, fn_ref(op.fn), tuple(args), tuple(kwargs.items()), k, policy_of(op.options))
            what = f"{op.fn.dotted}({_arguments(self.ir, op.args, op.kwargs)}) sharded: called on the workers"
        else:
            return self._driver_source(node, op, k, args, kwargs)
        rdd = self.sc.parallelize(list(range(k)), k)  # one record per partition; the head makes its items
        rdd.setName(f"{node}: {what}")
        return self._persisted(node, Coll(rdd, k, head))

    def _driver_source(self, node: str, op: ir.Source, k: int, args: list, kwargs: dict):
        """``read_text``, ``read_jsonl`` and plain callables run on the driver (their items
        must be counted to be cut into blocks) and are sent one block per partition."""
        what = f"{op.fn.dotted if op.fn else op.kind}({_arguments(self.ir, op.args, op.kwargs)})"
        self.note("driver", node, f"driver: {what} for source {node}, cut into {k} partitions")
        if self.dry:
            coll = self.from_driver(node, [[] for _ in range(k)], f"source {what} (on the driver)", dry=True)
            return self._persisted(node, coll)
        parts = self.read_source(node, op, k, args, kwargs)
        return self._persisted(node, self.from_driver(node, parts, f"source {what} (on the driver)"))

    def _persisted(self, node: str, coll: Coll) -> Coll:
        why = self.analysis.persist.get(node)
        if why is None:
            return coll
        if not coll.steps and not isinstance(coll.head, (s.Sharded, s.Merge)):
            # A range slice or the driver's blocks: Spark holds them already, a cache would copy them.
            self.note("driver", node, f"{node} is not cached ({why}): Spark holds its partitions already")
            return coll
        return self.materialise(node, coll, why)

    def from_driver(self, node: str, parts: list[list], label: str, dry: bool = False) -> Coll:
        """A collection whose partitions the driver holds: one block per partition."""
        rdd = self.sc.parallelize(list(parts) if parts else [[]], max(1, len(parts)))
        rdd.setName(f"{node}: {label}")
        return Coll(rdd, len(parts), s.Input(node), block=True, data=None if dry else parts, held=True)

    # ---- element-wise and keyed operations

    def collection_elementwise(self, node: str, op: ir.Elementwise):
        src = self.env[op.input.node]
        bindings, slots = self.bind(node, op, src.slots)
        step = s.Elementwise(node, op.kind, fn_ref(op.fn), bindings, policy_of(op.options),
                             op.pool.node if op.pool is not None else None, op.method)
        coll = replace(src, steps=src.steps + (step,), slots=slots, data=None, held=False)
        asked = op.options.resources
        if any(v is not None for v in asked.model_dump().values()) and not self.session.local:
            return self._with_resources(node, coll, asked)
        return self._persisted(node, coll)

    def _with_resources(self, node: str, coll: Coll, asked: ir.Resources) -> Coll:
        """The stage as its own pass under a stage-level resource profile, where the
        cluster supports one (``pipec check`` warned that local masters do not)."""
        coll = self.materialise(node, coll)
        from pyspark.resource import ExecutorResourceRequests, ResourceProfileBuilder, TaskResourceRequests
        task = TaskResourceRequests()
        if asked.cpus is not None:
            task.cpus(max(1, math.ceil(asked.cpus)))
        if asked.gpus is not None:
            task.resource("gpu", asked.gpus)
        builder = ResourceProfileBuilder().require(task)
        if asked.memory is not None:
            builder.require(ExecutorResourceRequests().memory(f"{max(1, asked.memory // 2**20)}m"))
        try:
            coll.rdd.withResources(builder.build)
            self.note("driver", node, f"resource profile for {node}: {_resources_text(asked)}")
        except Exception as exc:
            warn(f"stage `{node}` runs without its resources ({_resources_text(asked)}): the cluster "
                 f"refused a stage-level resource profile ({_first_line(exc)})")
        return Coll(coll.rdd, coll.parts, s.Input(node))

    def bind(self, stage: str, op: ir.Elementwise, slots: tuple) -> tuple[tuple, tuple]:
        """``op``'s bindings as the shared ``Lit``/``Slot`` and ``slots`` with the
        broadcasts the new ``Slot``s read."""
        out = []
        for name, operand in op.bindings.items():
            if isinstance(operand, ir.Lit):
                out.append((name, s.Lit(operand.value)))
            else:
                slots += (self.broadcast(operand.node, stage, name),)
                out.append((name, s.Slot(len(slots) - 1, operand.node)))
        return tuple(out), slots

    def broadcast(self, node: str, stage: str, name: str):
        """The broadcast of ``node``'s value, made once while the value stays the same
        (None in a dry plan)."""
        value = self.env[node]
        entry = self._broadcasts.get(node)
        if entry is not None and entry[0] is value:
            return entry[1]
        scope = self._scope_for(node)
        if self.dry or isinstance(value, Pending):
            bc = None
            where = "once" if scope is self._scopes[0] else "once per round"
            self.note("broadcast", node, f"broadcast {_text(self.ir, ir.NodeRef(node=node))} as `{name}` "
                                         f"to {stage} ({where})")
        else:
            bc = self.sc.broadcast(value)
        self._broadcasts[node] = (value, bc)
        scope["broadcasts"].append(node)
        return bc

    def _shuffle(self, node: str, inputs: list[tuple[Coll, int]], how: str, fn, options, k: int):
        """Map side (fused into each input's pass), ``partitionBy`` on the output
        partition, and the merge as the result's first pending step."""
        f, policy = fn_ref(fn), policy_of(options)
        split = s.Split(node, how, k, f, policy)
        mapped = [self.pass_rdd(coll, split, tag=tag) for coll, tag in inputs]
        tagged = mapped[0] if len(mapped) == 1 else self.sc.union(mapped)
        shuffled = tagged.partitionBy(k, worker.destination)
        _name_shuffle(shuffled, f"{node}: {how} shuffle into {k} partitions (key -> stable hash % {k})",
                      [f"{node}: {_pass_text(coll, split)}" for coll, _ in inputs])
        return self._persisted(node, Coll(shuffled, k, s.Merge(node, how, f, policy)))

    def collection_reduce_by_key(self, node: str, op: ir.ReduceByKey):
        src = self.env[op.input.node]
        return self._shuffle(node, [(src, 0)], "reduce_by_key", op.fn, op.options, src.parts)

    def collection_group_by_key(self, node: str, op: ir.GroupByKey):
        src = self.env[op.input.node]
        return self._shuffle(node, [(src, 0)], "group_by_key", None, op.options, src.parts)

    def collection_join(self, node: str, op: ir.Join):
        left, right = self.env[op.left.node], self.env[op.right.node]
        return self._shuffle(node, [(left, 0), (right, 1)], "join", None, op.options, max(left.parts, right.parts))

    def collection_distinct(self, node: str, op: ir.Distinct):
        src = self.env[op.input.node]
        return self._shuffle(node, [(src, 0)], "distinct", None, op.options, src.parts)

    def collection_union(self, node: str, op: ir.UnionAll):
        parts = [self.env[p.node] for p in op.parts]
        rdd = self.sc.union([self.pass_rdd(c) for c in parts])
        rdd.setName(f"{node}: union of {', '.join(p.node for p in op.parts)}")
        return self._persisted(node, Coll(rdd, sum(c.parts for c in parts), s.Input(node)))

    # ---- values from collections: one job each

    def op_reduce(self, node: str, op: ir.Reduce):
        """Each partition folds its items in one pass, and the partials are combined by
        partition index, ``FAN_IN`` at a time, level by level (``combine_partials``).

        Spark's ``treeAggregate`` combines in task-completion order, so float sums would
        differ in the last bits from run to run; here the tree follows the partition
        index. Its depth is chosen for the partition count: up to ``FAN_IN**2`` partitions
        the partials come straight to the driver (depth 1: with 8 partitions that took
        0.25 s a round, Spark's default depth 2 took 0.4 s); beyond, one level of combine
        tasks runs on the executors first (a shuffle of one record per partition), and the
        driver combines their results."""
        src = self.env[op.input.node]
        fold = s.Fold(node, fn_ref(op.fn), policy_of(op.options))
        fan_in = semantics.FAN_IN
        what = f"{_lhs(self.ir, node)}reduce {op.fn.dotted} over {_coll(self.ir, op.input.node)}: {src.parts} tasks fold their partition"
        if src.parts <= fan_in ** 2:
            partials = self.job(node, "reduce", src, fold,
                                f"{what}; the driver combines the partials in partition order, {fan_in} at a time")
        else:
            groups = -(-src.parts // fan_in)
            keyed = self.pass_rdd(src, fold, fan_in=fan_in)
            shuffled = keyed.partitionBy(groups, worker.destination)
            _name_shuffle(shuffled, f"{node}: partials to {groups} combine tasks (partition // {fan_in})",
                          [f"{node}: {_pass_text(src, fold, fan_in=fan_in)}"])
            partials = self.job(node, "reduce", Coll(shuffled, groups, s.Input(node)),
                                s.Combine(node, fold.fn, False, fold.policy),
                                f"{what}; {groups} tasks combine them {fan_in} at a time in partition order; the "
                                f"driver combines their results")
        if partials is None:
            return Pending(f"reduce {op.fn.dotted}")
        return self.reduced(node, op, partials)

    def gather(self, node: str, why: str = "collect") -> list | None:
        coll = self.env[node]
        if coll.held:
            self.note("driver", node, f"driver: {why} {_coll(self.ir, node)} (its partitions are on the driver already)")
            return None if coll.data is None else [x for part in coll.data for x in part]
        parts = self.job(node, why, coll, None,
                         f"{why} {_coll(self.ir, node)}: {coll.parts} tasks; the driver receives the partitions in order",
                         whole=True)
        return None if parts is None else [x for part in parts for x in part]

    def count(self, node: str) -> int | None:
        coll = self.env[node]
        if coll.held:
            self.note("driver", node, f"driver: count {_coll(self.ir, node)} (its partitions are on the driver already)")
            return None if coll.data is None else sum(len(p) for p in coll.data)
        counts = self.job(node, "count", coll, s.Count(node), f"count {_coll(self.ir, node)}: {coll.parts} tasks")
        return None if counts is None else sum(counts)

    def op_collect(self, node: str, op: ir.Collect):
        items = self.gather(op.input.node, f"{_lhs(self.ir, node)}collect")
        if items is None:
            return Pending(f"collect({op.input.node})")
        return semantics.ordered(items, self.order_of(op.input.node))

    def op_count(self, node: str, op: ir.Count):
        n = self.count(op.input.node)
        return Pending(f"count({op.input.node})") if n is None else n

    def op_top(self, node: str, op: ir.Top):
        if self.dry:
            self.gather(op.input.node, f"{_lhs(self.ir, node)}top {_text(self.ir, op.n)}"
                                        f"{f' by {op.by.dotted}' if op.by else ''} of")
            return Pending(f"top({op.input.node})")
        return super().op_top(node, op)

    def op_sink(self, node: str, op: ir.Sink):
        if not self.dry:
            return super().op_sink(node, op)
        src = op.input.node
        where = f"{op.format} {_text(self.ir, op.path)}" if op.format else "printed by pipec run"
        if self.ir.op(src).node_shape == ir.COLLECTION:
            self.gather(src, f"sink {node}: collect")
        self.note("driver", node, f"driver: write sink {node} ({where})")
        return Pending(f"sink {node}")

    # ---- values on the driver (dry plans compute only what needs no job and no user code)

    def op_expr(self, node: str, op: ir.Expr):
        if any(isinstance(self.value(o), Pending) for o in op.operands):
            return Pending(_text(self.ir, ir.NodeRef(node=node)))
        return super().op_expr(node, op)

    def op_call(self, node: str, op: ir.Call):
        if self.dry:
            self.note("driver", node, f"driver: {_text(self.ir, ir.NodeRef(node=node))}")
            return Pending(op.fn.dotted)
        return super().op_call(node, op)

    # ---- actors: hosted in the driver

    def op_actor_call(self, node: str, op: ir.ActorCall):
        if self.dry:
            self.note("driver", node, f"driver: {_text(self.ir, ir.NodeRef(node=node))}  (actor call, "
                                      f"numbered, applied once)")
            return Pending(f"{op.actor.node}.{op.method}()")
        return super().op_actor_call(node, op)

    def start_actor(self, node: str, op: ir.Actor):
        if self.dry:
            extra = [f"restarts {op.restarts}"] + ([f"snapshot every {op.checkpoint_every} calls"]
                                                   if op.checkpoint_every else [])
            self.note("driver", node, f"driver: start actor {node} = {op.cls.dotted}"
                                      f"({_arguments(self.ir, op.args, op.kwargs)}) in the driver ({', '.join(extra)})")
            return Pending(f"actor {node}")
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        path = self.snapshot_path(node) if op.checkpoint_every else None
        try:  # restores the snapshot at `path` when a resumed run put one there
            host = VersionedHost(op.cls.module, op.cls.attr, args, kwargs, op.checkpoint_every, path)
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        self.hosts[node] = host
        return host

    def call_actor(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        # Copies, as a remote actor would get: the actor must not alias the driver's values.
        args, kwargs = _copy((args, kwargs))
        return _copy(self.hosts[actor].call(seq, method, args, kwargs))

    def start_pool(self, node: str, op: ir.Actor, size: int):
        args = tuple(self.value(a) for a in op.args)
        kwargs = tuple((k, self.value(v)) for k, v in op.kwargs.items())
        pool = self.pools[node] = worker.Pool(node, fn_ref(op.cls), args, kwargs)
        self.note("driver", node, f"pool {node}: one {op.cls.dotted} per Python worker process, built on first "
                                  f"use and reused by later partitions")
        return pool


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


def _name_shuffle(shuffled, name: str, map_sides: list[str]) -> None:
    """Name the JVM RDDs PySpark's ``partitionBy`` made: the shuffle and its map side(s)."""
    jrdd = shuffled._jrdd.rdd()  # values() of ...
    shuffle = jrdd.dependencies().apply(0).rdd()  # ShuffledRDD
    shuffle.setName(name)
    pairwise = shuffle.dependencies().apply(0).rdd()  # PairwiseRDD of the map side
    python = pairwise.dependencies().apply(0).rdd()  # its Python pass (pipelined with ours)
    if len(map_sides) == 1:
        python.setName(map_sides[0])
        return
    python.setName(name.split(":")[0] + ": shuffle keys of the union")
    union = python.dependencies().apply(0).rdd()
    deps = union.dependencies()
    for i in range(min(deps.size(), len(map_sides))):
        deps.apply(i).rdd().setName(map_sides[i])


def warn(message: str) -> None:
    """A run-time warning on standard error (the CLI's summary goes to standard out)."""
    print(f"warning: {message}", file=sys.stderr)


def _resources_text(asked: ir.Resources) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in asked.model_dump().items() if v is not None)


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _copy(value):
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


_TEXT = {  # a pass's parts as the plan shows them (an Input reads the RDD: nothing to show)
    s.Input: lambda h: None,
    s.RangeSlice: lambda h: "source (range slice)",
    s.Sharded: lambda h: f"source {h.fn.dotted} sharded",
    s.Merge: lambda h: f"{h.how} merge (by source partition)",
    s.Elementwise: lambda e: f"{e.kind} {e.callee}",
    s.Split: lambda t: f"{t.how} map side" + (" (combine per key)" if t.how == "reduce_by_key" else ""),
    s.Fold: lambda t: f"fold {t.fn.dotted}",
    s.Count: lambda t: "count",
    s.Combine: lambda t: f"combine {t.fn.dotted} in partition order",
}


def _pass_text(coll: Coll, terminal=None, whole: bool = False, fan_in: int = 0, tag: int = 0) -> str:
    """What one pass over ``coll`` does, step by step (the RDD names in the plan)."""
    parts = ["source (items from the driver)" if coll.block else _TEXT[type(coll.head)](coll.head)]
    parts += [_TEXT[type(step)](step) for step in (*coll.steps, *([terminal] if terminal else []))]
    parts += [f"key by combine group (partition // {fan_in})"] if fan_in else []
    parts += ["gather"] if whole else []
    return " | ".join(p for p in parts if p)


def _text(graph: ir.IR, operand) -> str:
    """An operand as the pipeline's source spells it."""
    from pipec.compiler.render import _operand
    return _operand(graph, operand)


def _lhs(graph: ir.IR, node: str) -> str:
    """``name = `` for a value the user named, else nothing."""
    op = graph.op(node)
    return f"{node} = " if op.name and node.isidentifier() else ""


def _coll(graph: ir.IR, node: str, depth: int = 0) -> str:
    """A collection as the source spells it: its name, or the nested expression."""
    op = graph.op(node)
    if (op.name and node.isidentifier()) or depth > 3:
        return node
    inner = (lambda ref: _coll(graph, ref.node, depth + 1))
    if isinstance(op, ir.Elementwise):
        callee = op.fn.dotted if op.fn else f"{op.pool.node}.{op.method}"
        return f"({op.kind} {callee} over {inner(op.input)})"
    if isinstance(op, ir.ReduceByKey):
        return f"(reduce_by_key {op.fn.dotted} over {inner(op.input)})"
    if isinstance(op, ir.GroupByKey):
        return f"(group_by_key over {inner(op.input)})"
    if isinstance(op, (ir.Distinct,)):
        return f"distinct({inner(op.input)})"
    if isinstance(op, ir.Join):
        return f"join({inner(op.left)}, {inner(op.right)})"
    if isinstance(op, ir.UnionAll):
        return f"union({', '.join(inner(p) for p in op.parts)})"
    return node


def _arguments(graph: ir.IR, args, kwargs) -> str:
    from pipec.compiler.render import _arguments as arguments
    return arguments(graph, args, kwargs)
