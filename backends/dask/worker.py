"""What runs on the Dask workers: the shared interpreter wrapped as task bodies, actor
hosts, the handle proxy.

A task runs a segment of the physical plan with
:func:`pipec.backends.runtime.interpreter.run_segment`, so a partition computed here is
the one the reference backend computes; this module only adds Dask's way of moving data
(values sealed as in-band pickles; a task with several outputs, a split's say, as one
sealed list of sealed outputs: one frame on the wire, each output opened only by its reader).
Functions are pickled by reference: workers import this module (and ``distributed``,
lazily, only where a task talks to an actor).

A failing stage raises the interpreter's :class:`StageFailure`, which the driver turns
into the error the user sees; a call to an actor whose worker died becomes
:class:`ActorLost` so the driver can restore the actor and run the graph again.
"""

from __future__ import annotations

import asyncio
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from pipec.backends.physical import steps
from pipec.backends.runtime import semantics, sources
from pipec.backends.runtime.actors import SKIPPED, EachCalls, VersionedHost
from pipec.backends.runtime.interpreter import (StageFailure, bind, failure, run_elementwise, run_finisher,
                                                run_merge, run_segment)
from pipec.backends.runtime.tasks import ensure_path, resolve


class ActorLost(Exception):
    """An actor (or a pool member) could not be reached: its worker died."""

    def __init__(self, actor: str, member: int | None = None, detail: str = ""):
        super().__init__(actor, member, detail)
        self.actor, self.member, self.detail = actor, member, detail

    def __str__(self) -> str:
        who = f"{self.actor}[{self.member}]" if self.member is not None else self.actor
        return f"actor `{who}` was lost with its worker ({self.detail})"


def is_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says an actor's worker is gone (not an error of the actor's code)."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("Worker holding Actor was lost"):
        return True
    if isinstance(exc, OSError) and "Unable to contact Actor's worker" in text:
        return True
    return type(exc).__name__ in ("CommClosedError", "StreamClosedError")


class Sealed:
    """A value crossing between processes as in-band pickle bytes.

    Dask hands numpy arrays over as views of network buffers, sometimes unaligned, and
    numpy computes on an unaligned array without BLAS: other bits than the reference
    backend, which pickles every boundary in-band (fresh, aligned arrays). So every task
    result, broadcast value and actor argument is sealed by its producer and opened by
    its consumer. Dask moves the bytes out of band (no copy) and measures their size.

    A worker opens each Sealed it holds once: the value then replaces the bytes, and
    every later task on that worker reads the same object. A loop-invariant partition was
    unpickled by every round's task (8 x 2.2 MB a round on paramserver), and each of a
    source's k ``take_part`` tasks unpickled the whole source (8 x 17.6 MB, 160 ms on one
    worker). pipec's functions never mutate their inputs (the reference backend checks),
    so sharing the opened value is safe; one sent on again is pickled in-band again."""

    __slots__ = ("data", "value", "nbytes")

    def __init__(self, data):
        self.data = data
        self.value = _CLOSED
        self.nbytes = memoryview(data).nbytes

    def open(self):
        value = self.value
        if value is _CLOSED:
            value = pickle.loads(self.data)
            self.value = value  # before the bytes go: a transfer running now reads either
            self.data = None
        return value

    def __reduce_ex__(self, protocol):
        data = self.data
        if data is None:
            data = pickle.dumps(self.value, protocol=pickle.HIGHEST_PROTOCOL)
        if protocol >= 5:
            return (Sealed, (pickle.PickleBuffer(data),))
        return (Sealed, (bytes(data),))

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + self.nbytes


_CLOSED = object()  # a Sealed not opened yet


