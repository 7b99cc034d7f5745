"""The Ray backend: stages become Ray tasks, actors become Ray actors.

Lowering (decided statically, so `pipec compile` shows exactly what runs):

* A collection is a list of partitions held in Ray's object store, one ObjectRef each.
  Partitions stay there between stages and across loop rounds; the driver fetches only
  what a value, a ``collect`` or a sink needs.
* A *segment* is one Ray task per partition: a head (an input partition, a generated
  ``range`` block, a call of a sharded source, or the merge side of a shuffle), then
  fused element-wise stages, then a terminal (the partition itself, a fold partial, a
  count, or a shuffle split with one return per output partition). :func:`fusion`
  decides which stages fuse; the driver and the explained plan both use it.
* A collection read by several reductions or shuffles is a *shared scan*: their fold,
  count or split runs in the collection's own tasks, one pass over each partition.
* Inside a loop, the split of a shuffle input that no round changes is computed once.
* ``reduce`` folds each partition inside its segment; combine tasks then fold the
  partials FAN_IN at a time by partition index, level by level, and the driver folds
  the last group when it fetches the value.
* ``reduce_by_key``, ``group_by_key``, ``join`` and ``distinct`` split every partition
  by the stable key hash into k buckets (k returns of one task) and merge bucket j of
  every partition, in partition order, in task j.
* Stage options map to Ray's: ``retries`` to ``max_retries`` (with ``retry_exceptions``),
  ``resources`` to ``num_cpus`` / ``num_gpus`` / ``memory``; a ``timeout`` is enforced by
  the driver, which cancels the task and names the stage.

Actors are Ray actors with ``max_restarts`` for the process and Ray's own method retries
off (they are at-least-once and may reorder). Every graph-level call carries a sequence
number; the actor restores its last snapshot in its constructor, reports a gap when calls
are missing, and the driver replays its log in order, each call applied exactly once.
Actor pools are sets of Ray actors fed partitions as they free up.

Every task body calls the shared runtime (``backends.runtime``), so sinks are
byte-identical to the local backend's. Ray itself is imported only when a plan runs.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import networkx as nx

from compiler import ir
from compiler.capabilities import FEATURES
from compiler.schedule import Block, blocks
from backends.base import Backend, NoProgress, Plan, Progress, RunResult
from backends.runtime import semantics
from backends.runtime.actors import ActorHost
from backends.runtime.driver import Driver
from backends.runtime.tasks import apply_elementwise, ensure_path, fn_of, resolve, user_frame
from dsl.diagnostics import PipecError, PipelineRuntimeError

# How long the driver waits for a restarted actor to come back before giving up.
ACTOR_RESTART_WAIT = 120.0


class RayEngineError(PipecError):
    """The Ray runtime could not be started or reached."""


# =========================================================================================
# The Ray runtime: embedded, joined, or already running in this process
# =========================================================================================

_OWNED = {"started": False}


def configure_environment() -> None:
    """Settings that must be in place before Ray starts, chosen on purpose.

    Ray 2.60 turns token authentication on for every new local cluster and warns about it
    on each start unless ``RAY_AUTH_MODE`` says what is wanted. pipec asks for it
    explicitly (the token lives in ~/.ray/auth_token, shared by the driver and `ray start`
    on this machine); a value the user set is kept. Ray caches its configuration when it
    is imported, so the cached copy is refreshed if Ray was imported already.
    """
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray._raylet" in sys.modules:
            from ray._raylet import Config
            Config.initialize("")
    # Ray's usage-statistics prompt and its deduplication hints are terminal noise.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def start_runtime(address: str | None = None, num_cpus: int | None = None,
                  runtime_env: dict | None = None) -> bool:
    """Connect this process to Ray; True if this call started (or joined) it.

    Reuses a Ray already initialised in this process. Otherwise joins ``address`` (or
    ``RAY_ADDRESS``), or starts an embedded local runtime sized to the machine (or to
    ``num_cpus``): no dashboard, worker output kept off the terminal, logs at ERROR.
    """
    configure_environment()
    import ray
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address and address != "auto" and "://" not in address and not _same_address(address, current):
            raise RayEngineError(f"this process is already connected to the Ray cluster at {current}, "
                                 f"so it cannot join {address}\n"
                                 "  = hint: leave out --address to use the connected cluster, or run pipec in a "
                                 "fresh process")
        return False
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True, namespace="pipec")
    if target != "local":
        _probe(target)
    try:
        if target == "local":
            ray.init(address="local", num_cpus=num_cpus, **quiet)
        else:
            ray.init(address=target, runtime_env=runtime_env or None, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "start a local Ray runtime" if target == "local" else f"reach the Ray cluster at {target}"
        raise RayEngineError(f"cannot {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                             + ("" if target == "local" else
                                "\n  = hint: start one with `ray start --head`, or leave out --address "
                                "(and RAY_ADDRESS) for an embedded runtime")) from None
    _silence_raylet_messages()
    _OWNED["started"] = True
    return True


def _same_address(a: str, b: str) -> bool:
    """Whether two HOST:PORT addresses name the same Ray head (a loopback host matches
    this machine's own address, as Ray reports its GCS by the node's IP)."""
    def host_port(address: str) -> tuple[str, str]:
        host, _, port = address.rpartition(":")
        try:
            host = socket.gethostbyname(host or "127.0.0.1")
        except OSError:
            pass
        return host, port
    (ha, pa), (hb, pb) = host_port(a), host_port(b)
    return pa == pb and (ha == hb or ha.startswith("127.") or hb.startswith("127."))


def _probe(address: str) -> None:
    """Fail fast on an address nothing listens on (Ray itself retries for minutes)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        reason = "not HOST:PORT" if isinstance(exc, ValueError) else (exc.strerror or str(exc))
        raise RayEngineError(f"cannot reach the Ray cluster at {address}: {reason}\n"
                             "  = hint: start one with `ray start --head`, or leave out --address (and "
                             "RAY_ADDRESS) for an embedded runtime") from None


def stop_runtime() -> None:
    """Shut down (or leave) the Ray runtime this module started."""
    if not _OWNED["started"]:
        return
    import ray
    _OWNED["started"] = False
    if ray.is_initialized():
        ray.shutdown()


def _silence_raylet_messages() -> None:
    """Ray prints the raylet's error messages (a worker killed, say) on the driver's
    stdout even with ``log_to_driver=False``. pipec reports failures itself, naming the
    stage, so those lines are switched off with the flag Ray's own debugger uses."""
    import ray._private.worker as ray_worker
    if hasattr(ray_worker, "_worker_logs_enabled"):
        ray_worker._worker_logs_enabled = False


# =========================================================================================
# Worker side: task bodies and actor classes (imported on every Ray worker)
# =========================================================================================


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
        outputs.extend(result if _returns(branch_terminal) > 1 else [result])
    return tuple(outputs) if len(outputs) > 1 else outputs[0]


def _returns(terminal: tuple) -> int:
    """How many objects a terminal gives: one per bucket for a split, else one."""
    kind = terminal[0]
    if kind in ("rbk_split", "split"):
        return terminal[-1]
    if kind == "distinct_split":
        return terminal[2]
    if kind == "scan":
        return int(terminal[2]) + sum(_returns(t) for _, t in terminal[3])
    return 1


def _head_items(head: tuple, args: tuple, partition: int) -> tuple[list, int]:
    kind = head[0]
    if kind == "parts":
        return args[0], 1
    if kind == "range":
        return list(range(head[2], head[3])), 0
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
    """The process behind one pipec actor: an :class:`ActorHost` restored from its last
    snapshot when Ray restarts it (the constructor runs again)."""

    def __init__(self, paths: list[str], name: str, module: str, cls: str, args: list, kwargs: dict,
                 checkpoint_every: int | None, snapshot: str | None):
        ensure_path(paths)
        self.name = name
        self.failed: StageError | None = None
        try:
            self.host = ActorHost(module, cls, args, kwargs, checkpoint_every, snapshot)
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
        return self.host.invoke(method, args, kwargs)

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
def _remote():
    """The remote functions and actor classes, made once per process."""
    import ray

    class Remote:
        segment = ray.remote(run_segment)
        combine = ray.remote(combine_task)
        actor = ray.remote(ActorServer)
        pool = ray.remote(PoolMember)
    return Remote


# =========================================================================================
# Static lowering: fusion, segments, options
# =========================================================================================

_SHUFFLES = (ir.ReduceByKey, ir.GroupByKey, ir.Join, ir.Distinct)


def _plain(options: ir.StageOptions) -> bool:
    """A stage whose tasks may be fused with others: pure and without its own timeout."""
    return not options.effectful and options.timeout is None


def _handles(graph: ir.IR, node: str, op: ir.Elementwise) -> list[str]:
    """The binding names of ``op`` that pass an actor handle."""
    return [name for name, operand in op.bindings.items()
            if isinstance(operand, ir.NodeRef) and graph.op(operand.node).node_shape == ir.ACTOR]


