"""The one worker-side interpreter: runs a segment of the physical plan on one partition.

Every engine calls :func:`run_segment` (and :func:`run_finisher` for a reduction's
combine nodes) inside its own task, so a partition computed on Dask, Ray or Spark is
the partition the reference backend computes, bit for bit. Three rules hold here once
for every engine:

* **one failure type**: user code that fails, a timeout, or input of the wrong shape
  becomes a :class:`StageFailure` naming the stage, the partition and where the user's
  code raised; the driver turns it into the error the user sees;
* **one retry rule**: a step's user code is tried ``policy.tries`` times inside the task
  (``retries`` of the stage, once when it is ``effectful``). An engine's own task retries
  are left for what lineage recovery is for: a lost worker;
* **one timeout mechanism**: the step runs in a helper thread and is abandoned after
  ``policy.timeout`` seconds (Python cannot stop a thread; it is left to finish alone).

The engine provides a :class:`Slots` reader for the values and actor handles a step
reads, since how they travel is the engine's business.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from pipec.backends.physical import steps as s
from pipec.backends.runtime import batches, datasets, semantics, sources
from pipec.backends.runtime.tasks import (apply_elementwise, failing_element, resolve, run_with_timeout, user_frame,
                                          user_traceback)


class StageFailure(Exception):
    """A stage failed in a task: ``node`` is the IR node, ``partition`` the partition
    (None for a combine), ``kind`` one of ``error`` (user code raised ``error``:
    ``message``), ``timeout`` or ``plain`` (a message of pipec's own, e.g. a record that is
    not a key/value pair). Picklable, so it crosses any engine unchanged."""

    def __init__(self, node: str, partition: int | None, kind: str, message: str, error: str = "",
                 frame: str | None = None, hint: str | None = None, traceback: str | None = None,
                 element: str = ""):
        super().__init__(node, partition, kind, message, error, frame, hint, traceback, element)
        self.node, self.partition, self.kind, self.message = node, partition, kind, message
        self.error, self.frame, self.hint = error, frame, hint
        self.traceback = traceback  # the user's traceback, as text (`pipec run --traceback`)
        self.element = element  # " at element I = ITEM" (see tasks.failing_element), or ""

    def __str__(self) -> str:
        place = f" (partition {self.partition})" if self.partition is not None else ""
        what = f"{self.error}: {self.message}" if self.error else self.message
        return f"in `{self.node}`: {what}{place}"


# How an engine sends one call through an actor handle: (key, method, args, kwargs) -> answer.
Caller = Callable[[tuple, str, tuple, dict], Any]


class Slots(Protocol):
    """How a task reads what its steps are bound to."""

    def value(self, index: int) -> Any:
        """The value in slot ``index``."""

    def handle(self, index: int, actor: str) -> Caller:
        """How to call the actor whose handle is in slot ``index``."""

    def member(self, pool: str, method: str) -> Callable:
        """The bound ``method`` of the actor pool member serving this task, for an engine
        that runs a pool's stage inside the segment (Spark: one member per worker process)."""


class Given:
    """Slots given as plain values (the engine resolved them already); the caller of a
    handle is made by ``caller(actor, value)``, pool members by ``members(pool, method)``."""

    def __init__(self, values: Sequence, caller: Callable[[str, Any], Caller] | None = None,
                 members: Callable[[str, str], Callable] | None = None):
        self.values, self.caller, self.members = values, caller, members

    def value(self, index: int) -> Any:
        return self.values[index]

    def handle(self, index: int, actor: str) -> Caller:
        return self.caller(actor, self.values[index])

    def member(self, pool: str, method: str) -> Callable:
        if self.members is None:
            raise UnknownStep(f"no pool members given for `{pool}.{method}`")
        return self.members(pool, method)


class ActorProxy:
    """What a stage function gets for ``with server = ps``: method calls block and return
    the actor's answers. Each call carries an idempotency key, ``prefix`` (stage, rounds,
    partition, binding) plus its position among this try's calls, so the same task run
    again sends the same keys and the actor applies each call once. That holds when the
    task's calls depend only on its inputs and the answers it gets."""

    def __init__(self, call: Caller, prefix: tuple):
        self._call, self._prefix, self._position = call, prefix, 0

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args, **kwargs):
            key = self._prefix + (self._position,)
            self._position += 1
            return self._call(key, method, args, kwargs)
        return call


