"""The physical plan's vocabulary: what one task does to one partition, as plain data.

A *segment* is the work of one engine task per partition (a Dask key, a Ray task, one
``mapPartitionsWithIndex`` pass on Spark): a **head** that makes the partition's items
(read them from the input, cut a range, read a file's share, call a sharded source, or
merge the shuffle buckets meant for this partition), the **fused element-wise steps**,
and a **terminal** (the per-partition half of a reduction, a count, a top or a shuffle
split; none when the partition itself is the output). The values and actor handles a
step reads arrive as numbered **slots** beside the input, so a segment pickles small
and never holds a function object: functions are named by module and attribute and
resolved inside the task, which is how building a plan imports no user code.

Every class is frozen and pickles by value; workers import this module, so it imports
nothing heavy (no pydantic, no networkx, no engine). What the steps *do* lives in
:mod:`pipec.backends.runtime.interpreter`, the one worker-side interpreter.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Fn:
    """A user function (or class) named by module and attribute."""

    module: str
    attr: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.attr}"


@dataclass(frozen=True)
class Policy:
    """A stage's fault-tolerance options as the interpreter applies them: user code is
    tried ``retries + 1`` times (once when ``effectful``), each try cut at ``timeout``."""

    retries: int = 0
    timeout: float | None = None
    effectful: bool = False

    @property
    def tries(self) -> int:
        return 1 if self.effectful else self.retries + 1


# ---- what a step reads beside its input -------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    """A literal binding (``with n = 3``)."""

    value: Any


@dataclass(frozen=True)
class Slot:
    """A value computed elsewhere (a reduction, a parameter, a broadcast), handed to the
    task as its ``index``-th slot; the engine decides how it travels."""

    index: int
    node: str


@dataclass(frozen=True)
class Handle:
    """An actor handle (``with server = ps``) in slot ``index``: the function gets a proxy
    whose method calls block and return the actor's answers. ``rounds`` are the indices
    of the loop rounds the stage runs in (filled in when the task is submitted): with the
    stage, the partition and the call's position in the task they make each call's
    idempotency key, the same when the task runs again."""

    index: int
    actor: str
    rounds: tuple = ()


Binding = Lit | Slot | Handle


# ---- heads: how a task gets its partition ------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """The partition arrives as the task's input (a key, an object ref, an RDD partition)."""

    node: str


@dataclass(frozen=True)
class RangeSlice:
    """Partition i of ``range(n)`` cut ``k`` ways: items ``[i*n//k, (i+1)*n//k)``."""

    node: str
    n: int
    k: int


@dataclass(frozen=True)
class ReadText:
    """Partition i of a text file's lines cut ``k`` ways. With ``index`` (a slot holding
    the file's line index) the task decodes only its own bytes."""

    node: str
    path: str
    k: int
    index: int | None = None


@dataclass(frozen=True)
class ReadJsonl:
    """Partition i of a JSON-lines file's values cut ``k`` ways."""

    node: str
    path: str
    k: int


@dataclass(frozen=True)
class ReadFiles:
    """Partition i of a file source: the contiguous run of ``pieces`` that is group i of
    ``k`` (see :mod:`pipec.backends.runtime.datasets`). A piece is ``(file URL, row group
    or None)``, listed by the driver from metadata only. ``format`` is ``text``,
    ``jsonl``, ``parquet`` or ``csv``; ``options`` are the reader's ``(name, value)``
    pairs (``columns``, ``header``, ``delimiter``). A table (Parquet, CSV) stays a table
    when ``columnar`` (every reader of it takes one), else it becomes rows (dicts).
    ``types``: a CSV dataset's ``(column, pyarrow type)`` pairs, inferred once by the
    driver from the first file, so every task reads its own files with the same types."""

    node: str
    format: str
    pieces: tuple
    k: int
    options: tuple = ()
    columnar: bool = False
    types: tuple | None = None


@dataclass(frozen=True)
class Sharded:
    """A callable source called once per partition, on the worker, with ``partition=i``
    and ``partitions=k``."""

    node: str
    fn: Fn
    args: tuple = ()
    kwargs: tuple = ()  # (name, value) pairs
    k: int = 1
    policy: Policy = Policy()


@dataclass(frozen=True)
class Merge:
    """The reduce side of a shuffle: the buckets meant for this partition from every
    source partition, merged in source-partition order (a join's left side first).

    ``how`` is ``reduce_by_key`` (``fn`` combines values), ``group_by_key``,
    ``distinct``, ``join`` or ``sort`` (one key range of a sort, from every run's piece
    of it: semantics.range_merge). The input is a list of ``(side, source partition, bucket)``
    records in any order (the shuffle's order); the merge puts them in order first.

    With ``groups`` the shuffle's ``k`` buckets are merged by ``groups`` tasks (see
    :func:`group_bounds`): task j merges the contiguous run of partitions
    ``group_bounds(k, groups)[j]``, each one as an ungrouped merge would and through the
    rest of the segment, and gives their outputs one after another; its input records
    carry each source's group of buckets, ``(side, source partition, {place: bucket})``
    (an empty bucket left out: see :func:`grouped`)."""

    node: str
    how: str
    fn: Fn | None = None
    policy: Policy = Policy()
    k: int | None = None
    groups: int | None = None