def _forwardable(graph: ir.IR, node: str, op: ir.Op) -> bool:
    """Whether ``op``'s partitions may be computed inside its consumer's tasks."""
    if isinstance(op, ir.Elementwise):
        return op.fn is not None and not _handles(graph, node, op) and _plain(op.options)
    if isinstance(op, ir.Source):
        return (op.kind == "range" or op.sharded) and _plain(op.options)
    if isinstance(op, _SHUFFLES):
        return _plain(op.options)
    return False


def _absorbs(graph: ir.IR, node: str, op: ir.Op, port: str) -> bool:
    """Whether ``op`` can run its input's computation (arriving at ``port``) in its own tasks."""
    if isinstance(op, ir.Elementwise):
        return port == "input" and op.fn is not None and not _handles(graph, node, op) and _plain(op.options)
    if isinstance(op, (ir.Reduce, ir.ReduceByKey, ir.GroupByKey, ir.Distinct)):
        return port == "input" and _plain(op.options)
    if isinstance(op, ir.Join):
        return port in ("left", "right") and _plain(op.options)
    return isinstance(op, ir.Count)


def _resources(op: ir.Op) -> ir.Resources:
    options = getattr(op, "options", None)
    return options.resources if isinstance(options, ir.StageOptions) else ir.Resources()


def fusion(graph: ir.IR) -> dict[str, str]:
    """Node -> the consumer whose tasks compute it. A producer fuses into its only
    consumer in the same loop body when both are pure, without a timeout, and ask for the
    same resources; an actor-handle stage never fuses (it must finish in program order)."""
    fused: dict[str, str] = {}
    for node, op in graph.items():
        if op.node_shape != ir.COLLECTION or not _forwardable(graph, node, op):
            continue
        edges = [(dst, port) for _, dst, port, kind in graph.graph.out_edges(node, keys=True, data="kind")
                 if kind != "carry"]
        if len(edges) != 1:
            continue
        dst, port = edges[0]
        dop = graph.op(dst)
        if dop.loop != op.loop or not _absorbs(graph, dst, dop, port) or _resources(op) != _resources(dop):
            continue
        fused[node] = dst
    return fused


@dataclass(frozen=True)
class Chain:
    """What feeds a node at one input port: the head node, then fused element-wise stages.
    ``head_fused`` says whether the head itself is computed in the same tasks (a range or
    sharded source, or a shuffle's merge side) or is a materialised collection."""

    head: str
    steps: tuple[str, ...]
    head_fused: bool


_BRANCH_ENDS = (ir.Reduce, ir.Count, ir.ReduceByKey, ir.GroupByKey, ir.Distinct)


@dataclass(frozen=True)
class Branch:
    """One consumer of a shared scan: element-wise ``steps`` on the scanned partition,
    then the map side of ``owner`` (a fold, a count or a shuffle split)."""

    owner: str
    steps: tuple[str, ...]


class Lowering:
    """The static decisions for one pipeline: fusion, chains, task options and names."""

    def __init__(self, graph: ir.IR):
        self.ir = graph
        self.fused = fusion(graph)
        self.scans = self._shared_scans()  # collection -> (keep its partitions?, branches)
        self.scanned = {b.owner: (head, b) for head, (_, branches) in self.scans.items() for b in branches}

    def _shared_scans(self) -> dict[str, tuple["Branch", ...]]:
        """Collections read by several consumers whose reductions or shuffle splits can
        run in the collection's own tasks, in one pass over each partition (a branch per
        consumer). A branch qualifies when it is in the same loop body, pure, without a
        timeout, asks for the same resources, and binds only values computed before the
        collection (so computing it early changes nothing)."""
        order = {n: i for i, n in enumerate(self.ir)}
        scans: dict[str, list[Branch]] = {}
        for node, op in self.ir.items():
            if not isinstance(op, _BRANCH_ENDS) or not _plain(op.options if hasattr(op, "options")
                                                              else ir.StageOptions()):
                continue
            chain = self.chain(node, "input")
            head = chain.head
            hop = self.ir.op(head)
            if chain.head_fused or head in self.fused or not self._scannable(head, hop):
                continue
            members = list(chain.steps) + [node]
            if any(self.ir.op(m).loop != hop.loop or _resources(self.ir.op(m)) != _resources(hop)
                   for m in members):
                continue
            if any(not self._bound_before(s, order[head]) for s in chain.steps):
                continue
            scans.setdefault(head, []).append(Branch(node, chain.steps))
        out = {}
        for head, branches in scans.items():
            readers = [dst for _, dst, kind in self.ir.graph.out_edges(head, data="kind") if kind != "carry"]
            starts = [b.steps[0] if b.steps else b.owner for b in branches]
            keep = any(readers.count(r) != starts.count(r) for r in set(readers)) or len(readers) != len(starts)
            out[head] = (keep, tuple(branches))
        return out

    def _scannable(self, node: str, op: ir.Op) -> bool:
        if isinstance(op, ir.Elementwise):
            return op.fn is not None and not _handles(self.ir, node, op) and _plain(op.options)
        if isinstance(op, ir.Source):
            return (op.kind == "range" or op.sharded) and _plain(op.options)
        return isinstance(op, (ir.ReduceByKey, ir.GroupByKey, ir.Distinct, ir.Join)) and _plain(op.options)

    def _bound_before(self, step: str, index: int) -> bool:
        order = {n: i for i, n in enumerate(self.ir)}
        op = self.ir.op(step)
        return all(isinstance(v, ir.Lit) or order[v.node] < index for v in op.bindings.values())

    def scan_of(self, node: str) -> tuple[str, "Branch"] | None:
        """(the scanned collection, the branch) when ``node``'s input side runs in
        another collection's tasks."""
        return self.scanned.get(node)

    def chain(self, node: str, port: str) -> Chain:
        op = self.ir.op(node)
        producer = getattr(op, port).node
        consumer, steps = node, []
        while self.fused.get(producer) == consumer:
            pop = self.ir.op(producer)
            if isinstance(pop, ir.Elementwise):
                steps.insert(0, producer)
                consumer, producer = producer, pop.input.node
                continue
            return Chain(producer, tuple(steps), True)
        return Chain(producer, tuple(steps), False)

    def invariant(self, node: str, chain: Chain) -> bool:
        """Whether a shuffle inside a loop reads an input that no round changes (defined
        outside the loop, not a loop variable): its split is then computed once and the
        buckets reused every round."""
        op = self.ir.op(node)
        if op.loop is None or chain.steps or chain.head_fused:
            return False
        head = self.ir.op(chain.head)
        return not isinstance(head, ir.Var) and head.loop != op.loop

    def early(self, node: str) -> bool:
        """Whether actor ``node`` can be started when the run begins, its process starting
        while the driver loads sources: a top-level actor whose arguments are literals or
        parameters (nothing computed)."""
        op = self.ir.op(node)
        if not isinstance(op, ir.Actor) or op.loop is not None:
            return False
        operands = list(op.args) + list(op.kwargs.values()) + ([op.pool_size] if op.pool_size is not None else [])
        return all(isinstance(o, ir.Lit) or isinstance(self.ir.op(o.node), (ir.Param, ir.Const)) for o in operands)

    def members(self, chain: Chain, owner: str | None) -> list[str]:
        """The IR nodes one task of this segment computes, in order."""
        return ([chain.head] if chain.head_fused else []) + list(chain.steps) + ([owner] if owner else [])

    def group(self, chain: Chain, owner: str | None, role: str = "") -> str:
        """The segment's name: its nodes joined by `+`, and its role after a colon. Also
        the Ray task name, so `ray::NAME` shows in process lists while a task runs."""
        names = self.members(chain, owner)
        return "+".join(names) + (f":{role}" if role else "")

    def scan_name(self, chain: Chain, owner: str | None, role: str, also: list[str]) -> str:
        """A segment's name, with the nodes of a shared scan's branches after a `&`."""
        name = self.group(chain, owner, role)
        return name + ("&" + "+".join(also) if also else "")

    def options(self, nodes: list[str]) -> dict[str, Any]:
        """Ray task options for a segment computing ``nodes``: the most retries any of
        them asks for (fused stages are pure, so re-running them is harmless), no retry at
        all when one is effectful, and the (shared) resources."""
        retries, effectful = 0, False
        resources = ir.Resources()
        for node in nodes:
            options = getattr(self.ir.op(node), "options", None)
            if not isinstance(options, ir.StageOptions):
                continue
            retries = max(retries, options.retries)
            effectful = effectful or options.effectful
            resources = resources.merged(options.resources)
        if effectful:
            retries = 0
        out: dict[str, Any] = {"max_retries": retries, "retry_exceptions": retries > 0,
                               "num_cpus": resources.cpus if resources.cpus is not None else 1}
        if resources.gpus:
            out["num_gpus"] = resources.gpus
        if resources.memory:
            out["memory"] = resources.memory
        return out

    def timeout(self, nodes: list[str]) -> float | None:
        values = [o.timeout for o in (getattr(self.ir.op(n), "options", None) for n in nodes)
                  if isinstance(o, ir.StageOptions) and o.timeout is not None]
        return min(values) if values else None

    def actor_options(self, op: ir.Actor, name: str) -> dict[str, Any]:
        """A Ray actor restarts its process (``max_restarts``); its method retries stay off,
        because pipec replays graph-level calls itself, in order, exactly once."""
        return {"max_restarts": op.restarts, "max_task_retries": 0, "name": name}


