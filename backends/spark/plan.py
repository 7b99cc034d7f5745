"""The Spark backend and its plan: the shared physical plan (:mod:`pipec.backends.physical.planner`) with
Spark's mapping. ``explain``, ``to_json`` and ``graph`` show it
(:mod:`pipec.backends.physical.explain`) without PySpark or a JVM; ``run`` hands it to
the driver, which translates each graph step into RDD operations (see
:mod:`pipec.backends.spark.driver`)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pipec.compiler import ir
from pipec.compiler.capabilities import FEATURES
from pipec.dsl.diagnostics import WARNING, Diagnostic
from pipec.dsl.source import Span
from pipec.backends.base import Backend
from pipec.backends.physical import explain as explaining
from pipec.backends.physical import steps as s
from pipec.backends.physical.planner import PhysicalPlan, TaskSpec, loops_of

TASK_NOTE = ("the tasks of one segment (keys stage-0 .. stage-k) are the partitions of one RDD: a segment or "
             "pool stage is one mapPartitionsWithIndex pass (Spark pipelines consecutive passes, so each "
             "partition is read once), a split's buckets cross a partitionBy shuffle on the stable key hash to "
             "the merge's pass; finish, source_call and line_index tasks run on the driver, over the partials one "
             "job collects in partition order; a value a task reads is a broadcast; a job runs only where the "
             "driver needs a value or a collection's items")

# Spark takes no shared scan (one task per partition with several outputs): its readers
# are separate jobs or shuffles, so one pass would need the outputs cached between them.
DECLINED_SCANS = ("each reader runs its own pass over the partitions, pipelined with the pass making them "
                  "(caching the partitions for one shared pass costs more: on benchmarks/mapreduce.pipe 5.9 s "
                  "cached against 3.3 s computed twice)")

# Spark takes no hoisted split either: a merge is one partitionBy of both sides' keyed
# records, a new shuffle each round, so a split made once would still be shuffled again.
DECLINED_HOISTS = ("Spark shuffles both sides in one partitionBy each round, and the collection itself is cached "
                   "for every round already")

# Spark takes no grouped merge: its shuffle is not a task graph's dependencies. A
# partitionBy's reduce tasks fetch their blocks from the map side's one sorted file per
# task through the shuffle service, so a k-way shuffle costs no P x k edges to schedule,
# and a reduce task per partition keeps its partitions those of the plan.
DECLINED_GROUPS = ("Spark's partitionBy shuffle fetches each reduce task's blocks from every map task's one shuffle "
                   "file, with no dependency per pair for a scheduler to track, so each partition keeps its own "
                   "reduce task")

# What a task body becomes on Spark, where the plan's word needs it.
_ON_SPARK = {"finish": "on the driver", "source_call": "on the driver", "line_index": "on the driver",
             "take_part": "parallelized from the driver",
             "pool": "in the task: its Python worker's replica of the member"}


class SparkPlan(explaining.MappedPlan):
    """The physical plan on Spark: run on the SparkContext its :meth:`engine` holds (the
    active one, or one started for ``address`` or the embedded master)."""

    backend = "spark"
    driver = "pipec.backends.spark.driver:SparkDriver"

    def __init__(self, graph: ir.IR, params: dict[str, Any], address: str | None = None, ui: bool = False):
        super().__init__(graph, params)
        self.address = address
        self.ui = ui
        self.physical = PhysicalPlan(graph, params, shared_scans=False, hoist_splits=False, group_merges=False)
        self._cached = loop_invariant(graph)

    @property
    def mapping(self) -> explaining.Mapping:
        engine = (f"the Spark master at {self.address}" if self.address else
                  "an embedded local[N,F] Spark master (every core, F attempts per task), or the Spark "
                  "session this process runs")
        return explaining.Mapping("spark", engine, TASK_NOTE, {"address": self.address,
                                                               "embedded": self.address is None},
                                  task_notes=self._task_notes, actor_text=_actor_text,
                                  declined_scans=DECLINED_SCANS, declined_hoists=DECLINED_HOISTS,
                                  declined_groups=DECLINED_GROUPS)

    def _task_notes(self, spec: TaskSpec) -> list[str]:
        notes = [_ON_SPARK[spec.body]] if spec.body in _ON_SPARK else []
        if spec.data:
            notes.append("a broadcast")
        why = self._cached.get(spec.group)
        if why and spec.key in self.physical.parts.get(spec.group, ()):
            notes.append(f"not cached ({why}): Spark holds its partitions already" if held_by_spark(spec)
                         else f"cached: {why}")
        return notes

    @contextlib.contextmanager
    def engine(self, driver):
        """The SparkContext active in this process (borrowed: left running), or one
        started on the master at ``address`` or on the embedded ``local[N,F]`` master
        (F attempts per task, enough for the stages' retries), stopped after the run.
        Its JVM output goes to the run's ``spark.log``; the UI runs only when asked for.
        The driver runs on ``driver.session``."""
        from pipec.backends.spark import session as sessions
        live = sessions.session(self.address, str(driver.log_dir / "spark.log"), most_retries(self.ir), self.ui)
        driver.session = live
        try:
            yield
        finally:
            live.stop()  # only a context this plan started


def most_retries(graph: ir.IR) -> int:
    """The most ``retries`` any stage of ``graph`` asks for (0 when none does)."""
    return max((op.options.retries for _, op in graph.items()
                if isinstance(getattr(op, "options", None), ir.StageOptions)), default=0)


def loop_invariant(graph: ir.IR) -> dict[str, str]:
    """Collections read by every round of a loop they are made outside of, and why: these
    are cached. A collection read twice by the same round is computed twice instead,
    because PySpark's cache costs a trip through the JVM's block store (measured on
    benchmarks/mapreduce.pipe: 5.9 s cached, 3.3 s computed twice)."""
    out: dict[str, str] = {}
    for src, dst, _, kind in graph.edges():
        op = graph.op(src)
        if kind != "data" or isinstance(op, (ir.Var, ir.Rebind)) or op.node_shape != ir.COLLECTION:
            continue  # a var changes every round: it comes to the driver instead
        outer = [loop for loop in loops_of(graph, graph.op(dst).loop) if loop not in loops_of(graph, op.loop)]
        if outer and src not in out:
            out[src] = f"read by every round of {outer[0]}"
    return out


def held_by_spark(spec: TaskSpec) -> bool:
    """Whether a task's partition is one Spark holds already (the driver's blocks, a range
    slice with nothing fused onto it), so caching it would only copy it."""
    if spec.body == "take_part":
        return True
    segment = spec.args[0] if spec.body == "segment" else None
    return (segment is not None and isinstance(segment.head, s.RangeSlice) and not segment.steps
            and segment.terminal is None)


def _actor_text(op: ir.Actor) -> str:
    if op.pool_size is not None:
        return ("  -- partition i is member i % size's: a replica of it in each Python worker that serves it "
                "(its constructor, then every pool-wide call so far)")
    extra = [f"restarts {op.restarts}"]
    if op.checkpoint_every:
        extra.append(f"snapshot every {op.checkpoint_every} calls")
    return f"  -- hosted in the driver ({', '.join(extra)})"


class SparkBackend(Backend):
    name = "spark"
    description = ("Apache Spark (PySpark RDDs): fused stage passes, keyed shuffles, actors hosted "
                   "in the driver, resumable runs; needs Java 17+")
    capabilities = frozenset(FEATURES) - {"actor_handle"}
    engine_module, extra = "pyspark", "spark"
    actor_host = "driver"  # pool members live in the Python workers
    gap_hints = {
        "actor_handle": (
            "Spark has tasks but no actors: pipec hosts a Spark pipeline's actors in the driver, and a "
            "task cannot call into the driver while it runs. Call the actor at graph level instead "
            "(`value w = ps.weights()`, then `with weights = w`), or run this pipeline on an engine "
            "with actors (`pipec backends` lists them)"),
    }

    def __init__(self, address: str | None = None, ui: bool | None = None):
        from pipec.backends.spark.session import master_of
        super().__init__(master_of(address))
        # The Spark UI is off unless asked for (PIPEC_SPARK_UI=1, or ui=True from Python).
        self.ui = ui if ui is not None else os.environ.get("PIPEC_SPARK_UI") == "1"

    def check(self, graph: ir.IR) -> list[Diagnostic]:
        """Gaps as errors (see :attr:`gap_hints`), and warnings where Spark's behaviour
        differs from what a stage asks for."""
        out = super().check(graph)
        for node, op in graph.items():
            options = getattr(op, "options", None)
            if not isinstance(options, ir.StageOptions):
                continue
            where = _span(op.span)
            if options.effectful:
                out.append(Diagnostic(
                    WARNING, f"stage `{node}` is effectful, and Spark re-runs the tasks of a lost executor "
                             f"(and speculative copies of slow tasks), so its effects may happen more than once",
                    where, "pipec never retries it after an error itself; an effect that must happen once "
                           "belongs in a graph-level actor call or a sink", graph.info.path, code="spark"))
            asked = {k: v for k, v in options.resources.model_dump().items() if v is not None}
            if asked:
                text = ", ".join(f"{k} {v:g}" for k, v in asked.items())
                out.append(Diagnostic(
                    WARNING, f"stage `{node}` asks for resources ({text}): Spark applies them as a stage-level "
                             f"resource profile only on clusters that support one",
                    where, "YARN, Kubernetes and standalone clusters with dynamic allocation do; local "
                           "masters run the stage without them", graph.info.path, code="spark"))
        return out

    def lower(self, graph: ir.IR, params: dict[str, Any]):
        return SparkPlan(graph, params, self.address, self.ui)


def _span(span: ir.SpanModel | None) -> Span | None:
    return Span(span.line, span.column, span.end_line, span.end_column, 0, 0) if span else None
