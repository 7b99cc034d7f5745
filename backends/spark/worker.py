"""What runs on Spark's Python workers: one fused pass over one partition.

The driver lowers every chain of element-wise stages (plus the map side of a shuffle, or
the per-partition part of an action) into one ``mapPartitionsWithIndex`` call whose
function is :func:`run_pass` with a tuple of *steps*. Each step is a small picklable
description (a function named by module and attribute, never the function object), so
building the RDDs on the driver imports no user code: functions are resolved by name
inside the task. Every step calls the shared task bodies in
:mod:`pipec.backends.runtime.tasks` and :mod:`pipec.backends.runtime.semantics`, so results are the
reference backend's, bit for bit.

A user exception does not fail the Spark task. Spark's retry count is per application
(``spark.task.maxFailures``), while pipec's is per stage and an ``effectful`` stage must
not be retried blindly. So each step retries its own function as often as its stage
allows, and if the last attempt fails the partition's output becomes a single
:class:`Failed` record that flows through later steps untouched and reaches the driver,
which raises it with the stage's name and source position. Spark's own task retries are
left for what lineage recovery is for: a lost executor or a crashed worker process.

Pure Python apart from ``pyspark.SparkFiles`` (imported only when modules were shipped).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from pipec.backends.runtime import semantics
from pipec.backends.runtime.tasks import apply_elementwise, pipec_folders, resolve, user_frame

# pipec's own folders: never unloaded when a new run swaps the user's modules.
_PIPEC_PACKAGES = pipec_folders()


# ---- what a pass is told -------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """Per-run facts every pass needs: which run (so a reused worker process reloads the
    user's modules when a new run starts) and where those modules are."""

    run: str
    roots: tuple[str, ...] = ()  # module folders on a shared filesystem (local masters)
    archive: str | None = None  # or a zip shipped with SparkContext.addPyFile (clusters)


@dataclass(frozen=True)
class Fn:
    """A user function named by module and attribute; resolved inside the task."""

    module: str
    attr: str

    def get(self) -> Callable:
        return resolve(self.module, self.attr)

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.attr}"


@dataclass(frozen=True)
class Policy:
    """A stage's fault-tolerance options, as the task wrapper enforces them."""

    retries: int = 0
    timeout: float | None = None
    effectful: bool = False


@dataclass(frozen=True)
class Pool:
    """An actor pool as Spark runs it: one instance per Python worker process, built on
    first use and reused by every later partition of the run."""

    node: str
    cls: Fn
    args: tuple = ()
    kwargs: tuple = ()  # (name, value) pairs


# A stage's `with` bindings: name -> ("lit", value) | ("bc", Broadcast) | ("pending", node).
Bindings = tuple[tuple[str, tuple], ...]


class Failed:
    """The whole output of a partition whose stage failed: carried to the driver as data."""

    __slots__ = ("node", "partition", "kind", "error", "message", "frame")

    def __init__(self, node: str, partition: int, kind: str, error: str = "", message: str = "",
                 frame: str | None = None):
        self.node, self.partition, self.kind = node, partition, kind
        self.error, self.message, self.frame = error, message, frame

    def __reduce__(self):
        return (Failed, (self.node, self.partition, self.kind, self.error, self.message, self.frame))

    def __repr__(self) -> str:
        return f"Failed({self.node!r}, partition {self.partition}: {self.error}: {self.message})"


def failed_in(items: list) -> Failed | None:
    """The failure a partition carries, if it is one."""
    if len(items) == 1 and type(items[0]) is Failed:
        return items[0]
    return None


# ---- steps --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expand:
    """First step of a source: turn the partition's one descriptor into its items.

    ``range``: the descriptor is (start, stop); ``data``: it is the list of items (read
    or computed on the driver); ``sharded``: it is the partition index, and the source
    function is called here, on the worker."""

    node: str
    kind: str
    fn: Fn | None = None
    args: tuple = ()
    kwargs: tuple = ()
    partitions: int = 0
    policy: Policy = Policy()

    def apply(self, index: int, items: list) -> list:
        if len(items) != 1:
            raise RuntimeError(f"source {self.node}: partition {index} holds {len(items)} descriptors, not 1")
        desc = items[0]
        if self.kind == "range":
            return list(range(desc[0], desc[1]))
        if self.kind == "data":
            return desc
        fn = self.fn
        kwargs = dict(self.kwargs)
        return attempt(self.node, self.policy, index,
                       lambda: list(fn.get()(*self.args, **kwargs, partition=desc, partitions=self.partitions)))

    def describe(self) -> str:
        what = {"range": "range slice", "data": "items from the driver"}.get(self.kind)
        return f"source {self.fn.dotted} sharded" if what is None else f"source ({what})"


