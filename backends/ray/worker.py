"""What runs on Ray workers: task bodies and actor classes.

Every Ray worker that runs a pipec task imports this module, so it imports only the shared
runtime (no networkx, no pydantic, no compiler): worker start-up stays cheap."""

from __future__ import annotations

from functools import lru_cache


from pipec.backends.runtime import semantics, sources
from pipec.backends.runtime.actors import VersionedHost
from pipec.backends.runtime.tasks import apply_elementwise, ensure_path, resolve, user_frame


class StageError(Exception):
    """A user function failed on a worker: which stage, which partition, and where."""

    def __init__(self, stage: str, partition: int | None, kind: str, message: str, frame: str | None):
        super().__init__(stage, partition, kind, message, frame)
        self.stage, self.partition, self.kind, self.message, self.frame = stage, partition, kind, message, frame

    def __str__(self) -> str:
        place = f" (partition {self.partition})" if self.partition is not None else ""
        return f"{self.kind}: {self.message}{place} in `{self.stage}`"


def _failure(stage: str, partition: int | None, exc: BaseException) -> StageError:
    return StageError(stage, partition, type(exc).__name__, str(exc), user_frame(exc))


def run_segment(spec: tuple, *args):
    """One partition of a segment: head, fused element-wise steps, terminal.

    ``spec`` is ``(module paths, head, steps, terminal, partition)``; ``args`` hold the
    head's inputs (partitions or shuffle buckets, which Ray resolves) and then the
    values bound by the steps, in order.
    """
    paths, head, steps, terminal, partition = spec
    ensure_path(paths)
    where = head[1]
    try:
        items, used = _head_items(head, args, partition)
        if isinstance(items, range) and (not steps or steps[0][1] == "map_batches"):
            items = list(items)  # a partition, or a batch handed to user code, is a list
        for stage, kind, module, attr, names in steps:
            where = stage
            bindings = dict(zip(names, args[used:used + len(names)]))
            used += len(names)
            items = apply_elementwise(kind, resolve(module, attr), items, bindings, partition)
        if terminal[0] == "scan":
            return _scan(terminal, items, args, used, partition)
        where = terminal[1]
        return _terminal(terminal, items)
    except StageError:
        raise
    except Exception as exc:
        raise _failure(where, partition, exc) from None


def _scan(terminal: tuple, items: list, args: tuple, used: int, partition: int):
    """A shared scan: the partition itself (if anything else reads it), then for each
    branch its element-wise steps and terminal, all from one pass over the input."""
    _, _, keep, branches = terminal
    outputs = [items] if keep else []
    for steps, branch_terminal in branches:
        where = branch_terminal[1]
        try:
            out = items
            for stage, kind, module, attr, names in steps:
                where = stage
                bindings = dict(zip(names, args[used:used + len(names)]))
                used += len(names)
                out = apply_elementwise(kind, resolve(module, attr), out, bindings, partition)
            where = branch_terminal[1]
            result = _terminal(branch_terminal, out)
        except Exception as exc:
            raise _failure(where, partition, exc) from None
        outputs.extend(result if returns_of(branch_terminal) > 1 else [result])
    return tuple(outputs) if len(outputs) > 1 else outputs[0]


def returns_of(terminal: tuple) -> int:
    """How many objects a terminal gives: one per bucket for a split, else one."""
    kind = terminal[0]
    if kind in ("rbk_split", "split"):
        return terminal[-1]
    if kind == "distinct_split":
        return terminal[2]
    if kind == "scan":
        return int(terminal[2]) + sum(returns_of(t) for _, t in terminal[3])
    return 1


def _head_items(head: tuple, args: tuple, partition: int) -> tuple[list, int]:
    kind = head[0]
    if kind == "parts":
        return args[0], 1
    if kind == "range":
        # Left a range when a map, filter or flat_map reads it next: no list is built.
        return range(head[2], head[3]), 0
    if kind == "text":
        return sources.read_lines_part(head[2], partition, head[3], args[0]), 1
    if kind == "shard":
        _, _, module, attr, fargs, fkwargs, k = head
        return list(resolve(module, attr)(*fargs, **fkwargs, partition=partition, partitions=k)), 0
    if kind == "rbk_merge":
        _, _, module, attr, n = head
        return semantics.reduce_by_key_merge(resolve(module, attr), args[:n]), n
    if kind == "group_merge":
        return semantics.group_merge(args[:head[2]]), head[2]
    if kind == "distinct_merge":
        return semantics.distinct_merge(args[:head[2]]), head[2]
    if kind == "join_merge":
        nl, nr = head[2], head[3]
        return semantics.join_merge(args[:nl], args[nl:nl + nr]), nl + nr
    raise ValueError(f"unknown segment head {kind!r}")