NO_SLOTS = Given(())


def failure(node: str, partition: int | None, exc: BaseException) -> StageFailure:
    """The StageFailure of user code that raised ``exc``."""
    if isinstance(exc, StageFailure):
        return exc
    return StageFailure(node, partition, "error", str(exc), type(exc).__name__, user_frame(exc),
                        traceback=user_traceback(exc), element=failing_element(exc))


def attempt(node: str, partition: int | None, policy: s.Policy, body: Callable[[], Any]) -> Any:
    """``body()`` under ``policy``: tried ``policy.tries`` times, each try cut at the
    timeout; raises the StageFailure of the last try."""
    for n in range(policy.tries):
        try:
            return run_with_timeout(body, policy.timeout, f"pipec-{node}-{partition}")
        except TimeoutError:
            raise StageFailure(node, partition, "timeout",
                               f"partition {partition} did not finish within its timeout of {policy.timeout:g} s") from None
        except StageFailure:
            raise
        except Exception as exc:
            if n == policy.tries - 1:
                raise failure(node, partition, exc) from None
    raise AssertionError("unreachable")


def _plain(node: str, partition: int | None, body: Callable[[], Any]) -> Any:
    """``body()`` whose TypeError is pipec's own message about the data's shape."""
    try:
        return body()
    except TypeError as exc:
        raise StageFailure(node, partition, "plain", str(exc)) from None


class UnknownStep(TypeError):
    """The interpreter met a step it has no handler for: a bug in pipec, never skipped."""


# ---- heads -------------------------------------------------------------------------------------


def _head_input(head: s.Input, items, partition: int, slots: Slots):
    return items


def _head_range(head: s.RangeSlice, items, partition: int, slots: Slots):
    a, b = semantics.partition_of(head.n, head.k, partition)
    return range(a, b)  # a list only where user code would see it (see run_segment)


def _head_text(head: s.ReadText, items, partition: int, slots: Slots):
    index = slots.value(head.index) if head.index is not None else None
    return _reading(head.node, head.path, lambda: sources.read_lines_part(head.path, partition, head.k, index))


def _head_jsonl(head: s.ReadJsonl, items, partition: int, slots: Slots):
    rows = _reading(head.node, head.path, lambda: sources.read_jsonl(head.path))
    a, b = semantics.partition_of(len(rows), head.k, partition)
    return rows[a:b]


