"""The Spark backend: pipelines lowered onto PySpark RDDs behind the one Backend interface.

Spark has tasks but no actors, so pipec closes the gap itself: actors are hosted in the
driver (graph-level calls run there between jobs, numbered, snapshotted, replayed after a
crash, and a run can resume after its driver died), and an actor pool's members are
replicated in the Python workers that serve them, each replica its constructor plus the
pool-wide calls (``pool.each.m(...)``) applied in order. What Spark cannot do at all, an
actor handle called from inside a running task, is refused by ``pipec check --backend
spark`` before anything runs.

Modules: :mod:`.plan` (the shared physical plan with Spark's mapping: what ``compile``
and ``graph`` show), :mod:`.driver` (each graph step of that plan as RDD operations),
:mod:`.worker` (what tasks run: the shared interpreter in a ``mapPartitionsWithIndex``
pass), :mod:`.session` (starting Spark quietly, shipping modules). Records for
``pipec run --resume`` are the shared :mod:`pipec.backends.runtime.resume`.
PySpark is imported only when a plan runs.
"""

from __future__ import annotations

from typing import Any

# Every Python worker Spark starts imports this package on its way to
# `backends.spark.worker`, so importing it must stay cheap: the backend (which needs the
# compiler, networkx and pydantic) is loaded only when it is asked for.
_LAZY = {"SparkBackend": "pipec.backends.spark.plan", "SparkPlan": "pipec.backends.spark.plan"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
