"""What runs on the Dask workers: task bodies, actor hosts, the handle proxy.

Every task body calls the shared functions of :mod:`backends.runtime.semantics` and
:mod:`backends.runtime.tasks`, so a partition computed here is the one the reference
backend computes. Functions are pickled by reference: workers import this module (and
``distributed``, lazily, only where a task talks to an actor).

A user error inside a task becomes :class:`StageFailure` (picklable, names the stage and
the partition) so the driver can point at the source line; a call to an actor whose
worker died becomes :class:`ActorLost` so the driver can restore the actor and run the
graph again.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from backends.runtime import semantics
from backends.runtime.actors import ActorHost
from backends.runtime.tasks import apply_elementwise, ensure_path, resolve, user_frame


class StageFailure(Exception):
    """A stage failed on a worker: ``where`` is the IR node, ``hint`` where it raised."""

    def __init__(self, where: str, message: str, hint: str | None = None):
        super().__init__(where, message, hint)
        self.where, self.message, self.hint = where, message, hint

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


def _user_failure(where: str, exc: BaseException, partition: int | None) -> StageFailure:
    place = f" (partition {partition})" if partition is not None else ""
    frame = user_frame(exc)
    return StageFailure(where, f"{type(exc).__name__}: {exc}{place}", f"raised at {frame}" if frame else None)


def _with_timeout(where: str, partition: int, timeout: float | None, body):
    """``body()``, failing after ``timeout`` seconds (the thread is left to finish alone)."""
    if timeout is None:
        return body()
    box: dict = {}

    def target():
        try:
            box["result"] = body()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True, name=f"pipec-{where}-{partition}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StageFailure(where, f"partition {partition} did not finish within its timeout of {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


# ---- sources ---------------------------------------------------------------------------------


def source_range(where: str, n: int, i: int, k: int) -> list:
    """Partition i of ``range(n)`` cut k ways."""
    a, b = semantics.partition_bounds(n, k)[i]
    return list(range(a, b))


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n").rstrip("\r") for line in fh]


def _read_jsonl(path: str) -> list:
    import json
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return out


def source_read(where: str, kind: str, path: str, i: int, k: int) -> list:
    """Partition i of a text or JSON-lines file cut k ways. Each task reads the file
    (no data crosses the network); the cut is the same contiguous one everywhere."""
    try:
        items = _read_lines(path) if kind == "read_text" else _read_jsonl(path)
    except OSError as exc:
        raise StageFailure(where, f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise _user_failure(where, exc, None) from None
    a, b = semantics.partition_bounds(len(items), k)[i]
    return items[a:b]


def source_call(where: str, module: str, attr: str, args: list, kwargs: dict) -> list:
    """All items of a callable source (called once, on a worker)."""
    try:
        return list(resolve(module, attr)(*args, **kwargs))
    except Exception as exc:
        raise _user_failure(where, exc, None) from None


def take_part(where: str, i: int, k: int, items: list) -> list:
    """Partition i of k contiguous blocks of ``items``."""
    a, b = semantics.partition_bounds(len(items), k)[i]
    return list(items[a:b])


def source_sharded(where: str, module: str, attr: str, args: list, kwargs: dict, i: int, k: int) -> list:
    """A sharded source: the callable makes partition i itself."""
    try:
        return list(resolve(module, attr)(*args, **kwargs, partition=i, partitions=k))
    except Exception as exc:
        raise _user_failure(where, exc, i) from None


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
                return self._actor.invoke(method, args, kwargs).result()
            except Exception as exc:
                if is_lost(exc):
                    raise ActorLost(self._node, None, str(exc)) from None
                raise
        return call

    def __reduce__(self):
        return (HandleProxy, (self._node, self._actor))


def _bindings(spec: dict, bound: Sequence) -> dict:
    out = {}
    for name, (how, what) in spec.items():
        if how == "lit":
            out[name] = what
        elif how == "ref":
            out[name] = bound[what]
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
            return semantics.fold(resolve(term[2], term[3]), items)
        if what == "len":
            return len(items)
        if what == "top":
            _, _, n, by, order = term
            return semantics.top_partial(items, n, resolve(*by) if by else None, order)
        if what == "rbk":
            _, _, module, attr, k = term
            partial = semantics.reduce_by_key_partial(resolve(module, attr), items)
        elif what == "split":
            _, _, label, k = term
            try:
                return semantics.shuffle_split(items, k, label)
            except TypeError as exc:
                raise StageFailure(where, str(exc)) from None
        elif what == "distinct":
            return semantics.distinct_split(items, term[2])
        else:
            raise ValueError(f"unknown terminal {what!r}")
    except StageFailure:
        raise
    except Exception as exc:
        raise _user_failure(where, exc, partition) from None
    try:
        return semantics.shuffle_split(partial, k, "reduce_by_key")
    except TypeError as exc:
        raise StageFailure(where, str(exc)) from None


def run_chain(stages: tuple, terminal: tuple | None, partition: int, items: list, *bound):
    """One partition through fused element-wise stages, then an optional terminal."""
    for stage in stages:
        items = _run_stage(stage, items, bound, partition)
    if terminal is not None:
        return _terminal(terminal, items, partition)
    return items


def pool_call(stage: tuple, partition: int, seq: int, member_index: int, member, items: list, *bound):
    """One partition of a stage served by an actor pool member (calls in partition order)."""
    from distributed import rejoin, secede
    where, kind, method, bindings, timeout, pool = stage
    values = _bindings(bindings, bound)
    try:
        future = member.apply(seq, kind, method, items, values, partition, timeout)
    except Exception as exc:
        if is_lost(exc):
            raise ActorLost(pool, member_index, str(exc)) from None
        raise
    # Free this worker thread while the member works (and waits for earlier partitions).
    secede()
    try:
        status, payload = future.result()
    except Exception as exc:
        if is_lost(exc):
            raise ActorLost(pool, member_index, str(exc)) from None
        raise
    finally:
        rejoin()
    if status == "ok":
        return payload
    if status == "timeout":
        raise StageFailure(where, f"partition {partition} did not finish within its timeout of {timeout:g} s")
    raise StageFailure(where, *payload)


# ---- shuffle merges and combines -----------------------------------------------------------------


def rbk_merge(where: str, module: str, attr: str, j: int, *outputs):
    try:
        return semantics.reduce_by_key_merge(resolve(module, attr), [out[j] for out in outputs])
    except Exception as exc:
        raise _user_failure(where, exc, j) from None


def group_merge(where: str, j: int, *outputs):
    return semantics.group_merge([out[j] for out in outputs])


def distinct_merge(where: str, j: int, *outputs):
    return semantics.distinct_merge([out[j] for out in outputs])


def join_merge(where: str, j: int, left_count: int, *outputs):
    left, right = outputs[:left_count], outputs[left_count:]
    return semantics.join_merge([out[j] for out in left], [out[j] for out in right])


def combine(where: str, module: str, attr: str, final: bool, *partials):
    """One node of a reduction's tree: partials in partition order, FAN_IN at most."""
    try:
        result = semantics.combine_group(resolve(module, attr), partials)
    except Exception as exc:
        raise _user_failure(where, exc, None) from None
    if final and result is semantics.EMPTY:
        raise StageFailure(where, "`reduce` over an empty collection has no value",
                           "filter less, or give the reduction an initial element in the data")
    return result


def count_total(where: str, *lengths) -> int:
    return sum(lengths)


def top_final(where: str, n: int, by, order, *candidates) -> list:
    try:
        return semantics.top_merge(candidates, n, resolve(*by) if by else None, order)
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

    async def apply(self, seq: int, kind: str, method: str, items: list, bindings: dict, partition: int,
                    timeout: float | None):
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            await self._cond.wait_for(lambda: self.next >= seq)
        fn = getattr(self.obj, method)
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: apply_elementwise(kind, fn, items, bindings, partition))
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

