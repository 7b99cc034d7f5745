"""What runs on Spark's Python workers: one shared segment per ``mapPartitionsWithIndex``.

The driver lowers every chain of element-wise stages (plus the map side of a shuffle, or
the per-partition part of an action) into one :class:`~pipec.backends.physical.steps.Segment`
and runs it through the shared interpreter with a :class:`Pass`. What is Spark's own
lives here: how records arrive and leave a pass (a block sent by the driver, shuffle
records keyed by their destination partition, a reduction's partials keyed by their
combine group ``index // fan_in``), which run's modules a reused worker process imports,
and actor pool members, one per Python worker process.

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
import sys
from dataclasses import dataclass
from typing import Any, Callable

from pipec.backends.physical import steps as s
from pipec.backends.runtime import batches
from pipec.backends.runtime.interpreter import Given, StageFailure, run_finisher, run_segment
from pipec.backends.runtime.tasks import pipec_folders, resolve

# pipec's own folders: never unloaded when a new run swaps the user's modules.
_PIPEC_PACKAGES = pipec_folders()


@dataclass(frozen=True)
class Pool:
    """An actor pool as Spark runs it: one instance per Python worker process, built on
    first use and reused by every later partition of the run."""

    node: str
    cls: s.Fn
    args: tuple = ()
    kwargs: tuple = ()  # (name, value) pairs


@dataclass(frozen=True)
class Context:
    """Per-run facts every pass needs: which run (so a reused worker process reloads the
    user's modules when a new run starts) and where those modules are."""

    run: str
    roots: tuple[str, ...] = ()  # module folders on a shared filesystem (local masters)
    archive: str | None = None  # or a zip shipped with SparkContext.addPyFile (clusters)


@dataclass(frozen=True)
class Pass:
    """The function given to ``mapPartitionsWithIndex``: ``work`` (a segment, or the
    first combine level of a reduction) over one partition, framed for Spark.

    In: the RDD's records are the items, or with ``block`` one record holding them (a
    partition sent by the driver); a merge or a combine gets ``(destination, record)``
    pairs. Out: a split's buckets as ``(destination, (tag, source partition, bucket))``
    (``tag``: a join's side); with ``fan_in`` the result keyed by its combine group;
    a terminal's result, or with ``whole`` the partition, as one record; else the items."""

    context: Context
    work: s.Segment | s.Combine
    slots: tuple = ()  # the Broadcasts the steps' Slot bindings read
    pools: tuple[Pool, ...] = ()  # the pools serving its steps
    block: bool = False
    whole: bool = False
    tag: int = 0
    fan_in: int = 0

    def __call__(self, index: int, iterator) -> list:
        prepare(self.context)
        records = list(iterator)
        keyed = isinstance(self.work, s.Combine) or isinstance(self.work.head, s.Merge)
        failures = carried(records, keyed)
        if not failures:
            try:
                return self._out(index, self._run(index, records, keyed))
            except StageFailure as failure:
                failures = [failure]
        if isinstance(self.work, s.Segment) and isinstance(self.work.terminal, s.Split):
            return [(0, (self.tag, -1, f)) for f in failures]  # across the shuffle, to partition 0
        if self.fan_in:
            return [(index // self.fan_in, (index, f)) for f in failures]
        return failures

    def _run(self, index: int, records: list, keyed: bool):
        if isinstance(self.work, s.Combine):
            return run_finisher(self.work, [p for _, p in sorted((v for _, v in records), key=lambda r: r[0])])
        # A columnar partition (a pyarrow Table) travels as one record, like a block.
        block = self.block or len(records) == 1 and batches.is_table(records[0])
        items = [v for _, v in records] if keyed else records[0] if block else records
        slots = Given([b.value for b in self.slots], members=self._member)
        return run_segment(self.work, index, items, slots)

    def _out(self, index: int, result) -> list:
        terminal = self.work.terminal if isinstance(self.work, s.Segment) else self.work
        if isinstance(terminal, s.Split):
            return [(j, (self.tag, index, bucket)) for j, bucket in enumerate(result) if bucket]
        if self.fan_in:
            return [(index // self.fan_in, (index, result))]
        return [result] if self.whole or terminal is not None or batches.is_table(result) else result

    def _member(self, node: str, method: str) -> Callable:
        """The bound ``method`` of this worker process's member of pool ``node``."""
        key = (self.context.run, node)
        member = _POOLS.get(key)
        if member is None:
            pool = next(p for p in self.pools if p.node == node)
            member = _POOLS[key] = resolve(pool.cls.module, pool.cls.attr)(*pool.args, **dict(pool.kwargs))
        return getattr(member, method)


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

