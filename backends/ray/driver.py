"""The driver of a Ray run: submits segments of the physical plan as Ray tasks (the shared
interpreter runs them), reductions, shuffles and actor calls, and recovers restarted
actors by replaying their calls in order."""

from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


from pipec.compiler import ir
from pipec.backends.base import NoProgress, Progress, RunResult
from pipec.backends.physical import steps as s
from pipec.backends.runtime import semantics, sources
from pipec.backends.runtime.driver import Driver
from pipec.backends.runtime.interpreter import StageFailure
from pipec.dsl.diagnostics import PipelineRuntimeError
from pipec.backends.physical.planner import loops_of
from pipec.backends.ray.lowering import Chain, Lowering, actor_handles, read_in_tasks
from pipec.backends.ray.worker import Gap, remote_calls


# How long the driver waits for a restarted actor to come back before giving up.
ACTOR_RESTART_WAIT = 120.0


class Parts:
    """A materialised collection: one ObjectRef per partition, in partition order."""

    def __init__(self, refs: list):
        self.refs = list(refs)


@dataclass
class Fresh:
    """A collection made inside the tasks that read it: ``head`` (a range block, a text
    file's own lines, a sharded call, or a shuffle's merge side) for each of ``k``
    partitions. ``inputs[i]`` are the refs partition i's head reads (a merge's buckets, the
    first ``left`` of them from a join's left side), ``slots`` the values it reads."""

    head: s.Head
    k: int
    inputs: list[list] | None = None
    left: int = 0
    slots: tuple = ()


class Fused:
    """An element-wise stage computed inside its consumer's tasks."""


class Scanned:
    """A shared scan whose partitions nothing else reads: only its branches' outputs
    were kept. ``k`` is its number of partitions."""

    def __init__(self, k: int):
        self.k = k


FUSED = Fused()

_HOW = {ir.ReduceByKey: "reduce_by_key", ir.GroupByKey: "group_by_key", ir.Distinct: "distinct", ir.Join: "join"}


def _fn(ref: ir.FnRef | None) -> s.Fn | None:
    return s.Fn(ref.module, ref.attr) if ref is not None else None


def _policy(op: ir.Op) -> s.Policy:
    options = op.options
    return s.Policy(options.retries, options.timeout, options.effectful)


