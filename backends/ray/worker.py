"""What runs on Ray workers: thin wrappers around the shared interpreter, and actor classes.

Every Ray worker that runs a pipec task imports this module, so it imports only the shared
runtime (no networkx, no pydantic, no compiler): worker start-up stays cheap."""

from __future__ import annotations

import pickle
from functools import lru_cache

from pipec.backends.physical import steps as s
from pipec.backends.runtime import semantics, sources
from pipec.backends.runtime.actors import EachCalls, VersionedHost
from pipec.backends.runtime.interpreter import Given, StageFailure, failure, run_elementwise, run_finisher, run_merge
from pipec.backends.runtime.interpreter import run_segment as interpret
from pipec.backends.runtime.tasks import WorkerSetup, resolve


def _slots(values) -> Given:
    """Slots as Ray resolved them; an actor handle is called with the call's key."""
    return Given(values, _caller)


class ActorLost(StageFailure):
    """A stage task could not reach the actor behind a handle: its process died, or Ray
    restarted it and the driver has not yet replayed the calls its snapshot lacks. The
    task stops (never retried in place, hence a StageFailure), and the driver restores
    the actor and runs the graph again; the keys make the re-run apply each call once."""

    def __init__(self, stage: str, partition: int | None, actor: str, detail: str = ""):
        super().__init__(stage, partition, "plain", f"actor `{actor}` was lost while the stage called it")
        self.actor, self.detail = actor, detail

    def __reduce__(self):
        return (ActorLost, (self.node, self.partition, self.actor, self.detail))


def _caller(actor: str, handle):
    """How a task calls a Ray actor through a handle: blocking, the idempotency key along
    (``key[0]`` is the stage, ``key[2]`` the partition). Ray runs actor methods at most
    once (``max_task_retries 0``), so a call that finds the actor gone fails at once."""
    def call(key: tuple, method: str, args: tuple, kwargs: dict):
        import ray
        try:
            answer = ray.get(handle.invoke.remote(key, method, args, kwargs))
        except ray.exceptions.RayActorError as exc:
            raise ActorLost(key[0], key[2], actor, type(exc).__name__) from None
        if isinstance(answer, Gap):
            raise ActorLost(key[0], key[2], actor, "restarted, calls not yet replayed")
        return answer
    return call


def _short(body):
    """``body()``; a StageFailure leaves without the interpreter's frames, as Ray logs the
    traceback of a failed task nobody fetched (pipec reports the failure itself)."""
    try:
        return body()
    except StageFailure as exc:
        raise exc.with_traceback(None) from None


@lru_cache(maxsize=8)
def _setup(packed: bytes) -> WorkerSetup:
    """A task's :class:`WorkerSetup`, which the driver pickled once for all its tasks
    (Ray pickling the dataclass again for every task cost the driver 50 to 100 us a
    task, time it needs to keep two workers fed); unpickled once per worker. Every task
    still applies it: another run's tasks in this process may have applied their own."""
    return pickle.loads(packed)


@lru_cache(maxsize=64)
def _unpack(blob: bytes) -> s.Segment:
    """A worker unpickles each segment once: it is frozen, and functions must not change
    their inputs (literal bindings included; the local backend checks it)."""
    return pickle.loads(blob)


def segment(setup: bytes, blob: bytes, partition: int, items, *bound):
    """One partition of a segment (``blob``: pickled once by the driver; ``items``: the
    input partition, None when the head makes it). A split gives its buckets as the
    task's Ray returns, a shared scan its outputs."""
    _setup(setup).apply()
    seg = _unpack(blob)
    return _returns(seg, _short(lambda: interpret(seg, partition, items, _slots(bound))))


def merge(setup: bytes, blob: bytes, index: int, sides: tuple, *bound):
    """The reduce side of a shuffle: the driver passes output ``index`` of every split
    (a bucket, or a grouped merge's group of buckets) in the slots ``sides[side]`` (in
    source-partition order); see :func:`interpreter.run_merge`."""
    _setup(setup).apply()
    seg = _unpack(blob)
    records = [(side, i, bound[slot]) for side, slots in enumerate(sides) for i, slot in enumerate(slots)]
    return _returns(seg, _short(lambda: run_merge(seg, index, records, _slots(bound))), index)