# =========================================================================================
# The driver
# =========================================================================================


class Parts:
    """A materialised collection: one ObjectRef per partition, in partition order."""

    def __init__(self, refs: list):
        self.refs = list(refs)


class Gen:
    """A fused source: its partitions are generated inside the consumer's tasks."""

    def __init__(self, heads: list[tuple]):
        self.heads = heads


class Buckets:
    """A fused shuffle: the split outputs, merged inside the consumer's tasks.
    ``parts[i][j]`` is bucket j of input partition i (for a join, left then right)."""

    def __init__(self, kind: str, node: str, k: int, parts: list[list], right: list[list] | None = None,
                 fn: ir.FnRef | None = None):
        self.kind, self.node, self.k, self.parts, self.right, self.fn = kind, node, k, parts, right, fn


class Fused:
    """An element-wise stage computed inside its consumer's tasks."""


class Scanned:
    """A shared scan whose partitions nothing else reads: only its branches' outputs
    were kept. ``k`` is its number of partitions."""

    def __init__(self, k: int):
        self.k = k


FUSED = Fused()


@dataclass
class _Watched:
    """Tasks of one segment the driver reports progress for, or enforces a timeout on."""

    name: str
    owner: str
    refs: list
    timeout: float | None
    slots: int
    started: dict[int, float] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    def start_more(self, now: float) -> None:
        # A task's clock starts when it can run: at most `slots` of the segment at once.
        running = len(self.started) - len(self.done & set(self.started))
        for i in range(len(self.refs)):
            if running >= self.slots:
                break
            if i not in self.started and i not in self.done:
                self.started[i] = now
                running += 1