def _terminal(terminal: tuple, items: list):
    kind = terminal[0]
    if kind == "part":
        return items
    if kind == "fold":
        return semantics.fold(resolve(terminal[2], terminal[3]), items)
    if kind == "count":
        return len(items)
    if kind == "rbk_split":
        _, _, module, attr, k = terminal
        buckets = semantics.shuffle_split(semantics.reduce_by_key_partial(resolve(module, attr), items),
                                          k, "reduce_by_key")
    elif kind == "split":
        buckets = semantics.shuffle_split(items, terminal[3], terminal[2])
    elif kind == "distinct_split":
        buckets = semantics.distinct_split(items, terminal[2])
    else:
        raise ValueError(f"unknown segment terminal {kind!r}")
    return tuple(buckets) if len(buckets) > 1 else buckets[0]


def combine_task(spec: tuple, *partials):
    """One node of a reduction tree: fold a group of partials in partition order."""
    paths, stage, module, attr, first = spec
    ensure_path(paths)
    try:
        return semantics.combine_group(resolve(module, attr), partials)
    except Exception as exc:
        raise _failure(stage, None, exc) from None


class Gap:
    """An actor's answer to a call that arrives after calls it has not applied (it was
    restored from an older snapshot): the driver replays from ``applied + 1``."""

    def __init__(self, applied: int):
        self.applied = applied

    def __reduce__(self):
        return (Gap, (self.applied,))


class ActorServer:
    """The process behind one pipec actor: a :class:`VersionedHost` restored from its
    last snapshot when Ray restarts it (the constructor runs again), or from the one a
    resumed run's record names."""

    def __init__(self, paths: list[str], name: str, module: str, cls: str, args: list, kwargs: dict,
                 checkpoint_every: int | None, snapshot: str | None):
        ensure_path(paths)
        self.name = name
        self.failed: StageError | None = None
        try:
            self.host = VersionedHost(module, cls, args, kwargs, checkpoint_every, snapshot)
        except Exception as exc:  # reported on the first call, at the actor's declaration
            self.failed = _failure(name, None, exc)

    def call(self, seq: int, method: str, args: list, kwargs: dict):
        """Graph-level call ``seq``, applied exactly once (see ActorHost.call)."""
        if self.failed is not None:
            raise self.failed
        if seq > self.host.applied + 1:
            return Gap(self.host.applied)
        try:
            return self.host.call(seq, method, args, kwargs)
        except Exception as exc:
            raise _failure(f"{self.name}.{method}", None, exc) from None

    def invoke(self, method: str, args: tuple, kwargs: dict):
        """A call from inside a stage, through a handle: not numbered, not replayed."""
        if self.failed is not None:
            raise self.failed
        return self.host.invoke(None, method, args, kwargs)  # not keyed yet on Ray

    def applied(self) -> int:
        if self.failed is not None:
            raise self.failed
        return self.host.applied


class PoolMember:
    """One actor of a pool: the user's object, serving one partition per call."""

    def __init__(self, paths: list[str], name: str, module: str, cls: str, args: list, kwargs: dict):
        ensure_path(paths)
        self.failed: StageError | None = None
        try:
            self.obj = resolve(module, cls)(*args, **kwargs)
        except Exception as exc:
            self.failed = _failure(name, None, exc)

    def run(self, stage: str, kind: str, method: str, partition: int, names: tuple, items: list, *values):
        """(True, output partition): two returns, so the driver learns of success cheaply."""
        if self.failed is not None:
            raise self.failed
        try:
            return True, apply_elementwise(kind, getattr(self.obj, method), items, dict(zip(names, values)),
                                           partition)
        except Exception as exc:
            raise _failure(stage, partition, exc) from None


class ActorProxy:
    """What a stage function gets for ``with server = ps``: method calls block and return
    the actor's results. Pickles with the Ray actor handle inside."""

    def __init__(self, handle):
        self._handle = handle

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        handle = self.__dict__["_handle"]

        def call(*args, **kwargs):
            import ray
            return ray.get(handle.invoke.remote(method, args, kwargs))
        return call


@lru_cache(maxsize=None)
def remote_calls():
    """The remote functions and actor classes, made once per process."""
    import ray

    class Remote:
        segment = ray.remote(run_segment)
        combine = ray.remote(combine_task)
        actor = ray.remote(ActorServer)
        pool = ray.remote(PoolMember)
    return Remote