def _returns(seg: s.Segment, out, index: int = 0):
    """A task's Ray returns: a split's buckets, a shared scan's or a grouped merge's
    outputs, one each (a lone output is the object itself, Ray's one return)."""
    grouped = isinstance(seg.head, s.Merge) and seg.head.groups is not None
    if (s.several(seg.terminal) or grouped) and s.task_outputs(seg, index) <= 1:
        return out[0] if out else None
    return out


def finish(setup: bytes, step, *partials):
    """A combine node of a reduction tree, a count's total or a top's final merge."""
    _setup(setup).apply()
    return _short(lambda: run_finisher(step, list(partials)))


def source_call(setup: bytes, where: str, fn: s.Fn, args: list, kwargs: dict) -> list:
    """All items of a callable source (called once, on a worker)."""
    _setup(setup).apply()
    try:
        return list(resolve(fn.module, fn.attr)(*args, **kwargs))
    except Exception as exc:
        raise failure(where, None, exc).with_traceback(None) from None


def source_parts(setup: bytes, where: str, fn: s.Fn, args: list, kwargs: dict, k: int):
    """All items of a callable source as its ``k`` contiguous partitions, the task's ``k``
    Ray returns (one partition is the one return itself): the partitions the plan's
    ``take_part`` tasks would cut, with no task reading the whole list ``k`` times."""
    items = source_call(setup, where, fn, args, kwargs)
    parts = [items[a:b] for a, b in semantics.partition_bounds(len(items), k)]
    return parts if k > 1 else parts[0]


def take_part(setup: bytes, where: str, i: int, k: int, items: list) -> list:
    """Partition i of k contiguous blocks of ``items``."""
    a, b = semantics.partition_of(len(items), k, i)
    return list(items[a:b])


def line_index(setup: bytes, where: str, path: str):
    """The text file's line index (see :func:`sources.line_index`)."""
    _setup(setup).apply()
    try:
        return sources.line_index(path)
    except OSError as exc:
        raise StageFailure(where, None, "plain", f"cannot read {path}: {exc.strerror or exc}") from None


def with_status(body: str, outputs: int, *args):
    """Task body ``body`` on ``args``, its ``outputs`` returns, then one more: None. The
    driver fetches that one to learn the task ended (on failure every return holds the
    error), while the others, partitions, stay in the object store for their readers."""
    out = BODIES[body](*args)
    return (*out, None) if outputs > 1 else (out, None)


BODIES = {"segment": segment, "merge": merge, "finish": finish, "source_call": source_call,
          "source_parts": source_parts, "take_part": take_part, "line_index": line_index,
          "with_status": with_status}


class Gap:
    """An actor's answer to a call that arrives after calls it has not applied (it was
    restored from an older snapshot): the driver replays from ``applied + 1``."""

    def __init__(self, applied: int):
        self.applied = applied

    def __reduce__(self):
        return (Gap, (self.applied,))