Head = Input | RangeSlice | ReadText | ReadJsonl | ReadFiles | Sharded | Merge


# ---- element-wise steps ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Elementwise:
    """``map``, ``flat_map``, ``filter``, ``map_batches`` or ``map_values`` of one stage.
    ``fn`` is None for a stage served by an actor pool (the engine supplies the member's
    bound method). ``batch`` is the form a ``map_batches ... as`` stage hands over
    (``pandas``, ``arrow``, ``numpy``); its output stays a table when ``columnar``."""

    node: str
    kind: str
    fn: Fn | None
    bindings: tuple[tuple[str, Binding], ...] = ()
    policy: Policy = Policy()
    pool: str | None = None
    method: str | None = None
    batch: str | None = None
    columnar: bool = False

    @property
    def callee(self) -> str:
        return f"{self.pool}.{self.method}" if self.pool is not None else self.fn.dotted


# ---- terminals: the per-partition half of what reads the partition ----------------------------------


@dataclass(frozen=True)
class Fold:
    """The partition's left fold by ``fn`` (EMPTY when it is empty): a reduction's partial."""

    node: str
    fn: Fn
    policy: Policy = Policy()


@dataclass(frozen=True)
class Count:
    """The partition's length."""

    node: str


@dataclass(frozen=True)
class TopPartial:
    """The partition's own top ``n`` by ``by``, in its canonical ``order``."""

    node: str
    n: int
    by: Fn | None
    order: str | None


@dataclass(frozen=True)
class Split:
    """The map side of a shuffle: the partition cut into ``k`` buckets by the stable key
    hash (by element for ``distinct``); ``reduce_by_key`` combines per key first. For a
    sort (``how`` ``range``) the partition is a sorted run, cut into ``k`` key ranges at
    the splitters in slot ``splitters`` (see semantics.range_split). With ``groups`` the
    buckets leave as that many outputs, output j the non-empty buckets of merge group j by
    their place in it (see :func:`grouped`); without, one output per bucket."""

    node: str
    how: str
    k: int
    fn: Fn | None = None
    policy: Policy = Policy()
    splitters: int | None = None
    groups: int | None = None


@dataclass(frozen=True)
class Branches:
    """A shared scan: one pass over the partition feeds several consumers, each with its
    own element-wise steps and terminal. ``keep`` also outputs the partition itself."""

    node: str
    branches: tuple[tuple[tuple[Elementwise, ...], "Terminal"], ...]
    keep: bool = False


@dataclass(frozen=True)
class WritePart:
    """A dataset sink's part: the partition written as one ``format`` file (``parquet``,
    ``csv``) into the sink's ``staging`` folder; gives the part's name (None: empty)."""

    node: str
    format: str
    staging: str


Terminal = Fold | Count | TopPartial | Split | Branches | WritePart


@dataclass(frozen=True)
class Segment:
    """One task per partition: ``head``, then ``steps``, then ``terminal`` (None: the
    partition is the output). ``nodes`` are the IR nodes it computes, in order."""

    name: str
    head: Head
    steps: tuple[Elementwise, ...] = ()
    terminal: Terminal | None = None
    nodes: tuple[str, ...] = field(default=())


# ---- combining partials (one task each, not per partition) --------------------------------------------


@dataclass(frozen=True)
class Combine:
    """One node of a reduction tree: partials in partition order (FAN_IN at most) folded
    by ``fn``. The ``final`` node refuses an empty reduction."""

    node: str
    fn: Fn
    final: bool = False
    policy: Policy = Policy()


@dataclass(frozen=True)
class CountTotal:
    """The sum of the partitions' lengths."""

    node: str


@dataclass(frozen=True)
class TopMerge:
    """The global top ``n`` from the partitions' candidates, given in partition order."""

    node: str
    n: int
    by: Fn | None
    order: str | None


@dataclass(frozen=True)
class Written:
    """The part files a dataset sink's tasks wrote, in partition order (empty ones left out)."""

    node: str


Finisher = Combine | CountTotal | TopMerge | Written