@dataclass(frozen=True)
class Elementwise:
    """``map``, ``flat_map``, ``filter``, ``map_batches``, ``map_values`` of one stage."""

    node: str
    kind: str
    fn: Fn | None
    pool: Pool | None
    method: str | None
    bindings: Bindings
    policy: Policy

    def apply(self, index: int, items: list) -> list:
        try:
            fn = _pool_member(self.pool, self.method) if self.pool is not None else self.fn.get()
        except Exception as exc:
            return [_failure(self.pool.node if self.pool is not None else self.node, index, exc)]
        values = _bound(self.bindings)
        if not values and self.kind in _PLAIN:
            # The same calls in the same order as apply_elementwise, through the builtins'
            # C loops: a fused pass over millions of items is 15-30% faster.
            plain = _PLAIN[self.kind]
            return attempt(self.node, self.policy, index, lambda: plain(fn, items))
        return attempt(self.node, self.policy, index, lambda: apply_elementwise(self.kind, fn, items, values, index))

    def describe(self) -> str:
        callee = f"{self.pool.node}.{self.method}" if self.pool is not None else self.fn.dotted
        return f"{self.kind} {callee}"


def _flat_map(fn: Callable, items: list) -> list:
    out: list = []
    for item in items:
        out.extend(fn(item))
    return out


# Element-wise kinds without bindings, as builtins: what apply_elementwise computes.
_PLAIN: dict[str, Callable[[Callable, list], list]] = {
    "map": lambda fn, items: list(map(fn, items)),
    "filter": lambda fn, items: list(filter(fn, items)),
    "flat_map": _flat_map,
}


@dataclass(frozen=True)
class Split:
    """Map side of a keyed shuffle: bucket this partition by the stable key hash.

    Emits one ``(destination, (tag, source partition, bucket))`` record per non-empty
    bucket, so the reduce side can put the buckets back in source-partition order
    whatever order the shuffle delivers them in. ``reduce_by_key`` combines map-side
    first. ``tag`` tells a join's left input (0) from its right (1)."""

    node: str
    how: str  # reduce_by_key | group_by_key | join | distinct
    partitions: int
    fn: Fn | None = None
    tag: int = 0
    policy: Policy = Policy()

    def apply(self, index: int, items: list) -> list:
        k = self.partitions
        if self.how == "reduce_by_key":
            fn = self.fn.get()
            items = attempt(self.node, self.policy, index, lambda: semantics.reduce_by_key_partial(fn, items))
            if failed_in(items):
                return items
        try:
            if self.how == "distinct":
                buckets = semantics.distinct_split(items, k)
            else:
                buckets = semantics.shuffle_split(items, k, self.how)
        except TypeError as exc:
            return [Failed(self.node, index, "plain", message=str(exc))]
        return [(j, (self.tag, index, bucket)) for j, bucket in enumerate(buckets) if bucket]

    def failure_records(self, failure: Failed, index: int) -> list:
        """A failure crossing the shuffle: delivered to output partition 0."""
        return [(0, (self.tag, -1, failure))]

    def describe(self) -> str:
        return f"{self.how} map side" + (" (combine per key)" if self.how == "reduce_by_key" else "")


@dataclass(frozen=True)
class Merge:
    """Reduce side of a keyed shuffle: the buckets of one output partition, merged in
    source-partition order (left input before right for a join)."""

    node: str
    how: str
    fn: Fn | None = None
    policy: Policy = Policy()

    def apply(self, index: int, items: list) -> list:
        records = sorted((value for _, value in items), key=lambda r: (r[0], r[1]))
        for _, _, bucket in records:
            if type(bucket) is Failed:
                return [bucket]
        if self.how == "join":
            left = [b for tag, _, b in records if tag == 0]
            right = [b for tag, _, b in records if tag == 1]
            return semantics.join_merge(left, right)
        parts = [b for _, _, b in records]
        if self.how == "reduce_by_key":
            fn = self.fn.get()
            return attempt(self.node, self.policy, index, lambda: semantics.reduce_by_key_merge(fn, parts))
        if self.how == "group_by_key":
            return semantics.group_merge(parts)
        if self.how == "distinct":
            return semantics.distinct_merge(parts)
        raise ValueError(f"unknown merge {self.how!r}")

    def describe(self) -> str:
        return f"{self.how} merge (by source partition)"


@dataclass(frozen=True)
class Fold:
    """Per-partition part of ``reduce``: the partition's left fold (EMPTY if empty)."""

    node: str
    fn: Fn
    policy: Policy = Policy()

    def apply(self, index: int, items: list) -> list:
        fn = self.fn.get()
        result = attempt(self.node, self.policy, index, lambda: [semantics.fold(fn, items)])
        return result

    def describe(self) -> str:
        return f"fold {self.fn.dotted}"


