"""The reference backend: runs everything the language can say, in process, strictly.

Strict means it fails where a cluster would: every partition and every broadcast value
crossing a stage boundary is pickled and unpickled (a stage whose output cannot be
serialised fails here first, naming the stage), and a function that mutates its input
is caught by comparing the input's pickled bytes before and after the call.
"""

from __future__ import annotations

import pickle
from typing import Any

from pipec.compiler import ir
from pipec.compiler.schedule import Block, blocks
from pipec.backends.base import Backend, Plan
from pipec.backends.physical import steps
from pipec.backends.runtime import batches, datasets, semantics
from pipec.backends.runtime.actors import ActorHost, VersionedHost
from pipec.backends.physical.explain import describe
from pipec.backends.physical.planner import FILE_FORMATS, files_head, loops_of, reads_columnar
from pipec.backends.runtime.interpreter import ActorProxy, StageFailure, run_segment
from pipec.backends.runtime.driver import Driver, LiveContext
from pipec.backends.runtime.tasks import apply_elementwise, fn_of, resolve, run_with_timeout

# Actors reachable from handle proxies in this process, by (run id, actor node).
_HANDLES: dict[tuple[str, str], ActorHost] = {}


def _caller(run_id: str, actor: str):
    """How a stage calls actor ``actor`` of run ``run_id`` through a handle, in process."""
    def call(key: tuple, method: str, args: tuple, kwargs: dict):
        return _HANDLES[(run_id, actor)].invoke(key, method, args, kwargs)
    return call


class LocalBackend(Backend):
    name = "local"
    description = "reference backend: in process, every boundary pickled, mutation checked"
    actor_host = pool_host = "driver"

    def lower(self, graph: ir.IR, params: dict[str, Any]) -> "LocalPlan":
        return LocalPlan(graph, params)


class LocalPlan(Plan):
    backend = "local"
    driver = "pipec.backends.local:LocalDriver"

    def explain(self) -> str:
        lines = [f"local plan for pipeline `{self.ir.info.name}` (runs in process, in this order)"]
        _explain_block(self.ir, blocks(self.ir), lines, 1)
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        def block_json(block: Block):
            return {"loop": block.loop.id if block.loop else None,
                    "items": [block_json(i) if isinstance(i, Block) else i for i in block.items]}
        return {"backend": "local", "pipeline": self.ir.info.name, "params": self.params,
                "schedule": block_json(blocks(self.ir))}


def _explain_block(graph: ir.IR, block: Block, lines: list[str], depth: int) -> None:
    pad = "  " * depth
    for item in block.items:
        if isinstance(item, Block):
            loop = item.loop
            if loop.when is not None:
                cond = loop.when.node if isinstance(loop.when, ir.NodeRef) else loop.when.value
                lines.append(f"{pad}when {cond}:  # {loop.id}, in the rounds where it is true")
                _explain_block(graph, item, lines, depth + 1)
                continue
            count = loop.count.value if isinstance(loop.count, ir.Lit) else loop.count.node
            extra = f" until {loop.until.node if isinstance(loop.until, ir.NodeRef) else loop.until.value}" \
                if loop.until is not None else ""
            lines.append(f"{pad}repeat {count}{extra}:  # {loop.id}")
            _explain_block(graph, item, lines, depth + 1)
        else:
            lines.append(f"{pad}{item} = {describe(graph, item)}")