class RayRunResult(RunResult):
    """A run's results plus what fault tolerance did: actor recoveries per actor."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recoveries: dict[str, int] = {}


class _Restarted(Exception):
    """An actor restarted again while the driver replayed its calls."""


class RayDriver(Driver):
    backend = "ray"
    resumable = True

    def __init__(self, graph: ir.IR, params: dict[str, Any], progress: Progress | None, run_dir: str | None,
                 lowering: Lowering, resume: bool = False):
        super().__init__(graph, params, progress, run_dir, resume)
        self.low = lowering
        self.result = RayRunResult(backend=self.backend, run_dir=str(self.run_dir))
        self.paths = graph.info.module_paths()

    # ---- lifecycle

    def setup(self) -> None:
        import ray
        self.ray = ray
        self.fns = remote_calls()
        self.actors: dict[str, Any] = {}
        self.pools: dict[str, list] = {}
        self.puts: dict[str, tuple[Any, Any]] = {}
        self.splits: dict[tuple[str, str], tuple[Any, int, list]] = {}  # loop-invariant buckets
        self.names: dict[str, str] = {}  # Ray task name -> the IR node its errors belong to
        self.branch_out: dict[str, list] = {}  # shared-scan outputs, until their owner runs
        self.watched: dict[Any, str] = {}  # ref -> the segment it belongs to, while progress is drawn
        self.track = not isinstance(self.progress, NoProgress)
        cluster = ray.cluster_resources()
        self.call_op: ir.ActorCall | None = None
        self.call_ref = None
        self._check_resources(cluster)
        self.early: dict[str, Any] = {}
        for node, op in self.ir.items():
            # A resumed actor must not start before the driver put its snapshot in place.
            if self.low.early(node) and not (self.record is not None and node in self.record.actors):
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

    def submit(self, chain: Chain, owner: str | None, role: str = "", scan: str | None = None,
               buckets: int | None = None) -> list[list]:
        """One task per partition of ``chain.head``: its head, the chain's fused steps, then
        ``owner``'s per-partition half (a fold, a count or a split into ``buckets``, by
        default one per partition; none: the partition itself), or the branches of shared
        scan ``scan``. Per task, the list of its refs."""
        low = self.low
        keep, branches = low.scans[scan] if scan else (False, ())
        also = [m for b in branches for m in b.steps + (b.owner,)]
        nodes = low.members(chain, owner) + also
        name = low.scan_name(chain, owner, role, also)
        source = self.env[chain.head]
        if isinstance(source, Parts):
            head, k, slots = s.Input(chain.head), len(source.refs), []
        else:
            head, k, slots = source.head, source.k, list(source.slots)
        if not k:
            return []
        steps = self._steps(chain.steps, slots)
        terminal = self._terminal(owner, buckets or k) if owner else None
        if scan:
            terminal = s.Branches(scan, tuple((self._steps(b.steps, slots), self._terminal(b.owner, k))
                                              for b in branches), keep)
        returns = s.outputs_of(terminal)
        options = dict(low.options(nodes), name=name)
        if returns != 1:
            options["num_returns"] = returns
        remote = self.fns.segment.options(**options)
        segment = self.ray.cloudpickle.dumps(s.Segment(name, head, steps, terminal, tuple(nodes)))  # once per k tasks
        self.names[name] = owner or low.members(chain, owner)[-1]  # whose output this is, for errors
        rows = []
        for i in range(k):
            if isinstance(source, Parts):
                feed, left = [source.refs[i]], 1
            else:
                feed, left = (source.inputs[i] if source.inputs else []), source.left
            out = remote.remote((self.paths, segment, i, left, len(feed) - left), *feed, *slots)
            rows.append(list(out) if returns != 1 else [out])
        self._watch(name, [row[0] for row in rows])
        return rows

    def _width(self, node: str) -> int:
        value = self.env[node]
        if isinstance(value, Parts):
            return len(value.refs)
        if isinstance(value, (Fresh, Scanned)):
            return value.k
        raise RuntimeError(f"pipec internal error: {node} has no partitions")

    def _steps(self, nodes: tuple[str, ...], slots: list) -> tuple[s.Elementwise, ...]:
        return tuple(s.Elementwise(node, op.kind, _fn(op.fn), self._bind(op, slots), _policy(op))
                     for node, op in ((node, self.ir.op(node)) for node in nodes))

    def _terminal(self, owner: str, k: int) -> s.Terminal:
        op = self.ir.op(owner)
        if isinstance(op, ir.Reduce):
            return s.Fold(owner, _fn(op.fn), _policy(op))
        if isinstance(op, ir.Count):
            return s.Count(owner)
        return s.Split(owner, _HOW[type(op)], k, _fn(getattr(op, "fn", None)), _policy(op))

    def _bind(self, op: ir.Elementwise, slots: list) -> tuple:
        """A stage's bindings: literals inline; actor handles and values in ``slots``,
        values put once (per round, as a value changes each round) and passed by reference."""
        out = []
        for name, operand in op.bindings.items():
            if isinstance(operand, ir.Lit):
                out.append((name, s.Lit(operand.value)))
                continue
            node = operand.node
            if self.ir.op(node).node_shape == ir.ACTOR:
                slots.append(self.actors[node])
                rounds = tuple(self.round_index.get(loop, 0) for loop in loops_of(self.ir, op.loop))
                out.append((name, s.Handle(len(slots) - 1, node, rounds)))
                continue
            value = self.value(operand)
            cached = self.puts.get(node)
            if cached is None or cached[0] is not value:
                cached = self.puts[node] = (value, self.ray.put(value))
            slots.append(cached[1])
            out.append((name, s.Slot(len(slots) - 1, node)))
        return tuple(out)

    def parts(self, node: str) -> list:
        """The partition refs of ``node``, computing a fused head if need be."""
        value = self.env[node]
        if isinstance(value, Parts):
            return value.refs
        if isinstance(value, Fresh):
            parts = Parts([row[0] for row in self.submit(Chain(node, (), True), None)])
            self.env[node] = parts
            return parts.refs
        raise RuntimeError(f"pipec internal error: {node} has no partitions ({type(value).__name__})")

    def produce(self, node: str, chain: Chain, role: str = ""):
        """Compute collection ``node`` with ``chain``; when it is a shared scan, its
        branches' fold, count or split outputs come from the same tasks (kept for their
        owners in ``branch_out``), and the partitions are kept only if read elsewhere."""
        scan = self.low.scans.get(node)
        if scan is None:
            return Parts([row[0] for row in self.submit(chain, None, role)])
        keep, branches = scan
        k = self._width(chain.head)
        rows = self.submit(chain, None, role, scan=node)
        at = int(keep)
        for branch in branches:
            if isinstance(self.ir.op(branch.owner), (ir.Reduce, ir.Count)):
                self.branch_out[branch.owner] = [row[at] for row in rows]
                at += 1
            else:
                self.branch_out[branch.owner] = [row[at:at + k] for row in rows]
                at += k
        return Parts([row[0] for row in rows]) if keep else Scanned(k)

    # ---- waiting, progress, errors

    def _watch(self, name: str, refs: list) -> None:
        if self.track and refs:
            self.progress.stage(name, len(refs))
            self.watched.update((ref, name) for ref in refs)

    def fetch(self, refs: list) -> list:
        """The values of ``refs``, reporting progress meanwhile (also of the tasks upstream
        of ``refs``, which finish first)."""
        waiting = set(refs)
        while self.watched and waiting:
            pool = list(self.watched) + [r for r in waiting if r not in self.watched]
            ready, _ = self.ray.wait(pool, num_returns=1, fetch_local=False)
            for ref in ready:
                waiting.discard(ref)
                if ref in self.watched:
                    self.progress.advance(self.watched.pop(ref))
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
            self.progress.advance(self.watched.pop(ref))

    def task_error(self, exc: BaseException) -> PipelineRuntimeError:
        """A Ray failure as a pipec error naming the stage (and partition) that failed."""
        ray = self.ray
        cause = getattr(exc, "cause", None)
        failure = cause if isinstance(cause, StageFailure) else exc if isinstance(exc, StageFailure) else None
        if failure is not None:
            err = self.stage_failed(failure)
            call = self.call_op
            if call is not None and failure.node == f"{call.actor.node}.{call.method}":
                return self.error(err.where, err.message, call.span, err.hint)  # the call's line
            return err
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
        if read_in_tasks(op):
            self.env[node] = self._fresh_source(node, op, k, args, kwargs)
            if node in self.low.fused:
                return self.env[node]
            return self.produce(node, Chain(node, (), True))
        self.progress.stage(node, k)
        parts = self.read_source(node, op, k, args, kwargs)
        try:
            refs = [self.ray.put(p) for p in parts]
        except Exception as exc:
            raise self.error(node, f"a partition cannot be put in Ray's object store ({type(exc).__name__}: "
                                   f"{exc})", op.span, "return plain data (numbers, strings, lists, numpy arrays)") \
                from None
        self.progress.advance(node, k)
        return Parts(refs)

    def _fresh_source(self, node: str, op: ir.Source, k: int, args: list, kwargs: dict) -> Fresh:
        """A source whose partitions its readers' tasks make: a range block (left a
        ``range``), a text file's own lines, or a sharded call."""
        if op.kind == "range":
            return Fresh(s.RangeSlice(node, args[0], k), k)
        if op.kind == "read_text":
            # The driver counts the lines (streamed, C speed); each task decodes its own bytes.
            # A relative path means the driver's working directory, not the worker's.
            path = os.path.abspath(args[0])
            try:
                index = self.ray.put(sources.line_index(path))
            except OSError as exc:
                raise self.cannot_read(node, op, args[0], exc) from None
            return Fresh(s.ReadText(node, path, k, index=0), k, slots=(index,))
        return Fresh(s.Sharded(node, _fn(op.fn), tuple(args), tuple(kwargs.items()), k, _policy(op)), k)

    def collection_elementwise(self, node: str, op: ir.Elementwise):
        if node in self.low.fused:
            return FUSED
        if op.pool is not None:
            return Parts(self.run_pool(node, op))
        chain = self.low.chain(node, "input")
        out = self.produce(node, Chain(chain.head, chain.steps + (node,), chain.head_fused))
        if actor_handles(self.ir, node, op) or not self.ir.consumers(node):
            # Graph-level calls after this stage must see its calls; and an unused
            # stage's failure must still surface.
            self.fetch(out.refs)
            self._checkpoint_handle_actors(op)
        return out

    def _checkpoint_handle_actors(self, op: ir.Elementwise) -> None:
        """Snapshot each restartable actor the stage called through handles: those calls
        are in no replay log, so a later restart must find them in the snapshot."""
        for name, operand in op.bindings.items():
            node = getattr(operand, "node", None)
            if node in self.actors and self.ir.op(node).restarts > 0:
                self.ray.get(self.actors[node].checkpoint.remote())

    # ---- keyed operations

    def collection_reduce_by_key(self, node: str, op: ir.ReduceByKey):
        return self._shuffle(node, op, s.Merge(node, "reduce_by_key", _fn(op.fn), _policy(op)))

    def collection_group_by_key(self, node: str, op: ir.GroupByKey):
        return self._shuffle(node, op, s.Merge(node, "group_by_key"))

    def collection_distinct(self, node: str, op: ir.Distinct):
        return self._shuffle(node, op, s.Merge(node, "distinct"))

    def collection_join(self, node: str, op: ir.Join):
        left, right = self.low.chain(node, "left"), self.low.chain(node, "right")
        k = max(self._width(left.head), self._width(right.head))
        return self._shuffled(node, s.Merge(node, "join"), k, self._split(left, node, k, "split left"),
                              self._split(right, node, k, "split right"))

    def _shuffle(self, node: str, op: ir.Op, merge: s.Merge):
        chain = self.low.chain(node, "input")
        k = self._width(chain.head)
        return self._shuffled(node, merge, k, self._split(chain, node, k))

    def _split(self, chain: Chain, node: str, k: int, role: str = "split") -> list[list]:
        """Per input partition, the refs of its ``k`` buckets for ``node``."""
        if node in self.branch_out:  # split in the tasks of a shared scan
            return self.branch_out.pop(node)
        invariant = self.low.invariant(node, chain)
        if invariant:
            cached = self.splits.get((node, role))
            if cached is not None and cached[0] is self.env[chain.head] and cached[1] == k:
                return cached[2]
        buckets = self.submit(chain, node, role, buckets=k) if k else []
        if invariant:
            self.splits[(node, role)] = (self.env[chain.head], k, buckets)
        return buckets

    def _shuffled(self, node: str, merge: s.Merge, k: int, parts: list[list], right: list[list] = ()):
        inputs = [[b[j] for b in parts] + [b[j] for b in right] for j in range(k)]
        self.env[node] = Fresh(merge, k, inputs, left=len(parts))
        if node in self.low.fused:
            return self.env[node]
        return self.produce(node, Chain(node, (), True), "merge")

    def collection_union(self, node: str, op: ir.UnionAll):
        return Parts([ref for part in op.parts for ref in self.parts(part.node)])

    # ---- actor pools

    def run_pool(self, node: str, op: ir.Elementwise) -> list:
        """Feed partitions to the pool's actors as they free up; a partition lost with an
        actor is sent again (the pool restarts it, or another member takes it). User code
        is retried, and timed, by the interpreter inside the member."""
        ray = self.ray
        parts = self.parts(op.input.node)
        members = list(self.pools[op.pool.node])
        pool_op = self.ir.op(op.pool.node)
        slots: list = []
        step = s.Elementwise(node, op.kind, None, self._bind(op, slots), _policy(op), op.pool.node, op.method)
        attempts_allowed = max(op.options.retries, pool_op.restarts) if not op.options.effectful else 0
        self.progress.stage(node, len(parts))
        out: list = [None] * len(parts)
        queue = deque(range(len(parts)))
        free = deque(range(len(members)))
        running: dict[Any, tuple[int, int]] = {}
        attempts = [0] * len(parts)
        while queue or running:
            while queue and free:
                i, m = queue.popleft(), free.popleft()
                ok, out[i] = members[m].run.options(num_returns=2).remote(step, i, parts[i], *slots)
                running[ok] = (i, m)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                i, m = running.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    if isinstance(exc, ray.exceptions.ActorDiedError) and not self._alive(members[m]):
                        members[m] = None
                    if attempts[i] >= attempts_allowed or not any(members):
                        raise self.error(node, f"an actor of pool `{op.pool.node}` died while serving partition "
                                               f"{i}", op.span,
                                         "give the pool `restarts N` or the stage `retries N`") from None
                    attempts[i] += 1
                    queue.append(i)
                    if members[m] is not None:
                        free.append(m)
                    continue
                except Exception as exc:
                    raise self.task_error(exc) from None
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
        level = self.branch_out.pop(node, None)
        if level is None:
            level = [row[0] for row in self.submit(self.low.chain(node, "input"), node, "fold")]
        # The tree of combine tasks, level by level, FAN_IN partials per task in partition
        # order; the last group is folded here, where the value is needed.
        combine, depth = s.Combine(node, _fn(op.fn), policy=_policy(op)), 0
        while len(level) > semantics.FAN_IN:
            depth += 1
            remote = self.fns.finish.options(**self.low.options([node]), name=f"{node}:combine{depth}")
            level = [remote.remote(self.paths, combine, *level[i:i + semantics.FAN_IN])
                     for i in range(0, len(level), semantics.FAN_IN)]
            self._watch(f"{node}:combine{depth}", level)
        return self.reduced(node, op, self.fetch(level))

    def op_count(self, node: str, op: ir.Count):
        refs = self.branch_out.pop(node, None)
        if refs is None:
            refs = [row[0] for row in self.submit(self.low.chain(node, "input"), node, "count")]
        return sum(self.fetch(refs))

    def var_partitions(self, var: str) -> list[list]:
        return self.fetch(self.parts(var))

    def var_from_partitions(self, var: str, parts: list[list]):
        return Parts([self.ray.put(part) for part in parts])

    def gather(self, node: str) -> list:
        return [x for part in self.fetch(self.parts(node)) for x in part]

    # ---- actors

    def start_actor(self, node: str, op: ir.Actor):
        if node in self.early:
            return self.early.pop(node)
        return self._create_actor(node, op, [self.value(a) for a in op.args],
                                  {k: self.value(v) for k, v in op.kwargs.items()})

    def _create_actor(self, node: str, op: ir.Actor, args: list, kwargs: dict):
        # A restartable actor always has a snapshot file: periodic checkpoints go there,
        # and so do the snapshots taken after stages that call it through handles.
        snapshot = self.snapshot_path(node) if op.checkpoint_every or op.restarts > 0 else None
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
