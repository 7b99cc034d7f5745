"""What runs on the Dask workers: task bodies, actor hosts, the handle proxy.

Every task body calls the shared functions of :mod:`pipec.backends.runtime.semantics` and
:mod:`pipec.backends.runtime.tasks`, so a partition computed here is the one the reference
backend computes. Functions are pickled by reference: workers import this module (and
``distributed``, lazily, only where a task talks to an actor).

A user error inside a task becomes :class:`StageFailure` (picklable, names the stage and
the partition) so the driver can point at the source line; a call to an actor whose
worker died becomes :class:`ActorLost` so the driver can restore the actor and run the
graph again.
"""

from __future__ import annotations

import asyncio
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from pipec.backends.runtime import semantics, sources
from pipec.backends.runtime.actors import ActorHost
from pipec.backends.runtime.tasks import apply_elementwise, ensure_path, resolve, run_with_timeout, user_frame


class StageFailure(Exception):
    """A stage failed on a worker: ``where`` is the IR node, ``hint`` where it raised."""

    def __init__(self, where: str, message: str, hint: str | None = None, partition: int | None = None):
        super().__init__(where, message, hint, partition)
        self.where, self.message, self.hint, self.partition = where, message, hint, partition

    def __str__(self) -> str:
        return f"in `{self.where}`: {self.message}"


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
    its consumer. Dask moves the bytes out of band (no copy) and measures their size."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        if protocol >= 5:
            return (Sealed, (pickle.PickleBuffer(self.data),))
        return (Sealed, (bytes(self.data),))

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + memoryview(self.data).nbytes