class LocalDriver(Driver):
    backend = "local"

    def setup(self) -> None:
        self.hosts: dict[str, ActorHost] = {}
        self.pools: dict[str, list] = {}

    def engine_info(self) -> dict[str, Any]:
        return {"workers": 1, "dashboard": None, "versions": {}}  # this process only

    def teardown(self) -> None:
        for actor, host in self.hosts.items():
            _HANDLES.pop((self.run_id, actor), None)
            try:
                host.close()  # a failed run too: no snapshot is left half-written
            except OSError:
                pass

    def flush_actor(self, actor: str) -> None:
        self.hosts[actor].flush()

    # ---- strictness

    def roundtrip(self, obj, where: str, what: str, span) -> Any:
        try:
            return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as exc:
            raise self.error(where, f"{what} cannot be pickled, so it cannot cross to another process "
                                    f"({type(exc).__name__}: {exc})", span,
                             "return plain data (numbers, strings, lists, dicts, numpy arrays)") from None

    def run_task(self, where: str, op, partition: int, body, inputs: list, retries: int):
        """Run ``body()`` for one partition with retries, timeout and the mutation check."""
        options = getattr(op, "options", ir.StageOptions())
        before = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in inputs]
        attempts = 0 if options.effectful else retries
        for attempt in range(attempts + 1):
            try:
                result = run_with_timeout(body, options.timeout, f"pipec-{where}-{partition}")
                break
            except TimeoutError:
                raise self.error(where, f"partition {partition} did not finish within its timeout of "
                                        f"{options.timeout:g} s", op.span) from None
            except Exception as exc:
                if attempt == attempts:
                    raise self.user_error(where, exc, op.span, partition) from None
        after = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in inputs]
        if before != after:
            raise self.error(where, f"the function changed its input (partition {partition})", op.span,
                             "functions must not mutate their inputs; build and return a new object")
        return result

    def partitions(self, node: str) -> list[list]:
        """A collection's partitions as rows (a table's rows as dicts)."""
        return [batches.rows(p) for p in self.env[node]]

    def gather(self, node: str) -> list:
        return [x for part in self.partitions(node) for x in part]

    def var_partitions(self, var: str) -> list[list]:
        return self.partitions(var)

    def var_from_partitions(self, var: str, parts: list[list]):
        return parts

    def count(self, node: str) -> int:
        return sum(len(p) for p in self.env[node])

    # ---- sources

    def collection_source(self, node: str, op: ir.Source):
        if op.kind in FILE_FORMATS:
            listing = self.list_source(node, op)
            if op.kind in ("read_parquet", "read_csv") or not listing[1]:
                return self.read_files(node, op, listing)
            if op.partitions is None:  # one file, read whole: one partition
                op = op.model_copy(update={"partitions": ir.Lit(value=1)})
        k = self.value(op.partitions)
        self.progress.stage(node, k)
        args = [self.value(a) for a in op.args]
        kwargs = {key: self.value(v) for key, v in op.kwargs.items()}
        if op.kind != "range" and not op.sharded:
            parts = self.read_source(node, op, k, args, kwargs)
        else:
            try:
                if op.kind == "range":
                    parts = [list(range(a, b)) for a, b in semantics.partition_bounds(args[0], k)]
                else:
                    fn = fn_of(op.fn)
                    parts = [list(fn(*args, **kwargs, partition=i, partitions=k)) for i in range(k)]
            except Exception as exc:
                raise self.user_error(node, exc, op.span) from None
        self.progress.advance(node, k)
        return [self.roundtrip(p, node, "a partition", op.span) for p in parts]

    def read_files(self, node: str, op: ir.Source, listing: tuple) -> list:
        """A file source's partitions, each read by the shared interpreter's head."""
        head, _ = files_head(self.ir, node, op, LiveContext(self), listing)
        self.progress.stage(node, head.k)
        parts = []
        for i in range(head.k):
            try:
                parts.append(run_segment(steps.Segment(node, head), i))
            except StageFailure as failure:
                raise self.stage_failed(failure) from None
            self.progress.advance(node)
        return [self.roundtrip(p, node, "a partition", op.span) for p in parts]

    def sink_dataset(self, node: str, op: ir.Sink) -> str:
        """The parts written here, partition by partition, into the sink's staging folder."""
        staging = self.stage_dataset(node, op)
        names = []
        for i, part in enumerate(self.env[op.input.node]):
            try:
                name = datasets.write_part(part, op.format, staging, i)
            except TypeError as exc:
                raise self.error(node, str(exc), op.span) from None
            except OSError as exc:
                raise self.error(node, f"cannot write {op.format} part {i}: {exc.strerror or exc}", op.span) from None
            if name is not None:
                names.append(name)
        return self.dataset_written(node, op, names)

    # ---- element-wise

    def collection_elementwise(self, node: str, op: ir.Elementwise):
        parts = self.env[op.input.node] if op.batch else self.partitions(op.input.node)
        columnar = op.batch is not None and reads_columnar(self.ir, node)
        self.progress.stage(node, len(parts))
        handles = {k: v.node for k, v in op.bindings.items()
                   if isinstance(v, ir.NodeRef) and self.ir.op(v.node).node_shape == ir.ACTOR}
        values = {k: self.value(v) for k, v in op.bindings.items() if k not in handles}
        rounds = tuple(self.round_index.get(loop, 0) for loop in loops_of(self.ir, op.loop))
        out = []
        for i, items in enumerate(parts):
            fn = self.pool_member(op, i) if op.pool is not None else fn_of(op.fn)
            local = self.roundtrip(values, node, "a broadcast value", op.span)

            def body(i=i, items=items, local=local, fn=fn):
                # Proxies made afresh for each try: a retry sends the same idempotency keys.
                bound = {**local, **{name: ActorProxy(_caller(self.run_id, actor), (node, rounds, i, name))
                                     for name, actor in handles.items()}}
                if op.batch is None:
                    return apply_elementwise(op.kind, fn, items, bound, i)
                out = batches.from_batch(apply_elementwise(op.kind, fn, batches.to_batch(items, op.batch), bound, i,
                                                           op.batch), op.batch)
                return out if columnar else batches.rows(out)
            result = self.run_task(node, op, i, body, [items], op.options.retries)
            out.append(self.roundtrip(result, node, f"partition {i} of the output", op.span))
            self.progress.advance(node)
        for actor in sorted(set(handles.values())):
            # Calls through handles are in no replay log: a resume record must name a
            # snapshot that holds them.
            self.hosts[actor].checkpoint()
            self.logs[actor].checkpointed()
        return out

    def pool_member(self, op: ir.Elementwise, partition: int):
        members = self.pools[op.pool.node]
        return getattr(members[partition % len(members)], op.method)

    # ---- keyed

    def _shuffle(self, node: str, op, parts: list[list], k: int, split):
        try:
            return [split(items, k) for items in parts]
        except TypeError as exc:
            raise self.error(node, str(exc), op.span) from None

    def collection_reduce_by_key(self, node: str, op: ir.ReduceByKey):
        parts = self.partitions(op.input.node)
        fn, k = fn_of(op.fn), len(parts)
        self.progress.stage(node, 2 * k)
        partials = [self.run_task(node, op, i, lambda items=items: semantics.reduce_by_key_partial(fn, items),
                                  [items], op.options.retries) for i, items in enumerate(parts)]
        buckets = self._shuffle(node, op, partials, k, lambda items, k: semantics.shuffle_split(items, k, "reduce_by_key"))
        out = [self.run_task(node, op, j, lambda j=j: semantics.reduce_by_key_merge(fn, [b[j] for b in buckets]),
                             [], op.options.retries) for j in range(k)]
        self.progress.advance(node, 2 * k)
        return [self.roundtrip(p, node, "a partition", op.span) for p in out]

    def collection_group_by_key(self, node: str, op: ir.GroupByKey):
        parts = self.partitions(op.input.node)
        k = len(parts)
        buckets = self._shuffle(node, op, parts, k, lambda items, k: semantics.shuffle_split(items, k, "group_by_key"))
        return [self.roundtrip(semantics.group_merge([b[j] for b in buckets]), node, "a partition", op.span)
                for j in range(k)]

    def collection_join(self, node: str, op: ir.Join):
        left, right = self.partitions(op.left.node), self.partitions(op.right.node)
        k = max(len(left), len(right))
        lb = self._shuffle(node, op, left, k, lambda items, k: semantics.shuffle_split(items, k, "join"))
        rb = self._shuffle(node, op, right, k, lambda items, k: semantics.shuffle_split(items, k, "join"))
        return [self.roundtrip(semantics.join_merge([b[j] for b in lb], [b[j] for b in rb]), node,
                               "a partition", op.span) for j in range(k)]

    def collection_distinct(self, node: str, op: ir.Distinct):
        parts = self.partitions(op.input.node)
        k = len(parts)
        buckets = [semantics.distinct_split(items, k) for items in parts]
        return [semantics.distinct_merge([b[j] for b in buckets]) for j in range(k)]

    def collection_union(self, node: str, op: ir.UnionAll):
        return [list(p) for part in op.parts for p in self.partitions(part.node)]

    # ---- ordering, sampling and indexing (positions in collection order)

    def in_collection_order(self, node: str) -> list[list]:
        """Collection ``node``'s partitions laid out in collection order: as they are, or a
        keyed result's (hash buckets) sorted by key range, as the planned backends do."""
        parts = self.partitions(node)
        order = self.order_of(node)
        if order is None:
            return parts
        try:
            runs = [semantics.sort_run(p, None, False, order) for p in parts]
        except TypeError as exc:
            raise self.error(node, str(exc), self.ir.op(node).span) from None
        return semantics.sorted_ranges(runs, semantics.sort_width(False, False, order))

    def collection_sort_by(self, node: str, op: ir.SortBy):
        parts = self.partitions(op.input.node)
        by, order = fn_of(op.by) if op.by else None, self.order_of(op.input.node)
        # Each partition sorted in a task of its own, as on a cluster: a failing key function
        # names the same partition everywhere. Then the same key ranges as the planned sort.
        runs = [self.run_task(node, op, i, lambda items=items: semantics.sort_run(items, by, op.by is None, order),
                              [items], op.options.retries) for i, items in enumerate(parts)]
        out = semantics.sorted_ranges(runs, semantics.sort_width(by is not None, op.by is None, order))
        return [self.roundtrip(p, node, "a partition", op.span) for p in out]

    def collection_zip_with_index(self, node: str, op: ir.ZipWithIndex):
        parts = self.in_collection_order(op.input.node)
        starts = semantics.offsets([len(p) for p in parts])
        return [semantics.zip_part(p, start) for p, start in zip(parts, starts)]

    def collection_sample(self, node: str, op: ir.Sample):
        try:
            fraction = semantics.check_fraction(self.value(op.fraction))
            seed = semantics.check_seed(self.value(op.seed))
        except ValueError as exc:
            raise self.error(node, str(exc), op.span) from None
        parts = self.in_collection_order(op.input.node)
        starts = semantics.offsets([len(p) for p in parts])
        return [semantics.sample_part(p, start, fraction, seed) for p, start in zip(parts, starts)]

    # ---- values from collections

    def op_reduce(self, node: str, op: ir.Reduce):
        fn = fn_of(op.fn)
        parts = self.partitions(op.input.node)
        partials = [self.run_task(node, op, i, lambda items=items: semantics.fold(fn, items), [items],
                                  op.options.retries) for i, items in enumerate(parts)]
        return self.roundtrip(self.reduced(node, op, partials), node, "the reduced value", op.span)

    # ---- actors

    def start_actor(self, node: str, op: ir.Actor):
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        try:
            host = VersionedHost(op.cls.module, op.cls.attr, args, kwargs, op.checkpoint_every,
                                 self.snapshot_path(node))  # also saved after stages that call it
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        self.hosts[node] = host
        _HANDLES[(self.run_id, node)] = host
        return host

    def start_pool(self, node: str, op: ir.Actor, size: int):
        cls = resolve(op.cls.module, op.cls.attr)
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        try:
            self.pools[node] = [cls(*args, **kwargs) for _ in range(size)]
            for seq, method, a, k in self.pool_logs.get(node, []):  # a resumed run's calls so far
                for member in self.pools[node]:
                    getattr(member, method)(*a, **k)
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        return self.pools[node]

    def call_pool(self, pool: str, seq: int, method: str, args: list, kwargs: dict) -> list:
        answers = []
        for member in self.pools[pool]:  # each member gets its own copy, as over a wire
            a, k = self.roundtrip((args, kwargs), pool, "a pool call's arguments", None)
            answers.append(self.roundtrip(getattr(member, method)(*a, **k), pool, f"the result of {method}()", None))
        return answers

    def call_actor(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        args, kwargs = self.roundtrip((args, kwargs), actor, "an actor call's arguments", None)
        result = self.hosts[actor].call(seq, method, args, kwargs)
        return self.roundtrip(result, actor, f"the result of {method}()", None)
