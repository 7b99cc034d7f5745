"""The Ray backend: each task of the shared physical plan is a Ray task, actors are Ray actors.

The engine-neutral planner (:mod:`pipec.backends.physical.planner`) decides fusion,
splits, merges and reduction trees once; ``explain``, ``to_json`` and ``graph`` show that
plan with Ray's mapping (:mod:`pipec.backends.physical.explain`), and the driver runs it:
per graph step one Ray remote call per task, named by its key, reading the ObjectRefs of
the tasks it depends on. A shuffle split has one Ray return per bucket and merge task j
reads bucket j of every split; collections and values later steps read stay in the object
store. Every task body is the shared interpreter (``pipec.backends.runtime``), which
retries and times user code inside the task; Ray's ``max_retries`` (exception retries off)
re-runs a pure task lost with its worker.

Actors are Ray actors with Ray's restarts and method retries off: pipec restarts an
actor itself, from a standby process started beside it, which restores the last
snapshot when it takes over (a lost process is known within milliseconds, where Ray's
own restart took seconds). Every graph-level call carries a sequence number; the actor
reports a gap when calls are missing, and the driver replays its log in order, each
call applied exactly once. A pool task is a call of its member actor; pool members keep
Ray's restarts (``max_restarts``).

Modules: :mod:`.engine` (starting or joining Ray), :mod:`.plan` (the backend, explain,
run), :mod:`.driver` (a run), :mod:`.worker` (task bodies and actor classes). Ray itself
is imported only when a plan runs.
"""

from __future__ import annotations

from typing import Any

# Every Ray worker imports this package on its way to `backends.ray.worker`, so importing it
# must stay cheap: the backend (which needs the compiler, networkx and pydantic) is loaded
# only when it is asked for.
_LAZY = {"RayBackend": "pipec.backends.ray.plan", "RayPlan": "pipec.backends.ray.plan"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