@dataclass(frozen=True)
class ToGroup:
    """After :class:`Fold`: key the partial by its combine group, ``index // fan_in``
    (``combine_partials`` groups consecutive partitions, so the tree is known upfront)."""

    node: str
    fan_in: int

    def apply(self, index: int, items: list) -> list:
        return [(index // self.fan_in, (index, items[0]))]

    def failure_records(self, failure: Failed, index: int) -> list:
        return [(index // self.fan_in, (index, failure))]

    def describe(self) -> str:
        return f"key by combine group (partition // {self.fan_in})"


@dataclass(frozen=True)
class CombineGroup:
    """One group of a reduction's first combine level: its partials in partition order."""

    node: str
    fn: Fn
    policy: Policy = Policy()

    def apply(self, index: int, items: list) -> list:
        records = sorted((value for _, value in items), key=lambda r: r[0])
        for _, partial in records:
            if type(partial) is Failed:
                return [partial]
        fn = self.fn.get()
        return attempt(self.node, self.policy, index,
                       lambda: [semantics.combine_group(fn, [p for _, p in records])])

    def describe(self) -> str:
        return f"combine {self.fn.dotted} in partition order"


@dataclass(frozen=True)
class Count:
    node: str

    def apply(self, index: int, items: list) -> list:
        return [len(items)]

    def describe(self) -> str:
        return "count"


@dataclass(frozen=True)
class Gather:
    """The partition's items as one list, so the driver gets them partition by partition."""

    node: str

    def apply(self, index: int, items: list) -> list:
        return [items]

    def describe(self) -> str:
        return "gather"


@dataclass(frozen=True)
class Steps:
    """The function given to ``mapPartitionsWithIndex``: the steps, applied in order."""

    context: Context
    steps: tuple

    def __call__(self, index: int, iterator) -> list:
        prepare(self.context)
        items = list(iterator)
        for step in self.steps:
            failure = failed_in(items)
            if failure is not None:
                return self._crossing(failure, index)
            items = step.apply(index, items)
        failure = failed_in(items)
        return self._crossing(failure, index) if failure is not None else items

    def _crossing(self, failure: Failed, index: int) -> list:
        last = self.steps[-1] if self.steps else None
        return last.failure_records(failure, index) if hasattr(last, "failure_records") else [failure]


def destination(key: int) -> int:
    """The partitioner of pipec's shuffles: records are keyed by their output partition,
    which :func:`semantics.shuffle_split` chose by the stable key hash."""
    return key


# ---- running user code under a stage's policy --------------------------------------------------


class _StageTimeout(BaseException):
    """Raised by SIGALRM in the task; a BaseException so user code cannot swallow it."""


def _alarm(signum, frame):
    raise _StageTimeout()


def attempt(node: str, policy: Policy, index: int, body: Callable[[], list]) -> list:
    """``body()`` with the stage's retries and timeout; a Failed record if it never works."""
    tries = 0 if policy.effectful else policy.retries
    for n in range(tries + 1):
        try:
            return _with_timeout(policy.timeout, body)
        except _StageTimeout:
            return [Failed(node, index, "timeout", message=f"{policy.timeout:g}")]
        except Exception as exc:
            if n == tries:
                return [_failure(node, index, exc)]
    raise AssertionError("unreachable")


def _with_timeout(timeout: float | None, body: Callable[[], list]) -> list:
    if timeout is None or threading.current_thread() is not threading.main_thread():
        return body()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return body()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _failure(node: str, index: int, exc: BaseException) -> Failed:
    return Failed(node, index, "error", type(exc).__name__, str(exc), user_frame(exc))


def _bound(bindings: Bindings) -> dict[str, Any]:
    values = {}
    for name, (kind, value) in bindings:
        if kind == "lit":
            values[name] = value
        elif kind == "bc":
            values[name] = value.value
        else:
            raise RuntimeError(f"binding `{name}` was never computed (a plan only for display?)")
    return values


# ---- per-process state: user modules and pool members --------------------------------------------

_ACTIVE: dict[str, Any] = {"run": None, "roots": ()}
_POOLS: dict[tuple[str, str], Any] = {}


def prepare(context: Context) -> None:
    """Make this run's user modules importable, forgetting an earlier run's.

    Spark reuses Python worker processes across jobs and across runs of one session, so
    a module imported for an earlier run (perhaps edited since, or a different module of
    the same name from another folder) would otherwise be used again."""
    if _ACTIVE["run"] == context.run:
        return
    if context.archive is not None:
        from pyspark import SparkFiles
        roots: tuple[str, ...] = (SparkFiles.get(context.archive),)
    else:
        roots = context.roots
    old = _ACTIVE["roots"]
    if old:
        prefixes = tuple(os.path.join(r, "") for r in old)
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) or ""
            if path.startswith(prefixes) and not path.startswith(_PIPEC_PACKAGES):
                del sys.modules[name]
        sys.path[:] = [p for p in sys.path if p not in old]
    resolve.cache_clear()
    _POOLS.clear()
    for root in reversed(roots):
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)
        # A fresh listing of the folder (a module may have been written a moment ago).
        # Not importlib.invalidate_caches(): in a new worker it imports importlib.metadata,
        # a third of a second on every run.
        sys.path_importer_cache.pop(root, None)
    _ACTIVE.update(run=context.run, roots=roots)


def _pool_member(pool: Pool, method: str) -> Callable:
    key = (_ACTIVE["run"], pool.node)
    member = _POOLS.get(key)
    if member is None:
        member = _POOLS[key] = pool.cls.get()(*pool.args, **dict(pool.kwargs))
    return getattr(member, method)


def pool_members() -> int:
    """How many pool members this worker process holds (for tests)."""
    return len(_POOLS)
