"""The Ray backend: stages become Ray tasks, actors become Ray actors.

Lowering (decided statically, so `pipec compile` shows exactly what runs):

* A collection is a list of partitions held in Ray's object store, one ObjectRef each.
  Partitions stay there between stages and across loop rounds; the driver fetches only
  what a value, a ``collect`` or a sink needs.
* A *segment* is one Ray task per partition: a head (an input partition, a generated
  ``range`` block, a text file's own lines, a call of a sharded source, or the merge side
  of a shuffle), then fused element-wise stages, then a terminal (the partition itself,
  a fold partial, a count, or a shuffle split with one return per output partition).
  :func:`fusion` decides which stages fuse; the driver and the explained plan both use it.
* A collection read by several reductions or shuffles is a *shared scan*: their fold,
  count or split runs in the collection's own tasks, one pass over each partition.
* Inside a loop, the split of a shuffle input that no round changes is computed once.
* ``reduce`` folds each partition inside its segment; combine tasks then fold the
  partials FAN_IN at a time by partition index, level by level, and the driver folds
  the last group when it fetches the value.
* ``reduce_by_key``, ``group_by_key``, ``join`` and ``distinct`` split every partition
  by the stable key hash into k buckets (k returns of one task) and merge bucket j of
  every partition, in partition order, in task j.
* A task ships its segment (:mod:`pipec.backends.physical.steps`) and runs it with the
  shared interpreter, which retries user code (``retries``) and cuts it at its
  ``timeout`` inside the task; a failure is one ``StageFailure``, which the driver unwraps
  from Ray's ``RayTaskError``. Ray's ``max_retries`` (exception retries off) re-runs a
  task lost with its worker; ``resources`` map to ``num_cpus`` / ``num_gpus`` / ``memory``.

Actors are Ray actors with ``max_restarts`` for the process and Ray's own method retries
off (they are at-least-once and may reorder). Every graph-level call carries a sequence
number; the actor restores its last snapshot in its constructor, reports a gap when calls
are missing, and the driver replays its log in order, each call applied exactly once.
Actor pools are sets of Ray actors fed partitions as they free up; a member runs the
interpreter's element-wise step with its own bound method.

Every task body is the shared interpreter (``pipec.backends.runtime``), so sinks are
byte-identical to the local backend's. Ray itself is imported only when a plan runs.

Modules: :mod:`.engine` (starting or joining Ray), :mod:`.lowering` (static decisions),
:mod:`.plan` (explain, JSON, graph, and the backend), :mod:`.driver` (a run),
:mod:`.worker` (the interpreter's Ray wrappers and actor classes).
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