class RayRunResult(RunResult):
    """A run's results plus what fault tolerance did: actor recoveries per actor."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recoveries: dict[str, int] = {}


class _Restarted(Exception):
    """An actor restarted again while the driver replayed its calls."""


class RayDriver(Driver):
    backend = "ray"

    def __init__(self, graph: ir.IR, params: dict[str, Any], progress: Progress | None, run_dir: str | None,
                 lowering: Lowering):
        super().__init__(graph, params, progress, run_dir)
        self.low = lowering
        self.result = RayRunResult(backend=self.backend, run_dir=str(self.run_dir))
        self.paths = graph.info.module_paths()

    # ---- lifecycle

    def setup(self) -> None:
        import ray
        self.ray = ray
        self.fns = _remote()
        self.actors: dict[str, Any] = {}
        self.pools: dict[str, list] = {}
        self.puts: dict[str, tuple[Any, Any]] = {}
        self.splits: dict[tuple[str, str], tuple[Any, tuple, list]] = {}
        self.names: dict[str, str] = {}  # Ray task name -> the IR node its errors belong to
        self.branch_out: dict[str, list] = {}  # shared-scan outputs, until their owner runs
        self.watched: dict[Any, tuple[_Watched, int]] = {}
        self.track = not isinstance(self.progress, NoProgress)
        cluster = ray.cluster_resources()
        self.cpus = max(1.0, float(cluster.get("CPU", 1)))
        self.call_op: ir.ActorCall | None = None
        self.call_ref = None
        self._check_resources(cluster)
        self.early: dict[str, Any] = {}
        for node, op in self.ir.items():
            if self.low.early(node):
                args, kwargs = self._static(op.args), {k: self._static([v])[0] for k, v in op.kwargs.items()}
                self.early[node] = (self._create_pool(node, op, self._static([op.pool_size])[0], args, kwargs)
                                    if op.pool_size is not None else self._create_actor(node, op, args, kwargs))

    def _static(self, operands) -> list:
        out = []
        for operand in operands:
            if isinstance(operand, ir.Lit):
                out.append(operand.value)
                continue
            op = self.ir.op(operand.node)
            out.append(self.params[operand.node] if isinstance(op, ir.Param) else op.value)
        return out

    def teardown(self) -> None:
        self._drain()
        for handle in list(self.actors.values()) + [h for hs in self.pools.values() for h in hs]:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:
                pass
        self.env.clear()
        self.puts.clear()
        self.splits.clear()
        self.branch_out.clear()
        self.watched.clear()

    def _check_resources(self, cluster: dict) -> None:
        """A task asking for more than the whole cluster has would wait forever: refuse."""
        for node, op in self.ir.items():
            options = getattr(op, "options", None)
            if not isinstance(options, ir.StageOptions):
                continue
            res = options.resources
            for key, want in (("CPU", res.cpus), ("GPU", res.gpus), ("memory", res.memory)):
                if want and want > cluster.get(key, 0):
                    have = cluster.get(key, 0)
                    raise self.error(node, f"asks for {key.lower() if key != 'memory' else 'memory'} {want:g} "
                                           f"but the Ray cluster has {have:g} in all", op.span,
                                     "lower the stage's `resources`, or run on a cluster that has them")

    # ---- submitting segments

    def submit(self, chain: Chain, owner: str | None, terminal: tuple, role: str = "", returns: int = 1,
               also: list[str] = (), also_values: list = ()) -> list:
        """One task per head partition running ``chain`` then ``terminal`` (whose result
        belongs to ``owner``); per task one ref, or a list of ``returns`` refs. ``also``
        names the nodes of a shared scan's branches, ``also_values`` their bound values."""
        low = self.low
        nodes = low.members(chain, owner) + list(also)
        name = low.scan_name(chain, owner, role, also)
        heads = self._heads(chain.head)
        if not heads:
            return []
        step_specs, values = self._steps(chain.steps)
        values = values + list(also_values)
        options = dict(low.options(nodes), name=name)
        if returns != 1:
            options["num_returns"] = returns
        remote = self.fns.segment.options(**options)
        primary = owner or low.members(chain, owner)[-1]  # whose output this is, for errors
        self.names[name] = primary
        out = []
        for i, (head, args) in enumerate(heads):
            out.append(remote.remote((self.paths, head, step_specs, terminal, i), *args, *values))
        self._watch(name, primary, [r[0] if returns != 1 else r for r in out], low.timeout(nodes),
                    options["num_cpus"])
        return out

    def _heads(self, node: str) -> list[tuple[tuple, list]]:
        """Per partition: the head spec and its arguments."""
        value = self.env[node]
        if isinstance(value, Parts):
            return [(("parts", node), [ref]) for ref in value.refs]
        if isinstance(value, Gen):
            return [(head, []) for head in value.heads]
        if isinstance(value, Buckets):
            n = len(value.parts)
            if value.kind == "rbk":
                return [(("rbk_merge", node, value.fn.module, value.fn.attr, n), [b[j] for b in value.parts])
                        for j in range(value.k)]
            if value.kind == "join":
                nr = len(value.right)
                return [(("join_merge", node, n, nr), [b[j] for b in value.parts] + [b[j] for b in value.right])
                        for j in range(value.k)]
            return [((f"{value.kind}_merge", node, n), [b[j] for b in value.parts]) for j in range(value.k)]
        raise RuntimeError(f"pipec internal error: {node} has no partitions ({type(value).__name__})")

    def _width(self, node: str) -> int:
        value = self.env[node]
        if isinstance(value, Scanned):
            return value.k
        if isinstance(value, Parts):
            return len(value.refs)
        if isinstance(value, Gen):
            return len(value.heads)
        if isinstance(value, Buckets):
            return value.k
        raise RuntimeError(f"pipec internal error: {node} has no partitions")

    def _steps(self, steps: tuple[str, ...]) -> tuple[tuple, list]:
        specs, values = [], []
        for node in steps:
            op = self.ir.op(node)
            names = tuple(op.bindings)
            specs.append((node, op.kind, op.fn.module, op.fn.attr, names))
            values += [self.binding(operand) for operand in op.bindings.values()]
        return tuple(specs), values

    def binding(self, operand):
        """A stage's bound value: literals inline, driver values put once (per round, as
        a value changes each round) and passed by reference, actors as a proxy."""
        if isinstance(operand, ir.Lit):
            return operand.value
        node = operand.node
        if self.ir.op(node).node_shape == ir.ACTOR:
            return ActorProxy(self.actors[node])
        value = self.value(operand)
        cached = self.puts.get(node)
        if cached is not None and cached[0] is value:
            return cached[1]
        ref = self.ray.put(value)
        self.puts[node] = (value, ref)
        return ref

    def parts(self, node: str) -> list:
        """The partition refs of ``node``, computing a fused head if need be."""
        value = self.env[node]
        if isinstance(value, Parts):
            return value.refs
        if isinstance(value, (Gen, Buckets)):
            parts = Parts(self.submit(Chain(node, (), True), None, ("part", node)))
            self.env[node] = parts
            return parts.refs
        raise RuntimeError(f"pipec internal error: {node} has no partitions ({type(value).__name__})")

    def produce(self, node: str, chain: Chain, role: str = ""):
        """Compute collection ``node`` with ``chain``; when it is a shared scan, its
        branches' fold, count or split outputs come from the same tasks (kept for their
        owners in ``branch_out``), and the partitions are kept only if read elsewhere."""
        scan = self.low.scans.get(node)
        if scan is None:
            return Parts(self.submit(chain, None, ("part", node), role))
        keep, branches = scan
        k = len(self._heads(chain.head))
        specs, values, members = [], [], []
        for branch in branches:
            step_specs, vals = self._steps(branch.steps)
            specs.append((step_specs, self._branch_terminal(branch.owner, k)))
            values += vals
            members += list(branch.steps) + [branch.owner]
        terminal = ("scan", node, keep, tuple(specs))
        n = _returns(terminal)
        out = self.submit(chain, None, terminal, role, returns=n, also=members, also_values=values)
        rows = [list(refs) if n > 1 else [refs] for refs in out]
        at = 1 if keep else 0
        for branch, (_, term) in zip(branches, specs):
            r = _returns(term)
            self.branch_out[branch.owner] = [row[at] if term[0] in ("fold", "count") else row[at:at + r]
                                             for row in rows]
            at += r
        return Parts([row[0] for row in rows]) if keep else Scanned(k)

    def _branch_terminal(self, owner: str, k: int) -> tuple:
        op = self.ir.op(owner)
        if isinstance(op, ir.Reduce):
            return ("fold", owner, op.fn.module, op.fn.attr)
        if isinstance(op, ir.Count):
            return ("count", owner)
        if isinstance(op, ir.ReduceByKey):
            return ("rbk_split", owner, op.fn.module, op.fn.attr, k)
        if isinstance(op, ir.GroupByKey):
            return ("split", owner, "group_by_key", k)
        return ("distinct_split", owner, k)

    # ---- waiting, progress, timeouts, errors

    def _watch(self, name: str, owner: str, refs: list, timeout: float | None, cpus: float) -> None:
        if not refs:
            return
        if self.track:
            self.progress.stage(name, len(refs))
        if not self.track and timeout is None:
            return
        slots = max(1, int(self.cpus // max(cpus, 1e-9)))
        entry = _Watched(name, owner, refs, timeout, slots)
        entry.start_more(time.monotonic())
        for i, ref in enumerate(refs):
            self.watched[ref] = (entry, i)

    def fetch(self, refs: list) -> list:
        """The values of ``refs``, reporting progress and enforcing timeouts meanwhile
        (also of tasks upstream of ``refs``: a hung task would block them forever)."""
        waiting = set(refs)
        while self.watched and waiting:
            now = time.monotonic()
            deadline = self._next_deadline()
            wait = None if deadline is None else max(0.0, deadline - now)
            pool = list(self.watched) + [r for r in waiting if r not in self.watched]
            ready, _ = self.ray.wait(pool, num_returns=1, timeout=wait, fetch_local=False)
            now = time.monotonic()
            for ref in ready:
                waiting.discard(ref)
                if ref in self.watched:
                    entry, i = self.watched.pop(ref)
                    entry.done.add(i)
                    entry.start_more(now)
                    if self.track:
                        self.progress.advance(entry.name)
            self._check_deadlines(now)
        try:
            return self.ray.get(refs)
        except Exception:
            for ref in refs:  # find the first failing task and name it
                try:
                    self.ray.get(ref)
                except Exception as exc:
                    raise self.task_error(exc) from None
            raise

    def _drain(self) -> None:
        """Report the tasks that finished while nobody waited on them."""
        if not self.watched:
            return
        try:
            ready, _ = self.ray.wait(list(self.watched), num_returns=len(self.watched), timeout=0,
                                     fetch_local=False)
        except Exception:
            return
        for ref in ready:
            entry, _ = self.watched.pop(ref)
            if self.track:
                self.progress.advance(entry.name)

    def _next_deadline(self) -> float | None:
        deadlines = [entry.started[i] + entry.timeout for entry, i in self.watched.values()
                     if entry.timeout is not None and i in entry.started]
        return min(deadlines) if deadlines else None

    def _check_deadlines(self, now: float) -> None:
        for ref, (entry, i) in list(self.watched.items()):
            if entry.timeout is not None and i in entry.started and now - entry.started[i] > entry.timeout:
                for other in entry.refs:
                    try:
                        self.ray.cancel(other, force=True)
                    except Exception:
                        pass
                op = self.ir.op(entry.owner)
                raise self.error(entry.owner, f"partition {i} did not finish within its timeout of "
                                              f"{entry.timeout:g} s", op.span,
                                 f"the task `{entry.name}` was cancelled; raise `timeout` or make the stage faster")

    def task_error(self, exc: BaseException) -> PipelineRuntimeError:
        """A Ray failure as a pipec error naming the stage (and partition) that failed."""
        ray = self.ray
        cause = getattr(exc, "cause", None)
        if isinstance(exc, StageError) or isinstance(cause, StageError):
            err = cause if isinstance(cause, StageError) else exc
            node = err.stage.split(".")[0] if err.stage not in self.ir.graph else err.stage
            span = self.ir.op(node).span if node in self.ir.graph else None
            if self.call_op is not None and err.stage == f"{self.call_op.actor.node}.{self.call_op.method}":
                span = self.call_op.span
            place = f" (partition {err.partition})" if err.partition is not None else ""
            return self.error(err.stage, f"{err.kind}: {err.message}{place}", span,
                              f"raised at {err.frame}" if err.frame else None)
        if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
            # Failed outside the user's function: Ray could not pickle what the task returned.
            # Ray's message starts with the task's name (ours: the segment's), in colour.
            found = re.search(r"ray::([^\s(]+)\(", re.sub(r"\x1b\[[0-9;]*m", "", str(exc)))
            owner = self.names.get(found.group(1)) if found else None
            span = self.ir.op(owner).span if owner in self.ir.graph else None
            if "pickle" in str(cause).lower():
                return self.error(owner or "ray", f"the output cannot be pickled, so it cannot cross to another "
                                                  f"process ({type(cause).__name__}: {cause})", span,
                                  "return plain data (numbers, strings, lists, dicts, numpy arrays)")
            return self.error(owner or "ray", f"{type(cause).__name__}: {cause}", span)
        if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
                            ray.exceptions.OwnerDiedError, ray.exceptions.NodeDiedError)):
            return self.error("ray", f"a Ray worker or node was lost and the task ran out of retries "
                                     f"({type(exc).__name__})", None,
                              "give the stage `retries N` so Ray re-runs lost tasks")
        if isinstance(exc, ray.exceptions.OutOfMemoryError):
            return self.error("ray", "a task was killed for running out of memory", None,
                              "use more partitions, or ask for `resources { memory ... }`")
        return self.error("ray", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", None)

    # ---- sources and element-wise stages

    def collection_source(self, node: str, op: ir.Source):
        k = self.value(op.partitions)
        args = [self.value(a) for a in op.args]
        kwargs = {key: self.value(v) for key, v in op.kwargs.items()}
        if op.kind == "range" or op.sharded:
            if op.kind == "range":
                heads = [("range", node, a, b) for a, b in semantics.partition_bounds(args[0], k)]
            else:
                heads = [("shard", node, op.fn.module, op.fn.attr, args, kwargs, k) for _ in range(k)]
            self.env[node] = Gen(heads)
            if node in self.low.fused:
                return self.env[node]
            return self.produce(node, Chain(node, (), True))
        from backends.local import _read_jsonl, _read_lines  # the reference's exact reading
        self.progress.stage(node, k)
        try:
            if op.kind == "read_text":
                parts = semantics.split(_read_lines(args[0]), k)
            elif op.kind == "read_jsonl":
                parts = semantics.split(_read_jsonl(args[0]), k)
            else:
                parts = semantics.split(list(fn_of(op.fn)(*args, **kwargs)), k)
        except OSError as exc:
            raise self.error(node, f"cannot read {args[0] if args else ''}: {exc.strerror or exc}", op.span) from None
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        try:
            refs = [self.ray.put(p) for p in parts]
        except Exception as exc:
            raise self.error(node, f"a partition cannot be put in Ray's object store ({type(exc).__name__}: "
                                   f"{exc})", op.span, "return plain data (numbers, strings, lists, numpy arrays)") \
                from None
        self.progress.advance(node, k)
        return Parts(refs)

    def collection_elementwise(self, node: str, op: ir.Elementwise):
        if node in self.low.fused:
            return FUSED
        if op.pool is not None:
            return Parts(self.run_pool(node, op))
        chain = self.low.chain(node, "input")
        out = self.produce(node, Chain(chain.head, chain.steps + (node,), chain.head_fused))
        if _handles(self.ir, node, op) or not self.ir.consumers(node):
            # Graph-level calls after this stage must see its calls; and an unused
            # stage's failure must still surface.
            self.fetch(out.refs)
        return out

    # ---- keyed operations

    def collection_reduce_by_key(self, node: str, op: ir.ReduceByKey):
        chain = self.low.chain(node, "input")
        k = self._width(chain.head)
        parts = self._split(chain, node, ("rbk_split", node, op.fn.module, op.fn.attr, k), k)
        return self._shuffled(node, Buckets("rbk", node, k, parts, fn=op.fn))

    def collection_group_by_key(self, node: str, op: ir.GroupByKey):
        chain = self.low.chain(node, "input")
        k = self._width(chain.head)
        parts = self._split(chain, node, ("split", node, "group_by_key", k), k)
        return self._shuffled(node, Buckets("group", node, k, parts))

    def collection_distinct(self, node: str, op: ir.Distinct):
        chain = self.low.chain(node, "input")
        k = self._width(chain.head)
        parts = self._split(chain, node, ("distinct_split", node, k), k)
        return self._shuffled(node, Buckets("distinct", node, k, parts))

    def collection_join(self, node: str, op: ir.Join):
        left, right = self.low.chain(node, "left"), self.low.chain(node, "right")
        k = max(self._width(left.head), self._width(right.head))
        lparts = self._split(left, node, ("split", node, "join", k), k, "split left")
        rparts = self._split(right, node, ("split", node, "join", k), k, "split right")
        return self._shuffled(node, Buckets("join", node, k, lparts, rparts))

    def _split(self, chain: Chain, node: str, terminal: tuple, k: int, role: str = "split") -> list[list]:
        if node in self.branch_out:  # split in the tasks of a shared scan
            return self.branch_out.pop(node)
        invariant = self.low.invariant(node, chain)
        if invariant:
            cached = self.splits.get((node, role))
            if cached is not None and cached[0] is self.env[chain.head] and cached[1] == terminal:
                return cached[2]
        out = self.submit(chain, node, terminal, role, returns=k) if k else []
        buckets = [list(refs) if k > 1 else [refs] for refs in out]
        if invariant:
            self.splits[(node, role)] = (self.env[chain.head], terminal, buckets)
        return buckets

    def _shuffled(self, node: str, buckets: Buckets):
        self.env[node] = buckets
        if node in self.low.fused:
            return buckets
        return self.produce(node, Chain(node, (), True), "merge")

    def collection_union(self, node: str, op: ir.UnionAll):
        return Parts([ref for part in op.parts for ref in self.parts(part.node)])

    # ---- actor pools

    def run_pool(self, node: str, op: ir.Elementwise) -> list:
        """Feed partitions to the pool's actors as they free up; a partition lost with an
        actor is sent again (the pool restarts it, or another member takes it)."""
        ray = self.ray
        parts = self.parts(op.input.node)
        members = list(self.pools[op.pool.node])
        pool_op = self.ir.op(op.pool.node)
        names = tuple(op.bindings)
        values = [self.binding(v) for v in op.bindings.values()]
        attempts_allowed = max(op.options.retries, pool_op.restarts) if not op.options.effectful else 0
        self.progress.stage(node, len(parts))
        out: list = [None] * len(parts)
        queue = deque(range(len(parts)))
        free = deque(range(len(members)))
        running: dict[Any, tuple[int, int, float]] = {}
        attempts = [0] * len(parts)
        timeout = op.options.timeout
        while queue or running:
            while queue and free:
                i, m = queue.popleft(), free.popleft()
                ok, data = members[m].run.options(num_returns=2).remote(
                    node, op.kind, op.method, i, names, parts[i], *values)
                out[i] = data
                running[ok] = (i, m, time.monotonic())
            wait = None
            if timeout is not None:
                wait = max(0.0, min(start + timeout for _, _, start in running.values()) - time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=wait)
            if not ready:
                i = min(running.values(), key=lambda v: v[2])[0]
                raise self.error(node, f"partition {i} did not finish within its timeout of {timeout:g} s",
                                 op.span, "raise `timeout` or make the pool method faster")
            for ref in ready:
                i, m, _ = running.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    if isinstance(exc, ray.exceptions.ActorDiedError) and not self._alive(members[m]):
                        members[m] = None
                    if attempts[i] >= attempts_allowed or not any(members):
                        raise self.error(node, f"an actor of pool `{op.pool.node}` died while serving partition "
                                               f"{i}", op.span,
                                         f"give the pool `restarts N` or the stage `retries N`") from None
                    attempts[i] += 1
                    queue.append(i)
                    if members[m] is not None:
                        free.append(m)
                    continue
                except Exception as exc:
                    err = self.task_error(exc)
                    if attempts[i] >= op.options.retries or op.options.effectful:
                        raise err from None
                    attempts[i] += 1
                    queue.append(i)
                    free.append(m)
                    continue
                free.append(m)
                self.progress.advance(node)
        return out

    def _alive(self, handle) -> bool:
        try:
            self.ray.get(handle.__ray_ready__.remote(), timeout=ACTOR_RESTART_WAIT)
            return True
        except Exception:
            return False

    # ---- values from collections

    def op_reduce(self, node: str, op: ir.Reduce):
        fn = fn_of(op.fn)
        chain = self.low.chain(node, "input")
        level = self.branch_out.pop(node, None)
        if level is None:
            level = self.submit(chain, node, ("fold", node, op.fn.module, op.fn.attr), "fold")
        # The tree of combine_partials, level by level, FAN_IN partials per task in
        # partition order; the last group is folded here, where the value is needed.
        depth = 0
        while len(level) > semantics.FAN_IN:
            depth += 1
            remote = self.fns.combine.options(**self.low.options([node]), name=f"{node}:combine{depth}")
            level = [remote.remote((self.paths, node, op.fn.module, op.fn.attr, i), *level[i:i + semantics.FAN_IN])
                     for i in range(0, len(level), semantics.FAN_IN)]
            self._watch(f"{node}:combine{depth}", node, level, None, 1)
        partials = self.fetch(level)
        try:
            result = semantics.combine_partials(fn, partials)
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        if result is semantics.EMPTY:
            raise self.error(node, "`reduce` over an empty collection has no value", op.span,
                             "filter less, or give the reduction an initial element in the data")
        return result

    def op_count(self, node: str, op: ir.Count):
        refs = self.branch_out.pop(node, None)
        if refs is None:
            refs = self.submit(self.low.chain(node, "input"), node, ("count", node), "count")
        return sum(self.fetch(refs))

    def gather(self, node: str) -> list:
        return [x for part in self.fetch(self.parts(node)) for x in part]

    def count(self, node: str) -> int:
        return sum(self.fetch(self.submit(Chain(node, (), False), node, ("count", node), "count")))

    # ---- actors

    def start_actor(self, node: str, op: ir.Actor):
        if node in self.early:
            return self.early.pop(node)
        return self._create_actor(node, op, [self.value(a) for a in op.args],
                                  {k: self.value(v) for k, v in op.kwargs.items()})

    def _create_actor(self, node: str, op: ir.Actor, args: list, kwargs: dict):
        snapshot = self.snapshot_path(node) if op.checkpoint_every else None
        name = f"pipec.{self.ir.info.name}.{node}.{self.run_id}"
        handle = self.fns.actor.options(**self.low.actor_options(op, name)).remote(
            self.paths, node, op.cls.module, op.cls.attr, args, kwargs, op.checkpoint_every, snapshot)
        self.actors[node] = handle
        self.result.recoveries[node] = 0
        return handle

    def start_pool(self, node: str, op: ir.Actor, size: int):
        if node in self.early:
            return self.early.pop(node)
        return self._create_pool(node, op, size, [self.value(a) for a in op.args],
                                 {k: self.value(v) for k, v in op.kwargs.items()})

    def _create_pool(self, node: str, op: ir.Actor, size: int, args: list, kwargs: dict):
        members = []
        for i in range(size):
            options = self.low.actor_options(op, f"pipec.{self.ir.info.name}.{node}.{i}.{self.run_id}")
            members.append(self.fns.pool.options(**options).remote(
                self.paths, node, op.cls.module, op.cls.attr, args, kwargs))
        self.pools[node] = members
        return members

    def op_actor_call(self, node: str, op: ir.ActorCall):
        self.call_op, self.call_ref = op, None
        try:
            result = super().op_actor_call(node, op)
        finally:
            self.call_op = None
        if self.call_ref is not None:
            # The result already sits in Ray's object store: a stage binding it reads it
            # from there, with no second put.
            self.puts[node] = (result, self.call_ref)
        return result

    def call_actor(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        ray = self.ray
        handle = self.actors[actor]
        ref = handle.call.remote(seq, method, args, kwargs)
        try:
            result = self._actor_result(ref)
        except ray.exceptions.RayActorError:
            return self._recover(actor, seq, method, args, kwargs)
        if isinstance(result, Gap):  # restarted while idle: calls since its snapshot are missing
            return self._recover(actor, seq, method, args, kwargs)
        self.call_ref = ref
        return result

    def _actor_result(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            raise self.task_error(exc) from None

    def _recover(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        """The actor lost its process: wait for Ray to restart it (its constructor restores
        the last snapshot), then replay, in order, every logged call it has not applied."""
        ray = self.ray
        op = self.ir.op(actor)
        span = self.call_op.span if self.call_op is not None else op.span
        if op.restarts == 0:
            raise self.error(actor, "the actor's process died, and it has `restarts 0`", span,
                             "give it `restarts N` (and `checkpoint every N calls`) so pipec can restore it "
                             "and replay its calls")
        handle, log = self.actors[actor], self.logs[actor]
        deadline = time.monotonic() + ACTOR_RESTART_WAIT
        while True:
            try:
                applied = ray.get(handle.applied.remote(), timeout=max(0.1, deadline - time.monotonic()))
                result, missing = None, True
                for s, m, a, k in log.since(applied):
                    r = self._actor_result(handle.call.remote(s, m, a, k))
                    if isinstance(r, Gap):
                        raise _Restarted  # restarted again mid-replay
                    if s == seq:
                        result, missing = r, False
                if missing:  # applied before the crash: the host kept its result
                    result = self._actor_result(handle.call.remote(seq, method, args, kwargs))
                self.result.recoveries[actor] += 1
                return result
            except ray.exceptions.GetTimeoutError:
                raise self.error(actor, f"the actor did not come back within {ACTOR_RESTART_WAIT:g} s of a "
                                        f"crash", span) from None
            except ray.exceptions.ActorDiedError:
                raise self.error(actor, f"the actor died and cannot be restarted again (`restarts "
                                        f"{op.restarts}` used up)", span) from None
            except (ray.exceptions.RayActorError, _Restarted):
                if time.monotonic() > deadline:
                    raise self.error(actor, "the actor kept failing while pipec replayed its calls", span) from None
                time.sleep(0.05)


# =========================================================================================
# The plan: explain, JSON, graph, run
# =========================================================================================


@dataclass
class Step:
    """One line of the lowered plan: a set of Ray tasks, an actor, an actor call, or work
    the driver does. ``deps`` are ``(step id, how)``: ``each`` (task i reads partition
    i), ``all`` (every task reads every partition: a shuffle), ``group`` (FAN_IN to one),
    ``gather`` (the driver reads them all), ``value`` (a broadcast value), ``actor``,
    ``order`` (program order on an actor) or ``carry`` (a loop variable's next round)."""

    id: str
    kind: str  # tasks | put | actor | pool | call | driver | sink
    what: str
    tasks: int | None = None
    options: dict = field(default_factory=dict)
    deps: list[tuple[str, str]] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    loop: str | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "what": self.what, "tasks": self.tasks,
                "options": self.options, "depends_on": [{"step": s, "how": h} for s, h in self.deps],
                "nodes": self.nodes}


class _Planner:
    """Walks the schedule and lists the steps the driver will take, using the same
    :class:`Lowering` decisions the driver uses."""

    def __init__(self, graph: ir.IR, params: dict[str, Any], low: Lowering):
        self.ir, self.params, self.low = graph, params, low
        self.steps: list[Step] = []
        self.made: dict[str, str] = {}  # IR node -> step id producing it (partitions or value)
        self.width: dict[str, int | None] = {}
        self.last_call: dict[str, str] = {}
        self.vars: dict[str, str] = {}

    # ---- static values

    def static(self, operand) -> Any:
        if operand is None:
            return None
        if isinstance(operand, ir.Lit):
            return operand.value
        op = self.ir.op(operand.node)
        if isinstance(op, ir.Param):
            return self.params.get(operand.node)
        if isinstance(op, ir.Const):
            return op.value
        if isinstance(op, ir.Expr):
            values = [self.static(o) for o in op.operands]
            if any(v is None for v in values):
                return None
            try:
                return semantics.apply_operator(op.operator, *values)
            except Exception:
                return None
        return None

    def text(self, operand) -> str:
        value = self.static(operand)
        if value is not None:
            return repr(value)
        return operand.node if isinstance(operand, ir.NodeRef) else repr(operand.value)

    def args_text(self, args, kwargs) -> str:
        parts = [self.text(a) for a in args] + [f"{k}={self.text(v)}" for k, v in kwargs.items()]
        return ", ".join(parts)

    def add(self, step: Step, loop: str | None) -> Step:
        step.loop = loop
        self.steps.append(step)
        return step

    def value_deps(self, operands) -> list[tuple[str, str]]:
        deps = []
        for operand in operands:
            if isinstance(operand, ir.NodeRef) and operand.node in self.made:
                deps.append((self.made[operand.node], "value"))
        return deps

    # ---- walk

    def walk(self, block: Block) -> None:
        for item in block.items:
            if isinstance(item, Block):
                self.walk(item)
            else:
                self.node(item, self.ir.op(item))

    def node(self, node: str, op: ir.Op) -> None:
        loop = op.loop
        handler = getattr(self, f"plan_{op.op}", None)
        if handler is not None:
            handler(node, op, loop)

    # ---- segments

    def head_text(self, chain: Chain) -> tuple[str, list[tuple[str, str]], int | None]:
        """How a segment's tasks get their input: text, dependencies, partition count."""
        head = chain.head
        op = self.ir.op(head)
        if not chain.head_fused:
            return f"{head}[i]", [(self.made[head], "each")], self.width.get(head)
        if isinstance(op, ir.Source):
            k = self.static(op.partitions)
            if op.kind == "range":
                return f"range({self.text(op.args[0])}) block i of {k if k is not None else '?'}", [], k
            return (f"{op.fn.dotted}({self.args_text(op.args, op.kwargs)}, partition=i, partitions={k})",
                    [], k)
        # a fused shuffle: the merge side
        return self.merge_text(head, op)

    def merge_text(self, node: str, op: ir.Op) -> tuple[str, list[tuple[str, str]], int | None]:
        if isinstance(op, ir.Join):
            deps = [(self.made[f"{node}:left"], "all"), (self.made[f"{node}:right"], "all")]
            return f"merge bucket i of every left and right partition (inner join by key)", deps, self.width[node]
        what = {ir.ReduceByKey: f"merge bucket i of every partition with {getattr(op, 'fn', None) and op.fn.dotted}"
                                f" (in partition order), sorted by key",
                ir.GroupByKey: "merge bucket i of every partition: values per key in input order, sorted by key",
                ir.Distinct: "merge bucket i of every partition: distinct elements, sorted"}[type(op)]
        return what, [(self.made[f"{node}:split"], "all")], self.width[node]

    def steps_text(self, steps: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str]]]:
        lines, deps = [], []
        for node in steps:
            op = self.ir.op(node)
            text = f"{op.kind} {op.fn.dotted}"
            if op.bindings:
                bound = []
                for name, operand in op.bindings.items():
                    if isinstance(operand, ir.NodeRef) and self.ir.op(operand.node).node_shape == ir.ACTOR:
                        bound.append(f"{name}=handle({operand.node})")
                        deps.append((self.made[operand.node], "actor"))
                    elif isinstance(operand, ir.NodeRef) and operand.node in self.made:
                        if isinstance(self.ir.op(operand.node), ir.ActorCall):
                            bound.append(f"{name}={operand.node} (the call's result object, by reference)")
                        else:
                            bound.append(f"{name}=ray.put({operand.node}) (once per value)")
                        deps.append((self.made[operand.node], "value"))
                    else:
                        bound.append(f"{name}={self.text(operand)}")
                text += f" with {', '.join(bound)}"
            lines.append(text)
        return lines, deps

    def segment(self, chain: Chain, owner: str | None, terminal: str, role: str, loop, count_override=None) -> Step:
        head, deps, k = self.head_text(chain)
        lines, more = self.steps_text(chain.steps)
        nodes = self.low.members(chain, owner)
        name = self.low.group(chain, owner, role)
        what = " -> ".join([head] + lines + ([terminal] if terminal else []))
        options = dict(self.low.options(nodes))
        timeout = self.low.timeout(nodes)
        if timeout is not None:
            options["timeout_s (driver)"] = timeout
        step = Step(name, "tasks", what, count_override if count_override is not None else k, options,
                    deps + more, nodes)
        return self.add(step, loop)

    def terminal_text(self, owner: str, k) -> str:
        op = self.ir.op(owner)
        if isinstance(op, ir.Reduce):
            return f"fold {op.fn.dotted} (left to right)"
        if isinstance(op, ir.Count):
            return "len"
        if isinstance(op, ir.ReduceByKey):
            return f"reduce_by_key partial {op.fn.dotted}, split into {k} buckets by stable key hash"
        if isinstance(op, ir.GroupByKey):
            return f"split into {k} buckets by stable key hash"
        return f"split into {k} buckets by stable hash"

    def scan(self, step: Step, node: str) -> Step:
        """Extend the step computing ``node`` with its shared scan's branches, if any."""
        if node not in self.low.scans:
            return step
        keep, branches = self.low.scans[node]
        texts, members = [], []
        for branch in branches:
            lines, deps = self.steps_text(branch.steps)
            step.deps += [d for d in deps if d not in step.deps]
            texts.append(" -> ".join(lines + [self.terminal_text(branch.owner, step.tasks)])
                         + f" for {branch.owner}")
            members += list(branch.steps) + [branch.owner]
        step.id = f"{step.id}&{'+'.join(members)}"
        for branch in branches:
            self.made[f"{branch.owner}:scan"] = step.id
        step.nodes += members
        step.options = dict(self.low.options(step.nodes))
        step.what += ("; in the same pass: " + "; ".join(texts)
                      + ("" if keep else f" (the partitions of {node} are not kept: nothing else reads them)"))
        return step

    # ---- operations

    def plan_source(self, node, op: ir.Source, loop):
        k = self.static(op.partitions)
        self.width[node] = k
        if op.kind == "range" or op.sharded:
            if node in self.low.fused:
                return
            step = self.scan(self.segment(Chain(node, (), True), None, "", "", loop), node)
            self.made[node] = step.id
            return
        what = {"read_text": f"read_text({self.args_text(op.args, {})})",
                "read_jsonl": f"read_jsonl({self.args_text(op.args, {})})"}.get(
            op.kind, f"{op.fn.dotted}({self.args_text(op.args, op.kwargs)})" if op.fn else op.kind)
        step = Step(node, "put", f"driver runs {what}, cuts it into {k if k is not None else '?'} contiguous "
                                 f"blocks, ray.put each", k, {},
                    self.value_deps(list(op.args) + list(op.kwargs.values())),
                    [node])
        self.made[node] = self.add(step, loop).id

    def plan_elementwise(self, node, op: ir.Elementwise, loop):
        if node in self.low.fused:
            return
        chain = self.low.chain(node, "input")
        self.width[node] = self.width.get(chain.head)
        if op.pool is not None:
            inp = op.input.node
            bound = ", ".join(op.bindings)
            pool = self.ir.op(op.pool.node)
            resend = 0 if op.options.effectful else max(op.options.retries, pool.restarts)
            step = Step(node, "pool", f"{inp}[i] -> {op.kind} {op.pool.node}.{op.method}"
                                      + (f" with {bound}" if bound else "")
                                      + " on the next free actor of the pool; a partition whose actor died is "
                                        f"sent again, up to {resend} times",
                        self.width.get(inp), {"retries": op.options.retries, "max_task_retries": 0},
                        [(self.made[inp], "each"), (self.made[op.pool.node], "actor")] + self.value_deps(
                            [v for v in op.bindings.values()]), [node])
            self.made[node] = self.add(step, loop).id
            return
        full = Chain(chain.head, chain.steps + (node,), chain.head_fused)
        step = self.scan(self.segment(full, None, "", "", loop), node)
        if _handles(self.ir, node, op):
            step.what += "  (the driver waits for it: later actor calls see its calls)"
        self.made[node] = step.id
        self.width[node] = step.tasks

    def _split(self, node, op, chain: Chain, key: str, terminal: str, loop, role="split") -> Step | None:
        if node in self.low.scanned:
            self.made[key] = self.made[f"{node}:scan"]
            return None
        invariant = self.low.invariant(node, chain)
        step = self.segment(chain, node, terminal, role, loop)
        if invariant:
            step.what += f"  (first round only: {chain.head} does not change in {loop}, so its buckets are reused)"
        self.made[key] = step.id
        return step

    def _merge(self, node, op, loop):
        if node in self.low.fused:
            return
        what, deps, k = self.merge_text(node, op)
        options = dict(self.low.options([node]))
        step = Step(f"{node}:merge", "tasks", what, k, options, deps, [node])
        self.made[node] = self.add(self.scan(step, node), loop).id

    def plan_reduce_by_key(self, node, op, loop):
        chain = self.low.chain(node, "input")
        _, _, k = self.head_text(chain)
        self._split(node, op, chain, f"{node}:split", f"reduce_by_key partial {op.fn.dotted}, split into {k} "
                                                      f"buckets by stable key hash", loop)
        self.width[node] = k
        self._merge(node, op, loop)

    def plan_group_by_key(self, node, op, loop):
        chain = self.low.chain(node, "input")
        _, _, k = self.head_text(chain)
        self._split(node, op, chain, f"{node}:split", f"split into {k} buckets by stable key hash", loop)
        self.width[node] = k
        self._merge(node, op, loop)

    def plan_distinct(self, node, op, loop):
        chain = self.low.chain(node, "input")
        _, _, k = self.head_text(chain)
        self._split(node, op, chain, f"{node}:split", f"split into {k} buckets by stable hash", loop)
        self.width[node] = k
        self._merge(node, op, loop)

    def plan_join(self, node, op, loop):
        left, right = self.low.chain(node, "left"), self.low.chain(node, "right")
        kl, kr = self.head_text(left)[2], self.head_text(right)[2]
        k = max(kl, kr) if kl is not None and kr is not None else None
        self._split(node, op, left, f"{node}:left", f"split into {k} buckets by stable key hash", loop, "split left")
        self._split(node, op, right, f"{node}:right", f"split into {k} buckets by stable key hash", loop,
                    "split right")
        self.width[node] = k
        self._merge(node, op, loop)

    def plan_union(self, node, op: ir.UnionAll, loop):
        widths = [self.width.get(p.node) for p in op.parts]
        self.width[node] = sum(widths) if all(w is not None for w in widths) else None
        step = Step(node, "driver", "the partitions of " + ", ".join(p.node for p in op.parts)
                    + ", one after the other (no tasks)", None, {}, [(self.made[p.node], "gather") for p in op.parts],
                    [node])
        self.made[node] = self.add(step, loop).id

    def plan_reduce(self, node, op: ir.Reduce, loop):
        chain = self.low.chain(node, "input")
        if node in self.low.scanned:
            k, prev, depth = self.width.get(chain.head), self.made[f"{node}:scan"], 0
        else:
            fold = self.segment(chain, node, f"fold {op.fn.dotted} (left to right)", "fold", loop)
            k, prev, depth = fold.tasks, fold.id, 0
        if k is not None:
            while k > semantics.FAN_IN:
                depth += 1
                k = math.ceil(k / semantics.FAN_IN)
                step = Step(f"{node}:combine{depth}", "tasks",
                            f"fold {op.fn.dotted} over partials {semantics.FAN_IN}*i .. {semantics.FAN_IN}*i+"
                            f"{semantics.FAN_IN - 1} of the level below, in partition order", k,
                            dict(self.low.options([node])), [(prev, "group")], [node])
                prev = self.add(step, loop).id
        step = Step(node, "driver", f"fetch the last {semantics.FAN_IN} partials or fewer and fold them with "
                                    f"{op.fn.dotted} in partition order", None, {}, [(prev, "gather")], [node])
        self.made[node] = self.add(step, loop).id

    def plan_count(self, node, op, loop):
        chain = self.low.chain(node, "input")
        source = self.made[f"{node}:scan"] if node in self.low.scanned else \
            self.segment(chain, node, "len", "count", loop).id
        step = Step(node, "driver", "sum of the partition counts", None, {}, [(source, "gather")], [node])
        self.made[node] = self.add(step, loop).id

    def _driver_value(self, node, op, what, loop, deps):
        step = Step(node, "driver", what, None, {}, deps, [node])
        self.made[node] = self.add(step, loop).id

    def plan_collect(self, node, op, loop):
        self._driver_value(node, op, f"fetch every partition of {op.input.node}", loop,
                           [(self.made[op.input.node], "gather")])

    def plan_top(self, node, op: ir.Top, loop):
        by = f" by {op.by.dotted}" if op.by else ""
        self._driver_value(node, op, f"fetch every partition of {op.input.node}, keep the top "
                                     f"{self.text(op.n)}{by}", loop,
                           [(self.made[op.input.node], "gather")] + self.value_deps([op.n]))

    def plan_expr(self, node, op: ir.Expr, loop):
        self._driver_value(node, op, f"driver computes {op.operator} of "
                                     f"{', '.join(self.text(o) for o in op.operands)}", loop,
                           self.value_deps(op.operands))

    def plan_call(self, node, op: ir.Call, loop):
        self._driver_value(node, op, f"driver calls {op.fn.dotted}({self.args_text(op.args, op.kwargs)})", loop,
                           self.value_deps(list(op.args) + list(op.kwargs.values())))

    def plan_round_index(self, node, op, loop):
        self._driver_value(node, op, f"the round number of {op.of_loop}", loop, [])

    def plan_actor(self, node, op: ir.Actor, loop):
        opts = self.low.actor_options(op, f"pipec.{self.ir.info.name}.{node}.RUN")
        opts.pop("name")
        early = " (started as the run begins: its arguments are known, so its process starts while " \
                "the driver loads sources)" if self.low.early(node) else ""
        if op.pool_size is not None:
            size = self.static(op.pool_size)
            step = Step(node, "pool", f"{size if size is not None else '?'} Ray actors "
                                      f"{op.cls.dotted}({self.args_text(op.args, op.kwargs)}){early}", size, opts,
                        self.value_deps(list(op.args) + list(op.kwargs.values())), [node])
        else:
            extra = f", snapshot every {op.checkpoint_every} calls" if op.checkpoint_every else ""
            step = Step(node, "actor", f"Ray actor {op.cls.dotted}({self.args_text(op.args, op.kwargs)}){extra}"
                                       f"{early}",
                        None, opts, self.value_deps(list(op.args) + list(op.kwargs.values())), [node])
            if op.checkpoint_every:
                step.options["checkpoint_every"] = op.checkpoint_every
        self.made[node] = self.add(step, loop).id

    def plan_actor_call(self, node, op: ir.ActorCall, loop):
        actor = op.actor.node
        deps = [(self.made[actor], "actor")] + self.value_deps(list(op.args) + list(op.kwargs.values()))
        if actor in self.last_call:
            deps.append((self.last_call[actor], "order"))
        idem = " (declared idempotent)" if op.method in self.ir.op(actor).idempotent else ""
        step = Step(node, "call", f"{actor}.{op.method}({self.args_text(op.args, op.kwargs)}): the next sequence "
                                  f"number, sent by the driver after the previous call returned{idem}", None,
                    {"max_task_retries": 0}, deps, [node])
        self.made[node] = self.add(step, loop).id
        self.last_call[actor] = step.id

    def plan_var(self, node, op: ir.Var, loop):
        step = Step(node, "driver", f"loop variable, first {op.init.node}, then its rebinding each round "
                                    "(references only, the data stays in the object store)", None, {},
                    [(self.made[op.init.node], "gather" if op.var_shape == ir.COLLECTION else "value")], [node])
        self.made[node] = self.add(step, loop).id
        self.width[node] = self.width.get(op.init.node)

    def plan_rebind(self, node, op: ir.Rebind, loop):
        src = self.made.get(op.value.node)
        var_step = self.made.get(op.var)
        step = Step(node, "driver", f"{op.var} = {op.value.node} for the next round", None, {},
                    [(src, "gather" if op.var_shape == ir.COLLECTION else "value")] if src else [], [node])
        self.add(step, loop)
        if var_step is not None:
            step_obj = next(s for s in self.steps if s.id == var_step)
            step_obj.deps.append((step.id, "carry"))

    def plan_sink(self, node, op: ir.Sink, loop):
        src = op.input.node
        where = f"{op.format} {self.text(op.path)} (temporary file, then rename)" if op.format else "printed"
        how = "gather" if self.ir.op(src).node_shape == ir.COLLECTION else "value"
        step = Step(node, "sink", f"driver writes {src} -> {where}", None, {}, [(self.made[src], how)], [node])
        self.add(step, loop)


class RayPlan(Plan):
    backend = "ray"

    def __init__(self, graph: ir.IR, params: dict[str, Any], address: str | None = None):
        super().__init__(graph, params)
        self.address = address
        self.lowering = Lowering(graph)
        self._steps: list[Step] | None = None

    def steps(self) -> list[Step]:
        if self._steps is None:
            planner = _Planner(self.ir, self.params, self.lowering)
            planner.walk(blocks(self.ir))
            self._steps = planner.steps
        return self._steps

    # ---- explain

    def explain(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        lines = [f"ray plan for pipeline `{self.ir.info.name}`" + (f" ({params})" if params else ""),
                 "runtime: " + (f"the Ray cluster at {self.address}" if self.address
                                else "embedded local Ray (or RAY_ADDRESS)")
                 + f"; module folders on every worker's path: {', '.join(self.ir.info.module_roots) or 'none'}",
                 "each step: its tasks (task i reads partition i), what they run, Ray options, and <- what "
                 "it depends on"]
        by_loop: dict[str | None, list[Step]] = {}
        for step in self.steps():
            by_loop.setdefault(step.loop, []).append(step)
        self._explain_block(blocks(self.ir), by_loop, lines, 0)
        return "\n".join(lines) + "\n"

    def _explain_block(self, block: Block, by_loop, lines: list[str], depth: int) -> None:
        pad = "  " * depth
        loop_id = block.loop.id if block.loop else None
        # Steps of this loop and nested loop headers, in program order of their first node.
        order = {n: i for i, n in enumerate(self.ir)}
        entries: list[tuple[int, Any]] = []
        for step in by_loop.get(loop_id, []):
            entries.append((min(order[n] for n in step.nodes), step))
        for item in block.items:
            if isinstance(item, Block):
                first = next(iter(item.nodes()), None)
                entries.append((order[first] if first is not None else len(order), item))
        entries.sort(key=lambda e: e[0])
        planner = _Planner(self.ir, self.params, self.lowering)
        for _, entry in entries:
            if isinstance(entry, Block):
                loop = entry.loop
                count = planner.text(loop.count)
                until = (f" until {planner.text(loop.until)} (checked after each round)"
                         if loop.until is not None else "")
                lines.append(f"{pad}repeat {count}{until}, each round:  # {loop.id}")
                self._explain_block(entry, by_loop, lines, depth + 1)
                continue
            step = entry
            count = f"{step.tasks} task{'s' if step.tasks != 1 else ''}" if step.kind == "tasks" else step.kind
            if step.kind == "tasks" and step.tasks is None:
                count = "k tasks"
            if step.kind in ("put", "pool") and step.tasks is not None:
                count = f"{step.kind} x{step.tasks}"
            lines.append(f"{pad}{step.id}  [{count}]  {step.what}")
            if step.options:
                lines.append(f"{pad}    options: " + ", ".join(f"{k}={v}" for k, v in step.options.items()))
            if step.deps:
                lines.append(f"{pad}    <- " + ", ".join(f"{s} ({h})" for s, h in step.deps))

    # ---- JSON

    def to_json(self) -> dict:
        def block_json(block: Block) -> dict:
            loop = block.loop
            steps = [s.to_json() for s in self.steps() if s.loop == (loop.id if loop else None)]
            out = {"loop": loop.id if loop else None, "steps": steps,
                   "loops": [block_json(b) for b in block.items if isinstance(b, Block)]}
            if loop is not None:
                planner = _Planner(self.ir, self.params, self.lowering)
                out["count"] = planner.text(loop.count)
                out["until"] = planner.text(loop.until) if loop.until is not None else None
            return out
        return {"backend": "ray", "pipeline": self.ir.info.name, "params": self.params,
                "address": self.address, "module_roots": list(self.ir.info.module_roots),
                "fused": dict(self.lowering.fused), "plan": block_json(blocks(self.ir))}

    # ---- graph

    def graph(self) -> nx.DiGraph:
        """Tasks (one node per partition), actors, actor calls and driver steps; nodes
        carry ``label`` and ``group`` (the step), edges ``kind``."""
        g = nx.DiGraph()
        ids: dict[str, list[str]] = {}
        for step in self.steps():
            suffix = "  (each round)" if step.loop else ""
            if step.kind in ("tasks", "put", "pool") and step.tasks:
                names = [f"{step.id}[{i}]" for i in range(step.tasks)]
                for name in names:
                    g.add_node(name, label=name + suffix, group=step.id)
            else:
                names = [step.id]
                label = f"{step.id}\n{step.kind}" + suffix
                extra = {"op": self.ir.op(step.nodes[0])} if len(step.nodes) == 1 else {}
                g.add_node(step.id, label=label, group=step.id, **extra)
            ids[step.id] = names
        for step in self.steps():
            mine = ids[step.id]
            for src, how in step.deps:
                theirs = ids.get(src)
                if not theirs:
                    continue
                kind = {"value": "value", "actor": "actor", "order": "order", "carry": "carry"}.get(how, "data")
                if how == "each" and len(theirs) == len(mine):
                    pairs = list(zip(theirs, mine))
                elif how == "group":
                    pairs = [(t, mine[min(i // semantics.FAN_IN, len(mine) - 1)]) for i, t in enumerate(theirs)]
                elif how in ("value", "actor", "order", "carry") and len(theirs) == 1:
                    pairs = [(theirs[0], m) for m in mine]
                else:
                    pairs = [(t, m) for t in theirs for m in mine]
                for a, b in pairs:
                    if not g.has_edge(a, b):
                        g.add_edge(a, b, kind=kind)
        return g

    # ---- run

    def run(self, progress: Progress | None = None, run_dir: str | None = None) -> RunResult:
        started = start_runtime(self.address, runtime_env=self._runtime_env())
        try:
            return RayDriver(self.ir, self.params, progress, run_dir, self.lowering).run()
        finally:
            if started:
                stop_runtime()

    def _runtime_env(self) -> dict | None:
        """When joining a cluster, ship the user's modules to every node (py_modules): the
        top-level packages and modules the pipeline names, found in its module folders."""
        if not (self.address or os.environ.get("RAY_ADDRESS")):
            return None
        tops = set()
        for _, op in self.ir.items():
            for ref in (getattr(op, "fn", None), getattr(op, "cls", None), getattr(op, "by", None)):
                if isinstance(ref, ir.FnRef):
                    tops.add(ref.module.split(".")[0])
        shipped = []
        for root in self.ir.info.module_paths():
            for top in sorted(tops):
                package, module = Path(root) / top, Path(root) / f"{top}.py"
                if (package / "__init__.py").exists():
                    shipped.append(str(package))
                elif module.exists():
                    shipped.append(str(module))
        return {"py_modules": shipped} if shipped else None


class RayBackend(Backend):
    name = "ray"
    description = ("Ray tasks and actors: fused stages, partitions in the object store, actors restored "
                   "from snapshots with calls replayed exactly once")
    capabilities = frozenset(FEATURES)
    gap_hints: dict[str, str] = {}

    def lower(self, graph: ir.IR, params: dict[str, Any]) -> RayPlan:
        return RayPlan(graph, params, self.address)