def seal(value) -> Sealed:
    return Sealed(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def unseal(value):
    return value.open() if isinstance(value, Sealed) else value


# ---- task bodies: the shared interpreter, with Dask's way of moving data ---------------------------


class SealedSlots:
    """A task's slots as Dask hands them over: sealed values, or actors for handles."""

    def __init__(self, bound: Sequence):
        self.bound = bound

    def value(self, index: int):
        return unseal(self.bound[index])

    def handle(self, index: int, actor: str):
        return _caller(actor, self.bound[index])


def segment_task(segment: steps.Segment, partition: int, items, *bound):
    """One partition of a segment; ``items`` is the sealed input partition (None when the
    head makes it). A split's outputs are sealed one by one, so a merge opens only its own."""
    return _sealed(segment, run_segment(segment, partition, unseal(items), SealedSlots(bound)))


class FailedPartition:
    """A partition of a batch whose stage failed: what its reader gets in its place."""

    __slots__ = ("failure",)

    def __init__(self, failure: StageFailure):
        self.failure = failure


def segments_task(segment: steps.Segment, partitions: tuple, *items_and_bound) -> list:
    """Several partitions of one segment as one task (a worker's share, see the driver's
    _batch): the first ``len(partitions)`` arguments are their sealed inputs, the rest the
    bound slots. Gives each partition's result as :func:`segment_task` does, in a list
    that each reader picks its own from (:func:`pick_partition`). A partition whose stage
    fails is a FailedPartition there and the others still run: each reader fails or goes
    on exactly as with a task per partition (an actor pool serving partitions in order
    would otherwise wait for good for a partition that failed with a sibling)."""
    n = len(partitions)
    slots = SealedSlots(items_and_bound[n:])
    out = []
    for p, items in zip(partitions, items_and_bound[:n]):
        try:
            out.append(_sealed(segment, run_segment(segment, p, unseal(items), slots)))
        except StageFailure as exc:
            out.append(FailedPartition(exc))
    return out


def pick_partition(batch: list, position: int):
    """A partition's result out of its batch's list; a failed one raises its failure, so
    its reader fails as it would have reading the partition's own task."""
    value = batch[position]
    if isinstance(value, FailedPartition):
        raise value.failure
    return value


def _sealed(segment: steps.Segment, out):
    """A task's result as it leaves the worker; a task with several outputs (a split's
    buckets or groups of buckets, a shared scan's outputs, a grouped merge's partitions)
    has them sealed one by one: a reader opens only the one it reads. A grouped split's
    output is one list per merge group, so a transfer of it is w frames, not k."""
    if steps.several(segment.terminal) or isinstance(segment.head, steps.Merge) and segment.head.groups:
        return seal([seal(output) for output in out])
    return seal(out)


def pick(outputs: Sealed, output: int, buckets: int | None = None):
    """One output of a task with several (see :func:`steps.pick`), sealed as it was."""
    return steps.pick(unseal(outputs), output, buckets)


def merge_task(segment: steps.Segment, index: int, sides: tuple, *bound):
    """The reduce side of a shuffle: output ``index`` of every split output (slots
    ``sides[side]``, in source-partition order; a bucket, or a grouped merge's group of
    buckets) merged by the segment's head (see :func:`interpreter.run_merge`)."""
    records = [(side, i, unseal(unseal(bound[slot])[index])) for side, slots in enumerate(sides)
               for i, slot in enumerate(slots)]
    return _sealed(segment, run_merge(segment, index, records, SealedSlots(bound)))


def finisher_task(step, *partials) -> Sealed:
    """A combine node of a reduction tree, a count's total or a top's final merge."""
    return seal(run_finisher(step, [unseal(p) for p in partials]))


def line_index(where: str, path: str):
    """The text file's line index (see :func:`sources.line_index`), as a task's result."""
    try:
        return seal(sources.line_index(path))
    except OSError as exc:
        raise StageFailure(where, None, "plain", f"cannot read {path}: {exc.strerror or exc}") from None


def source_call(where: str, fn: steps.Fn, args: list, kwargs: dict) -> Sealed:
    """All items of a callable source (called once, on a worker)."""
    try:
        return seal(list(resolve(fn.module, fn.attr)(*args, **kwargs)))
    except Exception as exc:
        raise failure(where, None, exc) from None


def take_part(where: str, i: int, k: int, items: Sealed) -> Sealed:
    """Partition i of k contiguous blocks of ``items``."""
    items = unseal(items)
    a, b = semantics.partition_of(len(items), k, i)
    return seal(list(items[a:b]))


def _caller(node: str, actor):
    """How a task calls ``actor`` (a Dask actor) through a handle: the call blocks, its
    idempotency key travels with it, a lost worker is ActorLost."""
    def call(key: tuple, method: str, args: tuple, kwargs: dict):
        try:
            future = actor.invoke_sealed(key, method, seal((args, kwargs)))
        except Exception as exc:
            if is_lost(exc):
                raise ActorLost(node, None, str(exc)) from None
            raise
        return unseal(await_actor(future, actor, node, None))
    return call


# How long a call to an actor may go unanswered before the caller checks that the
# actor's worker is still there (a long call on a live worker simply goes on).
# A call silent this long makes the caller ask the scheduler whether the actor's worker is
# still in the cluster (a killed worker leaves it the moment its connection breaks), then
# again at doubling intervals up to PING_EVERY, when the actor itself is also pinged (its
# event loop answers even while a long call runs; a worker that hangs, or one across a
# broken network, is only found that way).
PROBE_AFTER = 0.1
PING_EVERY = 2.0
PING_TIMEOUT = 5.0


def actor_worker_gone(actor, client=None) -> bool:
    """Whether the scheduler says no worker holds ``actor`` any more at its address (a
    killed worker is dropped the moment its connection breaks); False when it cannot
    tell, and the ping decides. ``client`` is the driver's; a task uses its worker's.
    (Asked directly: ``Client.scheduler_info`` returns a cache that the client's own
    periodic update refills without the workers, so it can miss a live one.)"""
    try:
        if client is None:
            from distributed import get_client
            client = get_client()
        holders = client.sync(client.scheduler.who_has, keys=[actor._key])
        return actor._address not in holders.get(actor._key, ())
    except Exception:
        return False


def await_actor(future, actor, node: str, member: int | None, client=None):
    """The result of an actor call. Dask leaves a call to an actor whose worker died
    unanswered at times, so a silent call is probed (see PROBE_AFTER) and the actor counts
    as lost when the scheduler has dropped its worker or a ping gets no answer."""
    wait, silent = PROBE_AFTER, 0.0
    while True:
        try:
            return future.result(timeout=wait)
        except TimeoutError:
            silent += wait
            if actor_worker_gone(actor, client):
                raise ActorLost(node, member, "its worker left the cluster") from None
            if silent >= PING_EVERY:
                silent = 0.0
                try:
                    alive = actor.ping().result(timeout=PING_TIMEOUT)
                except Exception:
                    alive = False
                if not alive:
                    raise ActorLost(node, member, "no answer, and its worker is gone") from None
            wait = min(2 * wait, PING_EVERY)
        except Exception as exc:
            if is_lost(exc):
                raise ActorLost(node, member, str(exc)) from None
            raise


def actor_call(node: str, where: str, seq: int, method: str, sealed: Sealed, actor) -> Sealed:
    """Graph-level call ``seq`` of actor method ``where`` (``ps.weights``), made by a task
    so that its result stays on the cluster for the stages that read it (IR node
    ``node``), with no round trip through the driver. The host applies a number once: a
    task run again (its worker lost) sends the same number and gets the kept result."""
    actor_name = where.split(".")[0]
    try:
        answer = await_actor(actor.call_sealed(seq, method, sealed), actor, actor_name, None)
    except ActorLost:
        raise
    except Exception as exc:
        if is_lost(exc):
            raise ActorLost(actor_name, None, str(exc)) from None
        raise failure(where, None, exc) from None
    result = unseal(answer)  # opened here, so a reader on this worker does not open it again
    if isinstance(result, str) and result == SKIPPED:
        raise StageFailure(node, None, "plain", f"call {seq} was not applied again after a restore")
    return answer


def pool_call(step: steps.Elementwise, partition: int, seq: int, member_index: int, member, items: Sealed, *bound):
    """One partition of a stage served by an actor pool member (calls in partition order)."""
    from distributed import rejoin, secede
    values = seal(bind(step, SealedSlots(bound)))
    try:
        future = member.apply(seq, step, items, values, partition)
    except Exception as exc:
        if is_lost(exc):
            raise ActorLost(step.pool, member_index, str(exc)) from None
        raise
    # Free this worker thread while the member works (and waits for earlier partitions).
    secede()
    try:
        result = await_actor(future, member, step.pool, member_index)
    finally:
        rejoin()
    if isinstance(result, StageFailure):
        raise result
    return result


# ---- actors --------------------------------------------------------------------------------------


class DaskActorHost(VersionedHost):
    """An actor host living on a worker as a Dask actor. Restores itself from the
    snapshot file when one exists (a re-created actor, or the one a resumed run's record
    names), then the driver replays."""

    def __init__(self, roots: list[str], module: str, cls: str, args: list, kwargs: dict,
                 checkpoint_every: int | None, snapshot: str | None):
        ensure_path(roots)
        super().__init__(module, cls, args, kwargs, checkpoint_every, snapshot)

    def call_sealed(self, seq: int, method: str, sealed: Sealed) -> Sealed:
        args, kwargs = unseal(sealed)
        return seal(self.call(seq, method, args, kwargs))

    def invoke_sealed(self, key: tuple, method: str, sealed: Sealed) -> Sealed:
        args, kwargs = unseal(sealed)
        return seal(self.invoke(key, method, args, kwargs))

    def applied_seq(self) -> int:
        return self.applied

    async def ping(self) -> bool:
        """Answered by the worker's event loop, even while a long call is running."""
        return True


class PoolMember:
    """One member of an actor pool. Partitions reach it numbered; it serves them in that
    order (the reference backend's order), whatever order the tasks ran in."""

    def __init__(self, roots: list[str], module: str, cls: str, args: list, kwargs: dict, start: int = 0,
                 each_path: str | None = None):
        ensure_path(roots)
        self.obj = resolve(module, cls)(*args, **kwargs)
        self.each_calls = EachCalls(self.obj, each_path)  # the calls to every member so far, replayed
        self.next = start  # the number of the next call to serve
        self._cond: asyncio.Condition | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pipec-pool")

    async def apply(self, seq: int, step: steps.Elementwise, items: Sealed, bindings: Sealed, partition: int):
        """The sealed output partition, or the StageFailure of the stage."""
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            await self._cond.wait_for(lambda: self.next >= seq)
        fn = getattr(self.obj, step.method)

        def work():
            return seal(run_elementwise(step, unseal(items), partition, fn=fn, bindings=unseal(bindings)))
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except StageFailure as exc:
            result = exc
        async with self._cond:
            self.next = max(self.next, seq + 1)
            self._cond.notify_all()
        return result

    async def each(self, seq: int, method: str, sealed: Sealed) -> Sealed:
        """Call ``seq`` to every member of the pool (see EachCalls), in this member's thread."""
        def work():
            args, kwargs = unseal(sealed)
            return seal(self.each_calls.call(self.obj, seq, method, args, kwargs))
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def ping(self) -> bool:
        return True


# ---- run by the driver on the cluster's processes


def worker_addresses(dask_scheduler=None) -> list[str]:
    """The workers' addresses, sorted (run on the scheduler)."""
    return sorted(dask_scheduler.workers)