def outputs_of(terminal: Terminal | None) -> int:
    """How many objects one task of a segment with ``terminal`` gives for one partition:
    one per bucket (or per group of buckets) for a split, the partition plus each
    branch's outputs for a shared scan, else one."""
    if isinstance(terminal, Split):
        return terminal.groups or terminal.k
    if isinstance(terminal, Branches):
        return int(terminal.keep) + sum(outputs_of(t) for _, t in terminal.branches)
    return 1


def several(terminal: Terminal | None) -> bool:
    """Whether a partition's result under ``terminal`` is a list of outputs (a split's,
    a shared scan's), not one object."""
    return isinstance(terminal, (Split, Branches))


# ---- grouped merges: a shuffle's k partitions merged by fewer tasks -----------------------------


def group_bounds(k: int, groups: int) -> list[tuple[int, int]]:
    """The partitions each of ``groups`` merge tasks makes of a ``k``-way shuffle:
    contiguous runs ``[j*k//groups, (j+1)*k//groups)``, as ``range`` cuts its blocks."""
    return [(j * k // groups, (j + 1) * k // groups) for j in range(groups)]


def grouped(buckets: dict[int, Any], k: int, groups: int) -> list[dict[int, Any]]:
    """A split's non-empty buckets (by output partition, of ``k``) as ``groups`` outputs:
    per merge group, its buckets by their place in the group. An empty bucket is left
    out, so a split of a wide shuffle hands over (and a merge reads) only what it holds:
    a merge group's 64 buckets, almost all empty, were a list of 64 lists, which Ray
    serializes field by field (60 ms for a merge's 1,024 of them against 20 as dicts)."""
    starts = [a for a, _ in group_bounds(k, groups)]
    out: list[dict[int, Any]] = [{} for _ in range(groups)]
    for partition in sorted(buckets):
        j = bisect.bisect_right(starts, partition) - 1
        out[j][partition - starts[j]] = buckets[partition]
    return out


def task_outputs(segment: "Segment", index: int) -> int:
    """How many objects task ``index`` of ``segment`` gives: a grouped merge's task one
    partition's worth (:func:`outputs_of`) for every partition of its group, any other
    task one partition's worth."""
    head = segment.head
    width = outputs_of(segment.terminal)
    if isinstance(head, Merge) and head.groups is not None:
        a, b = group_bounds(head.k, head.groups)[index]
        return (b - a) * width
    return width


# ---- ordering, sampling and indexing (positions in collection order) ----------------------------


@dataclass(frozen=True)
class TakePartial:
    """Terminal: the partition's own first ``n`` in its canonical ``order``."""

    node: str
    n: int
    order: str | None


@dataclass(frozen=True)
class TakeMerge:
    """Finisher: the collection's first ``n`` from the partitions' candidates, in partition order."""

    node: str
    n: int
    order: str | None


@dataclass(frozen=True)
class SortRun:
    """Head: the partition (arriving as for :class:`Input`) sorted stably into its run of
    (sort key, item) pairs: by ``by`` (or the element when ``by_element``; neither:
    collection order only), ties by position in the input's canonical ``order`` (see
    semantics.sort_key). A head, so the run is a partition like any other on every
    engine: the sample and the range split read it as their input."""

    node: str
    by: Fn | None
    by_element: bool
    order: str | None
    policy: Policy = Policy()


@dataclass(frozen=True)
class SortSample:
    """Terminal: the evenly spaced keys of a sorted run that choose ``k`` key ranges,
    each with how many items it stands for (semantics.run_sample)."""

    node: str
    k: int


@dataclass(frozen=True)
class SortSplitters:
    """Finisher: the ``k - 1`` splitters of a sort from the runs' samples, given in
    partition order (semantics.sort_splitters); ``width``: the parts of a sort key."""

    node: str
    k: int
    width: int


@dataclass(frozen=True)
class Offsets:
    """Finisher: each partition's first global index, from the partitions' lengths."""

    node: str


@dataclass(frozen=True)
class Positioned:
    """Head: the partition arrives as the task's input (as for :class:`Input`) and its
    items get their global positions, which start at ``offsets[partition]`` (the list in
    slot ``offsets``). ``how`` is ``zip`` ((item, index) pairs) or ``sample`` (the items
    whose (``seed``, index) hash falls below ``fraction``). A head, not a terminal: the
    result is a partition, and element-wise steps may follow it."""

    node: str
    how: str
    offsets: int
    fraction: float | None = None
    seed: int | None = None


Head = Head | Positioned | SortRun
Terminal = Terminal | TakePartial | SortSample
Finisher = Finisher | TakeMerge | SortSplitters | Offsets


def pick(outputs, output: int, buckets: int | None = None):
    """One output of a task with several (``outputs``, see :func:`outputs_of`): output
    number ``output``, or with ``buckets`` (a split's) the list of that many from there."""
    return outputs[output] if buckets is None else list(outputs[output:output + buckets])