def _reading(node: str, path: str, body: Callable[[], list]) -> list:
    try:
        return body()
    except datasets.MissingExtra as exc:
        raise StageFailure(node, None, "plain", str(exc)) from None
    except OSError as exc:
        raise StageFailure(node, None, "plain", f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StageFailure(node, None, "plain", str(exc)) from None


def _head_files(head: s.ReadFiles, items, partition: int, slots: Slots):
    mine = datasets.group_of(head.pieces, head.k, partition)
    where = mine[0][0] if mine else (head.pieces[0][0] if head.pieces else head.node)
    data = _reading(head.node, where, lambda: datasets.read_pieces(head.format, mine, dict(head.options), head.pieces,
                                                                   head.types))
    return data if head.columnar else batches.rows(data)


def _head_sharded(head: s.Sharded, items, partition: int, slots: Slots):
    fn = resolve(head.fn.module, head.fn.attr)
    kwargs = dict(head.kwargs)
    return attempt(head.node, partition, head.policy,
                   lambda: list(fn(*head.args, **kwargs, partition=partition, partitions=head.k)))


def _head_merge(head: s.Merge, items, partition: int, slots: Slots):
    records = sorted(items, key=lambda r: (r[0], r[1]))
    if head.how == "join":
        return semantics.join_merge([b for side, _, b in records if side == 0],
                                    [b for side, _, b in records if side == 1])
    parts = [b for _, _, b in records]
    if head.how == "reduce_by_key":
        fn = resolve(head.fn.module, head.fn.attr)
        return attempt(head.node, partition, head.policy, lambda: semantics.reduce_by_key_merge(fn, parts))
    if head.how == "group_by_key":
        return _plain(head.node, partition, lambda: semantics.group_merge(parts))
    if head.how == "distinct":
        return semantics.distinct_merge(parts)
    if head.how == "sort":
        return semantics.range_merge(parts)
    raise UnknownStep(f"merge {head.how!r}")


_HEADS = {s.Input: _head_input, s.RangeSlice: _head_range, s.ReadText: _head_text, s.ReadJsonl: _head_jsonl,
          s.ReadFiles: _head_files, s.Sharded: _head_sharded, s.Merge: _head_merge}


# ---- element-wise ----------------------------------------------------------------------------------


def bind(step: s.Elementwise, slots: Slots, partition: int = 0) -> dict[str, Any]:
    """The keyword arguments ``step``'s function gets from its bindings (a fresh proxy,
    its call positions from 0, for each handle)."""
    out = {}
    for name, binding in step.bindings:
        if isinstance(binding, s.Lit):
            out[name] = binding.value
        elif isinstance(binding, s.Slot):
            out[name] = slots.value(binding.index)
        else:
            out[name] = ActorProxy(slots.handle(binding.index, binding.actor),
                                   (step.node, binding.rounds, partition, name))
    return out


def _has_handles(step: s.Elementwise) -> bool:
    return any(isinstance(b, s.Handle) for _, b in step.bindings)


def run_elementwise(step: s.Elementwise, items, partition: int, slots: Slots = NO_SLOTS, fn: Callable | None = None,
                    bindings: dict[str, Any] | None = None) -> list:
    """One stage over one partition. ``fn`` is the callable when the engine supplies it
    (an actor pool member's bound method), else a pool stage's member comes from
    ``slots.member`` (one that cannot be built fails at the pool) and any other stage's
    ``step.fn`` is resolved here; ``bindings`` are the keyword arguments when the engine
    resolved them already (else read from ``slots``)."""
    if fn is None and step.pool is not None:
        try:
            fn = slots.member(step.pool, step.method)
        except UnknownStep:
            raise
        except Exception as exc:
            raise failure(step.pool, partition, exc) from None
    elif fn is None:
        fn = resolve(step.fn.module, step.fn.attr)
    if isinstance(items, range) and (step.kind == "map_batches" or step.bindings or step.kind == "map_values"):
        items = list(items)
    if step.batch is not None:
        items = _plain(step.node, partition, lambda: batches.to_batch(items, step.batch))
    else:
        items = batches.rows(items)
    if bindings is None and _has_handles(step):
        # Each try binds afresh: its calls through handles are numbered from 0 again, so
        # a retry sends the keys of the first try and nothing is applied twice.
        out = attempt(step.node, partition, step.policy,
                      lambda: apply_elementwise(step.kind, fn, items, bind(step, slots, partition), partition,
                                                step.batch))
    else:
        if bindings is None:
            bindings = bind(step, slots, partition)
        out = attempt(step.node, partition, step.policy,
                      lambda: apply_elementwise(step.kind, fn, items, bindings, partition, step.batch))
    if step.batch is not None:
        out = _plain(step.node, partition, lambda: batches.from_batch(out, step.batch))
        return out if step.columnar else batches.rows(out)
    return out


# ---- terminals ---------------------------------------------------------------------------------------


def _fold(step: s.Fold, items, partition: int, slots: Slots):
    fn = resolve(step.fn.module, step.fn.attr)
    return attempt(step.node, partition, step.policy, lambda: semantics.fold(fn, items))


def _count(step: s.Count, items, partition: int, slots: Slots):
    return len(items)


def _top(step: s.TopPartial, items, partition: int, slots: Slots):
    by = resolve(step.by.module, step.by.attr) if step.by else None
    return attempt(step.node, partition, s.Policy(),
                   lambda: semantics.top_partial(list(items), step.n, by, step.order))


def _split(step: s.Split, items, partition: int, slots: Slots) -> list:
    if step.how == "reduce_by_key":
        fn = resolve(step.fn.module, step.fn.attr)
        items = attempt(step.node, partition, step.policy, lambda: semantics.reduce_by_key_partial(fn, items))
    if step.how == "distinct":
        return _handed(step, semantics.distinct_buckets(items, step.k))
    if step.how == "range":
        pieces = semantics.range_split(items, slots.value(step.splitters), step.k)
        return _handed(step, {index: piece for index, piece in enumerate(pieces) if piece})
    return _handed(step, _plain(step.node, partition, lambda: semantics.shuffle_buckets(items, step.k, step.how)))


def _handed(step: s.Split, buckets: dict[int, list]) -> list:
    """A split's non-empty buckets (by output partition) as its outputs: one each (an
    empty one []), or per merge group its buckets by their place (see steps.grouped)."""
    if step.groups is None:
        return semantics.dense(buckets, step.k)
    return s.grouped(buckets, step.k, step.groups)


def _write(step: s.WritePart, items, partition: int, slots: Slots):
    try:
        return _plain(step.node, partition, lambda: datasets.write_part(items, step.format, step.staging, partition))
    except OSError as exc:
        raise StageFailure(step.node, partition, "plain", f"cannot write {step.format} part {partition}: "
                                                          f"{exc.strerror or exc}") from None


def _branches(step: s.Branches, items, partition: int, slots: Slots) -> list:
    # The partition as it is (a table stays one): each branch's own steps and terminal
    # take it in the form they read, as they would reading it from a task of its own.
    outputs = [_output(items)] if step.keep else []
    for chain, terminal in step.branches:
        result = run_chain(chain, terminal, items, partition, slots)
        outputs.extend(result if isinstance(terminal, (s.Split, s.Branches)) else [result])
    return outputs


_TERMINALS = {s.Fold: _fold, s.Count: _count, s.TopPartial: _top, s.Split: _split, s.Branches: _branches,
              s.WritePart: _write}


def run_terminal(terminal, items, partition: int, slots: Slots):
    """The per-partition half of what reads the partition (see :mod:`steps`). Only a
    dataset sink's part takes a table as it is; every other terminal reads rows."""
    handler = _TERMINALS.get(type(terminal))
    if handler is None:
        raise UnknownStep(f"no handler for terminal {type(terminal).__name__}")
    if not isinstance(terminal, (s.WritePart, s.Branches)):
        items = batches.rows(items)
    return handler(terminal, items, partition, slots)


def _output(items):
    """A partition as a task gives it: a list, or a table as it is."""
    return items if isinstance(items, list) or batches.is_table(items) else list(items)


def run_segment(segment: s.Segment, partition: int, items=None, slots: Slots = NO_SLOTS):
    """Segment ``segment`` on partition ``partition``: its head (from ``items`` when the
    head is an :class:`~steps.Input` or a :class:`~steps.Merge`), fused steps, terminal.

    Gives the output partition (a list), the terminal's one result, or for a split or a
    shared scan a list of :func:`steps.outputs_of` results. Raises StageFailure."""
    head = _HEADS.get(type(segment.head))
    if head is None:
        raise UnknownStep(f"no handler for head {type(segment.head).__name__}")
    items = head(segment.head, items, partition, slots)
    if segment.terminal is None:
        for step in segment.steps:
            items = run_elementwise(step, items, partition, slots)
        return _output(items)
    return run_chain(segment.steps, segment.terminal, items, partition, slots)


def run_merge(segment: s.Segment, index: int, records: list, slots: Slots = NO_SLOTS):
    """Merge task ``index`` of ``segment`` (its head a :class:`~steps.Merge`) over the
    shuffle's ``(side, source partition, bucket)`` records: one partition, as
    :func:`run_segment` gives it, or for a grouped merge (``groups``) every partition of
    group ``index`` in order, each merged from its own bucket of each source's group
    and run through the segment as an ungrouped merge task would, their outputs laid
    one after another (:func:`steps.task_outputs` of them)."""
    head = segment.head
    if head.groups is None:
        return run_segment(segment, index, records, slots)
    first, end = s.group_bounds(head.k, head.groups)[index]
    out = []
    for partition in range(first, end):
        place = partition - first
        mine = [(side, source, group[place]) for side, source, group in records if place in group]
        result = run_segment(segment, partition, mine, slots)
        if s.several(segment.terminal):
            out.extend(result)
        else:
            out.append(result)
    return out


def run_chain(steps: Sequence[s.Elementwise], terminal, items, partition: int, slots: Slots = NO_SLOTS):
    """Element-wise ``steps``, then ``terminal``, over one partition's ``items``.

    The counting idiom, a last ``map`` that is exactly ``return x, c`` feeding a
    ``reduce_by_key`` with addition, is counted by :func:`semantics.count_pairs` in C
    without calling the map per element: the result is the one the steps would give."""
    if steps and _counts_pairs(steps[-1], terminal):
        *before, pairing = steps
        for step in before:
            items = run_elementwise(step, items, partition, slots)
        c = semantics.constant_pair(resolve(pairing.fn.module, pairing.fn.attr))
        counted = semantics.count_pairs(batches.rows(items), c)
        if counted is not None:
            return _handed(terminal, _plain(terminal.node, partition,
                                            lambda: semantics.shuffle_buckets(counted, terminal.k, terminal.how)))
        steps = [pairing]  # an element that is not hashable: the general path gives its error
    for step in steps:
        items = run_elementwise(step, items, partition, slots)
    return run_terminal(terminal, items, partition, slots)


def _counts_pairs(step: s.Elementwise, terminal) -> bool:
    """Whether ``step`` into ``terminal`` is the counting idiom :func:`run_chain` counts."""
    if not (isinstance(terminal, s.Split) and terminal.how == "reduce_by_key" and step.kind == "map"
            and step.fn is not None and step.pool is None and not step.bindings and step.batch is None):
        return False
    try:
        return (semantics.is_addition(resolve(terminal.fn.module, terminal.fn.attr))
                and semantics.constant_pair(resolve(step.fn.module, step.fn.attr)) is not None)
    except Exception:  # a function that cannot be found: the general path reports it where it always did
        return False


# ---- finishers ---------------------------------------------------------------------------------------


def run_finisher(step, partials: Sequence):
    """A task that combines per-partition results (given in partition order)."""
    if isinstance(step, s.Combine):
        fn = resolve(step.fn.module, step.fn.attr)
        result = attempt(step.node, None, step.policy, lambda: semantics.combine_group(fn, partials))
        if step.final and result is semantics.EMPTY:
            raise StageFailure(step.node, None, "plain", "`reduce` over an empty collection has no value",
                               hint="filter less, or give the reduction an initial element in the data")
        return result
    if isinstance(step, s.CountTotal):
        return sum(partials)
    if isinstance(step, s.Written):
        return [name for name in partials if name is not None]
    if isinstance(step, s.TopMerge):
        by = resolve(step.by.module, step.by.attr) if step.by else None
        return attempt(step.node, None, s.Policy(), lambda: semantics.top_merge(list(partials), step.n, by, step.order))
    handler = _FINISHERS.get(type(step))
    if handler is not None:
        return handler(step, partials)
    raise UnknownStep(f"no handler for {type(step).__name__}")


# ---- ordering, sampling and indexing ---------------------------------------------------------------


def _take(step: s.TakePartial, items, partition: int, slots: Slots):
    return _plain(step.node, partition, lambda: semantics.take_partial(list(items), step.n, step.order))


def _head_sort_run(step: s.SortRun, items, partition: int, slots: Slots):
    items = batches.rows(items)
    if step.by is None:  # no user code: a record that is not a pair gets pipec's message
        return _plain(step.node, partition, lambda: semantics.sort_run(items, None, step.by_element, step.order))
    by = resolve(step.by.module, step.by.attr)
    return attempt(step.node, partition, step.policy,
                   lambda: semantics.sort_run(items, by, step.by_element, step.order))


def _sort_sample(step: s.SortSample, items, partition: int, slots: Slots):
    return semantics.run_sample(items, step.k)


def _head_positioned(step: s.Positioned, items, partition: int, slots: Slots):
    items = batches.rows(items)
    start = slots.value(step.offsets)[partition]
    if step.how == "zip":
        return semantics.zip_part(items, start)
    if step.how == "sample":
        try:
            fraction, seed = semantics.check_fraction(step.fraction), semantics.check_seed(step.seed)
        except ValueError as exc:
            raise StageFailure(step.node, None, "plain", str(exc)) from None
        return semantics.sample_part(items, start, fraction, seed)
    raise UnknownStep(f"positioned {step.how!r}")


_HEADS.update({s.Positioned: _head_positioned, s.SortRun: _head_sort_run})
_TERMINALS.update({s.TakePartial: _take, s.SortSample: _sort_sample})

_FINISHERS = {
    s.TakeMerge: lambda step, partials: semantics.take_merge(list(partials), step.n, step.order),
    s.SortSplitters: lambda step, partials: semantics.sort_splitters(list(partials), step.k, step.width),
    s.Offsets: lambda step, partials: semantics.offsets(list(partials)),
}