class ActorServer:
    """The process behind one pipec actor: a :class:`VersionedHost` built from the
    actor's last snapshot (the one a resumed run's record names, at the start), or from
    its constructor before the first.

    pipec, not Ray, restarts it (the Ray actor has ``max_restarts 0``): a *standby*
    (``standby=True``) is started beside it, with Ray's and pipec's imports done and the
    user's module imported, but no host; when the actor's process is lost the driver
    sends the standby ``applied``, which builds the host from the snapshot, and replays
    the calls since. Ray's own restart starts a new worker process once the loss is
    known (1.3 to 2 s on a 2-core machine); the standby answers within milliseconds."""

    def __init__(self, setup: WorkerSetup, name: str, module: str, cls: str, args: list, kwargs: dict,
                 checkpoint_every: int | None, snapshot: str | None, standby: bool = False):
        setup.apply()
        import ray
        self.name = name
        self.failed: StageFailure | None = None
        self.host: VersionedHost | None = None
        self._spec = (module, cls, args, kwargs, checkpoint_every, snapshot)
        # Taking over (or restarted by Ray, on a cluster configured to): the snapshot may
        # lack graph-level calls the driver made since (and calls made through handles in
        # the graph that was running). Until the driver has replayed them (`recovered`),
        # calls through handles are refused, so none is applied to a state that is behind.
        self.recovering = standby or ray.get_runtime_context().was_current_actor_reconstructed
        if standby:
            try:
                resolve(module, cls)  # imported now, not when it takes over
            except Exception:  # reported when it takes over, by the constructor's call
                pass
        else:
            self._build()

    def _build(self) -> None:
        module, cls, args, kwargs, checkpoint_every, snapshot = self._spec
        try:
            self.host = VersionedHost(module, cls, args, kwargs, checkpoint_every, snapshot)
        except Exception as exc:  # reported on the first call, at the actor's declaration
            self.failed = failure(self.name, None, exc)

    def _ready(self) -> VersionedHost:
        """The host (a standby builds it now, from the snapshot); raises a failed one's error."""
        if self.host is None and self.failed is None:
            self._build()
        if self.failed is not None:
            raise self.failed
        return self.host

    def call(self, seq: int, method: str, args: list, kwargs: dict):
        """Graph-level call ``seq``, applied exactly once (see ActorHost.call)."""
        host = self._ready()
        if seq > host.applied + 1:
            return Gap(host.applied)
        if seq == host.applied + 1:
            # Every call before this one is applied, and handle calls are in a snapshot
            # before the driver makes its next call: the state is whole again.
            self.recovering = False
        try:
            return host.call(seq, method, args, kwargs)
        except Exception as exc:
            raise failure(f"{self.name}.{method}", None, exc) from None

    def invoke(self, key: tuple, method: str, args: tuple, kwargs: dict):
        """A call from inside a stage, through a handle: applied once per key (see
        ActorHost.invoke)."""
        host = self._ready()
        if self.recovering:
            return Gap(host.applied)
        return host.invoke(key, method, args, kwargs)

    def recovered(self) -> None:
        """The driver replayed every call the restored snapshot lacked."""
        self.recovering = False

    def pid(self) -> int:
        """This actor's process (what fault-injection tests kill)."""
        import os
        return os.getpid()

    def checkpoint(self):
        """A snapshot now (after a graph whose stages called this actor through handles);
        a Gap instead when Ray restarted this actor since: the graph's calls died with the
        old process (even if no task noticed), so saving now would lose them."""
        host = self._ready()
        if self.recovering:
            return Gap(host.applied)
        return host.checkpoint()

    def applied(self) -> int:
        """The number of the last call the host holds (a standby taking over builds its
        host first, from the actor's last snapshot)."""
        return self._ready().applied

    def flush(self) -> None:
        """Wait until the snapshot being written, if any, is durable (see ActorHost.flush)."""
        if self.host is not None:
            self.host.flush()


class PoolMember:
    """One actor of a pool: the user's object, serving one partition per call."""

    def __init__(self, setup: WorkerSetup, name: str, module: str, cls: str, args: list, kwargs: dict,
                 each_path: str | None = None):
        setup.apply()
        self.failed: StageFailure | None = None
        try:
            self.obj = resolve(module, cls)(*args, **kwargs)
            # Ray restarts a member by running this again: it replays the calls to every
            # member made so far (the driver writes each one there before sending it).
            self.each_calls = EachCalls(self.obj, each_path)
        except Exception as exc:
            self.failed = failure(name, None, exc)

    def each(self, seq: int, method: str, args: list, kwargs: dict):
        """Call ``seq`` to every member of the pool (see EachCalls)."""
        if self.failed is not None:
            raise self.failed
        return self.each_calls.call(self.obj, seq, method, args, kwargs)

    def run(self, step: s.Elementwise, partition: int, seq: int, items: list, *values):
        """One partition of a stage served by this member (calls arrive in ``seq`` order),
        then None: a status the driver waits on while the partition stays in the object
        store (as worker.with_status gives for tasks)."""
        if self.failed is not None:
            raise self.failed
        fn = getattr(self.obj, step.method)
        return _short(lambda: run_elementwise(step, items, partition, _slots(values), fn)), None


@lru_cache(maxsize=None)
def remote_calls():
    """The remote functions and actor classes, made once per process."""
    import ray

    class Remote:
        bodies = {name: ray.remote(body) for name, body in BODIES.items()}
        actor = ray.remote(ActorServer)
        pool = ray.remote(PoolMember)
    return Remote
