"""What runs on Spark's Python workers: one shared segment per ``mapPartitionsWithIndex``.

Every segment of the shared physical plan (a head, fused element-wise stages, a terminal)
runs as one ``mapPartitionsWithIndex`` pass through the shared interpreter, framed by
:class:`Pass`. What is Spark's own lives here: how records arrive and leave a pass
(shuffle records keyed by their destination partition), which run's modules a reused
worker process imports, and the replicas of actor pool members (see :class:`Pool`).

A failing stage does not fail the Spark task. Spark's retry count is per application
(``spark.task.maxFailures``), while pipec's is per stage (the interpreter retries user
code) and an ``effectful`` stage must not be retried blindly. So a pass catches the
:class:`StageFailure` and emits it as a record, which later passes hand on untouched,
across shuffles too, until it reaches the driver. Spark's own task retries are left for
what lineage recovery is for: a lost executor or a crashed worker process.

Pure Python apart from ``pyspark.SparkFiles`` (imported only when modules were shipped).
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable

from pipec.backends.physical import steps as s
from pipec.backends.runtime import batches, storage
from pipec.backends.runtime.interpreter import Given, StageFailure, failure, run_segment
from pipec.backends.runtime.tasks import pipec_folders, resolve

# pipec's own folders: never unloaded when a new run swaps the user's modules.
_PIPEC_PACKAGES = pipec_folders()


@dataclass(frozen=True)
class Pool:
    """An actor pool as Spark runs it. Its ``size`` members are logical, as on the other
    engines: partition i of a stage the pool serves is member ``i % size``'s. Spark cannot
    pin a task to a process, so each Python worker that serves member m builds a replica
    of it on first use (its constructor) and, before every use, applies the pool-wide
    calls it has not applied yet, in their order, each once (``each``: every call so far,
    numbered by the driver and sent with the pool). A replica is what a restarted member
    is on Dask or Ray: the constructor plus the pool-wide calls."""

    node: str
    cls: s.Fn
    args: tuple = ()
    kwargs: tuple = ()  # (name, value) pairs
    size: int = 1
    each: tuple = ()  # (seq, method, args, kwargs) of every call to every member so far


@dataclass(frozen=True)
class Context:
    """Per-run facts every pass needs: which run (so a reused worker process reloads the
    user's modules when a new run starts), where those modules are, and the run's storage
    options from the driver (the endpoint and credentials given in Python; their text
    shows no value)."""

    run: str
    roots: tuple[str, ...] = ()  # module folders on a shared filesystem (local masters)
    archive: str | None = None  # or a zip shipped with SparkContext.addPyFile (clusters)
    storage: storage.Options | None = None


@dataclass(frozen=True)
class Pass:
    """The function given to ``mapPartitionsWithIndex``: one segment of the physical plan
    over one partition, framed for Spark.

    In: the RDD's records are the items; a segment whose head is a merge gets the
    shuffle's ``(destination, (side, source partition, bucket))`` records. Out: a split's
    buckets as ``(destination, (tag, source partition, bucket))`` (``tag``: the side of
    the merge that reads them, a join's left or right); a terminal's result as one
    record; else the items."""

    context: Context
    segment: s.Segment
    slots: tuple = ()  # per slot of the segment: a Broadcast, or None (a split it merges)
    pools: tuple[Pool, ...] = ()  # the pools serving its steps
    tag: int = 0

    def __call__(self, index: int, iterator) -> list:
        prepare(self.context)
        records = list(iterator)
        keyed = isinstance(self.segment.head, s.Merge)
        failures = carried(records, keyed)
        if not failures:
            try:
                return self._out(index, self._run(index, records, keyed))
            except StageFailure as failure:
                failures = [failure]
        if isinstance(self.segment.terminal, s.Split):
            return [(0, (self.tag, -1, f)) for f in failures]  # across the shuffle, to partition 0
        return failures

    def _run(self, index: int, records: list, keyed: bool):
        # A columnar partition (a pyarrow Table) travels as one record.
        if not keyed and len(records) == 1 and batches.is_table(records[0]):
            items = records[0]
        else:
            items = [v for _, v in records] if keyed else records
        slots = Given([None if b is None else b.value for b in self.slots],
                      members=lambda node, method: self._member(node, method, index))
        return run_segment(self.segment, index, items, slots)

    def _out(self, index: int, result) -> list:
        terminal = self.segment.terminal
        if isinstance(terminal, s.Split):
            return [(j, (self.tag, index, bucket)) for j, bucket in enumerate(result) if bucket]
        return [result] if terminal is not None or batches.is_table(result) else result

    def _member(self, node: str, method: str, index: int) -> Callable:
        """The bound ``method`` of this process's replica of the member of pool ``node``
        that serves partition ``index``, every pool-wide call so far applied."""
        pool = next(p for p in self.pools if p.node == node)
        obj, _ = replica(self.context.run, pool, index % pool.size)
        return getattr(obj, method)


@dataclass(frozen=True)
class EachCall:
    """The function of the job making pool-wide call ``seq`` (the newest of ``pool.each``):
    partition m is member m, and gives the answer of this process's replica of it. The
    replica applies the call as it catches up; one that applied it already (a task Spark
    ran again in the same process) gives the answer it kept, never applying it twice.

    Out: one record, the answer, or the StageFailure of the user code that raised."""

    context: Context
    pool: Pool
    seq: int

    def __call__(self, index: int, iterator) -> list:
        prepare(self.context)
        method = next(m for n, m, _, _ in self.pool.each if n == self.seq)
        try:
            _, calls = replica(self.context.run, self.pool, index)
        except Exception as exc:
            return [failure(f"{self.pool.node}.each.{method}", None, exc)]
        from pipec.backends.runtime.actors import SKIPPED
        return [calls.last if calls.applied == self.seq else SKIPPED]


def replica(run: str, pool: Pool, member: int) -> tuple:
    """This process's replica of ``member`` of ``pool`` in ``run`` and its record of the
    pool-wide calls it applied: built on first use, then brought up to date with
    ``pool.each`` (each call gets its own copy of the arguments, as over a wire). A call
    that raises leaves the replica at the calls before it, and the error goes up."""
    # Imported here: every Python worker imports this module, and only pools need it (40 ms).
    from pipec.backends.runtime.actors import EachCalls
    key = (run, pool.node, member)
    held = _POOLS.get(key)
    if held is None:
        args, kwargs = _copy((pool.args, dict(pool.kwargs)))
        obj = resolve(pool.cls.module, pool.cls.attr)(*args, **kwargs)
        held = _POOLS[key] = (obj, EachCalls(obj, None))
    obj, calls = held
    for seq, method, args, kwargs in pool.each:
        if seq > calls.applied:
            args, kwargs = _copy((args, kwargs))
            calls.call(obj, seq, method, args, kwargs)
    return held


def _copy(value):
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def unblock(block: list) -> list:
    """A partition the driver sent as one record (its items), as its items."""
    return block


def carried(records: list, keyed: bool) -> list[StageFailure]:
    """The failures a partition's input carries from an earlier pass (none: it is data)."""
    if keyed:
        return [v[-1] for _, v in records if type(v[-1]) is StageFailure]
    return records if records and type(records[0]) is StageFailure else []


def destination(key: int) -> int:
    """The partitioner of pipec's shuffles: records are keyed by their output partition,
    which :func:`semantics.shuffle_split` chose by the stable key hash."""
    return key


# ---- per-process state: user modules and pool members --------------------------------------------

_ACTIVE: dict[str, Any] = {"run": None, "roots": ()}
_POOLS: dict[tuple[str, str, int], tuple] = {}  # (run, pool, member) -> replica


def prepare(context: Context) -> None:
    """Make this run's user modules importable, forgetting an earlier run's.

    Spark reuses Python worker processes across jobs and across runs of one session, so
    a module imported for an earlier run (perhaps edited since, or a different module of
    the same name from another folder) would otherwise be used again. The run's storage
    options replace an earlier run's before the pass touches storage."""
    storage.adopt(context.storage)
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