def seal(value) -> Sealed:
    return Sealed(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def unseal(value):
    return pickle.loads(value.data) if isinstance(value, Sealed) else value


def _user_failure(where: str, exc: BaseException, partition: int | None) -> StageFailure:
    place = f" (partition {partition})" if partition is not None else ""
    frame = user_frame(exc)
    return StageFailure(where, f"{type(exc).__name__}: {exc}{place}", f"raised at {frame}" if frame else None,
                        partition)


def _with_timeout(where: str, partition: int, timeout: float | None, body):
    """``body()``, failing as the stage after ``timeout`` seconds."""
    try:
        return run_with_timeout(body, timeout, f"pipec-{where}-{partition}")
    except TimeoutError:
        raise StageFailure(where, f"partition {partition} did not finish within its timeout of {timeout:g} s",
                           partition=partition) from None


# ---- sources ---------------------------------------------------------------------------------


def source_range(where: str, n: int, i: int, k: int) -> list:
    """Partition i of ``range(n)`` cut k ways."""
    a, b = semantics.partition_bounds(n, k)[i]
    return list(range(a, b))


def line_index(where: str, path: str):
    """The text file's line index (see :func:`sources.line_index`), as a task's result."""
    try:
        return seal(sources.line_index(path))
    except OSError as exc:
        raise StageFailure(where, f"cannot read {path}: {exc.strerror or exc}") from None


def _source_read(where: str, kind: str, path: str, i: int, k: int, index=None) -> list:
    try:
        if kind == "read_text":
            return sources.read_lines_part(path, i, k, index)
        items = sources.read_jsonl(path)
    except OSError as exc:
        raise StageFailure(where, f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise _user_failure(where, exc, None) from None
    a, b = semantics.partition_bounds(len(items), k)[i]
    return items[a:b]


def _source_sharded(where: str, module: str, attr: str, args: list, kwargs: dict, i: int, k: int) -> list:
    try:
        return list(resolve(module, attr)(*args, **kwargs, partition=i, partitions=k))
    except Exception as exc:
        raise _user_failure(where, exc, i) from None


class Head:
    """How a task gets its partition when it does not read it from a key: a source
    making it (``range``, a file's lines or JSON rows, a sharded callable) or a shuffle's
    merge of the buckets for this partition. ``bound`` holds the keys a head reads (the
    line index, the split outputs) at the positions its arguments name."""

    __slots__ = ("kind", "args")

    def __init__(self, kind: str, args: tuple):
        self.kind, self.args = kind, args

    def __reduce__(self):
        return (Head, (self.kind, self.args))

    def make(self, bound: Sequence = ()) -> list:
        kind, args = self.kind, self.args
        if kind == "range":
            return source_range(*args)
        if kind == "read":
            *rest, slot = args
            return _source_read(*rest, unseal(bound[slot]) if slot is not None else None)
        if kind == "sharded":
            return _source_sharded(*args)
        if kind == "rbk":
            where, module, attr, j, slots = args
            try:
                return semantics.reduce_by_key_merge(resolve(module, attr), _bucket([bound[s] for s in slots], j))
            except Exception as exc:
                raise _user_failure(where, exc, j) from None
        if kind == "group":
            where, j, slots = args
            return semantics.group_merge(_bucket([bound[s] for s in slots], j))
        if kind == "distinct":
            where, j, slots = args
            return semantics.distinct_merge(_bucket([bound[s] for s in slots], j))
        if kind == "join":
            where, j, left, right = args
            return semantics.join_merge(_bucket([bound[s] for s in left], j), _bucket([bound[s] for s in right], j))
        raise ValueError(f"unknown head {kind!r}")


def _bucket(outputs, j: int) -> list:
    """Bucket j of each split output (each bucket sealed on its own), in partition order."""
    return [unseal(out[j]) for out in outputs]


def source_call(where: str, module: str, attr: str, args: list, kwargs: dict) -> Sealed:
    """All items of a callable source (called once, on a worker)."""
    try:
        return seal(list(resolve(module, attr)(*args, **kwargs)))
    except Exception as exc:
        raise _user_failure(where, exc, None) from None


def take_part(where: str, i: int, k: int, items: Sealed) -> Sealed:
    """Partition i of k contiguous blocks of ``items``."""
    items = unseal(items)
    a, b = semantics.partition_bounds(len(items), k)[i]
    return seal(list(items[a:b]))


# ---- element-wise chains and partition-wise terminals ------------------------------------------


class HandleProxy:
    """What a stage function receives for ``with server = ps``: method calls block and
    return the actor's results (not numbered: a retried stage sends them again)."""

    def __init__(self, actor_node: str, actor):
        self._node = actor_node
        self._actor = actor

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args, **kwargs):
            try:
                future = self._actor.invoke_sealed(method, seal((args, kwargs)))
            except Exception as exc:
                if is_lost(exc):
                    raise ActorLost(self._node, None, str(exc)) from None
                raise
            return unseal(await_actor(future, self._actor, self._node, None))
        return call

    def __reduce__(self):
        return (HandleProxy, (self._node, self._actor))


# How long a call to an actor may go unanswered before the caller checks that the
# actor's worker is still there (a long call on a live worker simply goes on).
PROBE_AFTER = 2.0
PING_TIMEOUT = 5.0


def await_actor(future, actor, node: str, member: int | None):
    """The result of an actor call. Dask leaves a call to an actor whose worker died
    unanswered at times, so a silent actor is pinged (its event loop answers even while
    a long call runs) and counts as lost when it does not answer."""
    while True:
        try:
            return future.result(timeout=PROBE_AFTER)
        except TimeoutError:
            try:
                alive = actor.ping().result(timeout=PING_TIMEOUT)
            except Exception:
                alive = False
            if not alive:
                raise ActorLost(node, member, "no answer, and its worker is gone") from None
        except Exception as exc:
            if is_lost(exc):
                raise ActorLost(node, member, str(exc)) from None
            raise


def _bindings(spec: dict, bound: Sequence) -> dict:
    out = {}
    for name, (how, what) in spec.items():
        if how == "lit":
            out[name] = what
        elif how == "ref":
            out[name] = unseal(bound[what])
        else:  # handle: (index, actor node)
            index, actor = what
            out[name] = HandleProxy(actor, bound[index])
    return out


def _run_stage(stage: tuple, items: list, bound: Sequence, partition: int) -> list:
    where, kind, module, attr, bindings, timeout = stage
    fn = resolve(module, attr)
    values = _bindings(bindings, bound)
    try:
        return _with_timeout(where, partition, timeout,
                             lambda: apply_elementwise(kind, fn, items, values, partition))
    except (StageFailure, ActorLost):
        raise
    except Exception as exc:
        raise _user_failure(where, exc, partition) from None


def _terminal(term: tuple, items: list, partition: int):
    """The partition-wise half of a reduction, shuffle or top, fused onto a chain."""
    what, where = term[0], term[1]
    try:
        if what == "fold":
            return seal(semantics.fold(resolve(term[2], term[3]), items))
        if what == "len":
            return seal(len(items))
        if what == "top":
            _, _, n, by, order = term
            return seal(semantics.top_partial(items, n, resolve(*by) if by else None, order))
        if what == "rbk":
            _, _, module, attr, k = term
            partial = semantics.reduce_by_key_partial(resolve(module, attr), items)
        elif what == "split":
            _, _, label, k = term
            try:
                return [seal(b) for b in semantics.shuffle_split(items, k, label)]
            except TypeError as exc:
                raise StageFailure(where, str(exc), partition=partition) from None
        elif what == "distinct":
            return [seal(b) for b in semantics.distinct_split(items, term[2])]
        else:
            raise ValueError(f"unknown terminal {what!r}")
    except StageFailure:
        raise
    except Exception as exc:
        raise _user_failure(where, exc, partition) from None
    try:
        return [seal(b) for b in semantics.shuffle_split(partial, k, "reduce_by_key")]
    except TypeError as exc:
        raise StageFailure(where, str(exc), partition=partition) from None


def run_chain(stages: tuple, terminal: tuple | None, partition: int, items, *bound):
    """One partition (or the source making it) through fused element-wise stages, then
    an optional terminal (the partition-wise half of a reduction, shuffle or top)."""
    items = items.make(bound) if isinstance(items, Head) else unseal(items)
    for stage in stages:
        items = _run_stage(stage, items, bound, partition)
    if terminal is not None:
        return _terminal(terminal, items, partition)
    return seal(items)


def pool_call(stage: tuple, partition: int, seq: int, member_index: int, member, items: Sealed, *bound):
    """One partition of a stage served by an actor pool member (calls in partition order)."""
    from distributed import rejoin, secede
    where, kind, method, bindings, timeout, pool = stage
    values = seal(_bindings(bindings, bound))
    try:
        future = member.apply(seq, kind, method, items, values, partition, timeout)
    except Exception as exc:
        if is_lost(exc):
            raise ActorLost(pool, member_index, str(exc)) from None
        raise
    # Free this worker thread while the member works (and waits for earlier partitions).
    secede()
    try:
        status, payload = await_actor(future, member, pool, member_index)
    finally:
        rejoin()
    if status == "ok":
        return payload
    if status == "timeout":
        raise StageFailure(where, f"partition {partition} did not finish within its timeout of {timeout:g} s",
                           partition=partition)
    raise StageFailure(where, *payload, partition=partition)


# ---- shuffle merges and combines -----------------------------------------------------------------


def combine(where: str, module: str, attr: str, final: bool, *partials) -> Sealed:
    """One node of a reduction's tree: partials in partition order, FAN_IN at most."""
    try:
        result = semantics.combine_group(resolve(module, attr), [unseal(p) for p in partials])
    except Exception as exc:
        raise _user_failure(where, exc, None) from None
    if final and result is semantics.EMPTY:
        raise StageFailure(where, "`reduce` over an empty collection has no value",
                           "filter less, or give the reduction an initial element in the data")
    return seal(result)


def count_total(where: str, *lengths) -> Sealed:
    return seal(sum(unseal(n) for n in lengths))


def top_final(where: str, n: int, by, order, *candidates) -> Sealed:
    try:
        return seal(semantics.top_merge([unseal(c) for c in candidates], n, resolve(*by) if by else None, order))
    except Exception as exc:
        raise _user_failure(where, exc, None) from None


# ---- actors --------------------------------------------------------------------------------------


class DaskActorHost(ActorHost):
    """An :class:`ActorHost` living on a worker as a Dask actor. Restores itself from the
    snapshot file when one exists (a re-created actor), then the driver replays."""

    def __init__(self, roots: list[str], module: str, cls: str, args: list, kwargs: dict,
                 checkpoint_every: int | None, snapshot: str | None):
        ensure_path(roots)
        super().__init__(module, cls, args, kwargs, checkpoint_every, snapshot)

    def call_sealed(self, seq: int, method: str, sealed: Sealed) -> Sealed:
        args, kwargs = unseal(sealed)
        return seal(self.call(seq, method, args, kwargs))

    def invoke_sealed(self, method: str, sealed: Sealed) -> Sealed:
        args, kwargs = unseal(sealed)
        return seal(self.invoke(method, args, kwargs))

    def applied_seq(self) -> int:
        return self.applied

    async def ping(self) -> bool:
        """Answered by the worker's event loop, even while a long call is running."""
        return True


class PoolMember:
    """One member of an actor pool. Partitions reach it numbered; it serves them in that
    order (the reference backend's order), whatever order the tasks ran in."""

    def __init__(self, roots: list[str], module: str, cls: str, args: list, kwargs: dict, start: int = 0):
        ensure_path(roots)
        self.obj = resolve(module, cls)(*args, **kwargs)
        self.next = start  # the number of the next call to serve
        self._cond: asyncio.Condition | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pipec-pool")

    async def apply(self, seq: int, kind: str, method: str, items: Sealed, bindings: Sealed, partition: int,
                    timeout: float | None):
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            await self._cond.wait_for(lambda: self.next >= seq)
        fn = getattr(self.obj, method)
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: seal(apply_elementwise(kind, fn, unseal(items), unseal(bindings), partition)))
        try:
            result = ("ok", await asyncio.wait_for(asyncio.shield(work), timeout))
        except asyncio.TimeoutError:
            result = ("timeout", None)
        except Exception as exc:
            failure = _user_failure("", exc, partition)
            result = ("error", (failure.message, failure.hint))
        async with self._cond:
            self.next = max(self.next, seq + 1)
            self._cond.notify_all()
        return result

    async def ping(self) -> bool:
        return True

