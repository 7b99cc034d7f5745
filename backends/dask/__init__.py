"""The Dask backend: each graph step of the physical plan is a real Dask task graph.

The shared planner (:mod:`pipec.backends.physical.planner`) splits the pipeline into
driver steps and graph steps and every graph step into tasks with readable keys
(``grads-3``, ``total``) and explicit dependencies; ``explain``, ``to_json`` and
``graph`` show exactly those (:mod:`pipec.backends.physical.explain`), and ``run``
submits them, one Dask key per task. Actors are Dask actors hosted in
an :class:`~pipec.backends.runtime.actors.ActorHost`, so they survive the death of their
worker (checkpoint and replay). Importing this package does not import Dask: only
``run`` starts the engine.
"""

from __future__ import annotations

from typing import Any

# Every Dask worker imports this package on its way to `backends.dask.worker`, so importing
# it must stay cheap: the backend (which needs the compiler, networkx and pydantic) is loaded
# only when it is asked for.
_LAZY = {"DaskBackend": "pipec.backends.dask.plan", "DaskPlan": "pipec.backends.dask.plan"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
