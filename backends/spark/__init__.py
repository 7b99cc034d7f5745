"""The Spark backend: pipelines lowered onto PySpark RDDs behind the one Backend interface.

Spark has tasks but no actors, so pipec closes the gap itself: actors are hosted in the
driver (graph-level calls run there between jobs, numbered, snapshotted, replayed after a
crash, and a run can resume after its driver died), and an actor pool becomes one
instance per Python worker. What Spark cannot do at all, an actor handle called from
inside a running task, is refused by ``pipec check --backend spark`` before anything runs.

Modules: :mod:`.plan` (the shared physical plan with Spark's mapping: what ``compile``
and ``graph`` show), :mod:`.driver` (each graph step of that plan as RDD operations),
:mod:`.worker` (what tasks run: the shared interpreter in a ``mapPartitionsWithIndex``
pass), :mod:`.session` (starting Spark quietly, shipping modules). Records for
``pipec run --resume`` are the shared :mod:`pipec.backends.runtime.resume`.
PySpark is imported only when a plan runs.
"""

from __future__ import annotations

import os
from typing import Any

from pipec.compiler import ir
from pipec.compiler.capabilities import FEATURES
from pipec.dsl.diagnostics import WARNING, Diagnostic
from pipec.dsl.source import Span
from pipec.backends.base import Backend


class SparkBackend(Backend):
    name = "spark"
    description = ("Apache Spark (PySpark RDDs): fused stage passes, keyed shuffles, actors hosted "
                   "in the driver, resumable runs; needs Java 17+")
    capabilities = frozenset(FEATURES) - {"actor_handle"}
    engine_module, extra = "pyspark", "spark"
    gap_hints = {
        "actor_handle": (
            "Spark has tasks but no actors: pipec hosts a Spark pipeline's actors in the driver, and a "
            "task cannot call into the driver while it runs. Call the actor at graph level instead "
            "(`value w = ps.weights()`, then `with weights = w`), or run this pipeline on an engine "
            "with actors (`pipec backends` lists them)"),
    }

    def __init__(self, address: str | None = None, ui: bool | None = None):
        super().__init__(address)
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
        from pipec.backends.spark.plan import SparkPlan
        return SparkPlan(graph, params, self.address, self.ui)


def _span(span: ir.SpanModel | None) -> Span | None:
    return Span(span.line, span.column, span.end_line, span.end_column, 0, 0) if span else None
