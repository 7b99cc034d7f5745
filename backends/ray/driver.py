"""The driver of a Ray run: submits segments, reductions, shuffles and actor calls, watches
timeouts, and recovers restarted actors by replaying their calls in order."""

from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


from pipec.compiler import ir
from pipec.backends.base import NoProgress, Progress, RunResult
from pipec.backends.runtime import semantics, sources
from pipec.backends.runtime.driver import Driver
from pipec.dsl.diagnostics import PipelineRuntimeError
from pipec.backends.ray.lowering import Chain, Lowering, actor_handles, read_in_tasks
from pipec.backends.ray.worker import ActorProxy, Gap, StageError, remote_calls, returns_of


# How long the driver waits for a restarted actor to come back before giving up.
ACTOR_RESTART_WAIT = 120.0


class Parts:
    """A materialised collection: one ObjectRef per partition, in partition order."""

    def __init__(self, refs: list):
        self.refs = list(refs)


class Gen:
    """A fused source: its partitions are made inside the consumer's tasks. ``heads``
    holds, per partition, the head spec and the refs the head reads."""

    def __init__(self, heads: list[tuple[tuple, list]]):
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
            return value.heads
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
        n = returns_of(terminal)
        out = self.submit(chain, None, terminal, role, returns=n, also=members, also_values=values)
        rows = [list(refs) if n > 1 else [refs] for refs in out]
        at = 1 if keep else 0
        for branch, (_, term) in zip(branches, specs):
            r = returns_of(term)
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
        if read_in_tasks(op):
            self.env[node] = Gen(self._source_heads(node, op, k, args, kwargs))
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

    def _source_heads(self, node: str, op: ir.Source, k: int, args: list, kwargs: dict) -> list[tuple[tuple, list]]:
        """Per partition, the head spec of a source made in its tasks, and its refs."""
        if op.kind == "range":
            return [(("range", node, a, b), []) for a, b in semantics.partition_bounds(args[0], k)]
        if op.kind == "read_text":
            # The driver counts the lines (streamed, C speed); each task decodes its own bytes.
            # A relative path means the driver's working directory, not the worker's.
            path = os.path.abspath(args[0])
            try:
                index = self.ray.put(sources.line_index(path))
            except OSError as exc:
                raise self.cannot_read(node, op, args[0], exc) from None
            return [(("text", node, path, k), [index]) for _ in range(k)]
        return [(("shard", node, op.fn.module, op.fn.attr, args, kwargs, k), []) for _ in range(k)]

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
                                         "give the pool `restarts N` or the stage `retries N`") from None
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
        return self.reduced(node, op, self.fetch(level))

    def op_count(self, node: str, op: ir.Count):
        refs = self.branch_out.pop(node, None)
        if refs is None:
            refs = self.submit(self.low.chain(node, "input"), node, ("count", node), "count")
        return sum(self.fetch(refs))

    def var_partitions(self, var: str) -> list[list]:
        return self.fetch(self.parts(var))

    def var_from_partitions(self, var: str, parts: list[list]):
        return Parts([self.ray.put(part) for part in parts])

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
