"""The exact meaning of pipec's operations, shared by every backend.

Engines shuffle, combine and schedule in their own orders; a pipeline must still write
byte-identical sinks on all of them. Each backend therefore does the engine-specific
part (moving partitions, running tasks) and calls these functions for everything that
decides a result: how sources are cut into partitions, which partition a key goes to,
in which order partial results are combined, how keyed output is ordered, how values
are written as JSON. Pure Python, no engine imports: workers import this module too.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import math
import operator
import struct
from collections import Counter
from operator import itemgetter
from typing import Any, Callable, Iterable, Sequence

# Operators on values are part of these semantics, but the compiler folds constants with
# them and never imports the runtime, so they live in the compiler layer (a pure leaf).
from pipec.compiler.operators import OPERATORS as _OPERATORS, apply_operator  # noqa: F401

# Partial results are combined in groups of this many, by partition index, level by level.
FAN_IN = 8


class _Empty:
    """The partial of an empty partition: skipped when combining."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self):
        return (_Empty, ())

    def __repr__(self) -> str:
        return "EMPTY"


EMPTY = _Empty()


# ---- partitioning ---------------------------------------------------------------------------


def partition_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """Partition i of n items cut k ways holds items [i*n//k, (i+1)*n//k)."""
    return [partition_of(n, k, i) for i in range(k)]


def partition_of(n: int, k: int, i: int) -> tuple[int, int]:
    """The bounds of partition ``i`` alone (see :func:`partition_bounds`): a task reading
    one partition of 1,024 does not build all 1,024 (0.14 ms a task)."""
    return i * n // k, (i + 1) * n // k


def split(items: Sequence, k: int) -> list[list]:
    """Cut a sequence into k contiguous blocks by :func:`partition_bounds`."""
    return [list(items[a:b]) for a, b in partition_bounds(len(items), k)]


def _encode(x, out: list[bytes]) -> None:
    """A canonical byte encoding: equal keys give equal bytes in every process."""
    if hasattr(x, "item") and type(x).__module__ == "numpy" and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if x is None:
        out.append(b"n")
    elif isinstance(x, bool) or isinstance(x, int):
        out.append(b"i" + str(int(x)).encode())
    elif isinstance(x, float):
        if x.is_integer():
            out.append(b"i" + str(int(x)).encode())  # 1.0 == 1, so they share a partition
        else:
            out.append(b"f" + struct.pack("<d", x))
    elif isinstance(x, str):
        data = x.encode("utf-8", "surrogatepass")
        out.append(b"s" + str(len(data)).encode() + b":" + data)
    elif isinstance(x, bytes):
        out.append(b"b" + str(len(x)).encode() + b":" + x)
    elif isinstance(x, (tuple, list)):
        out.append(b"t" + str(len(x)).encode() + b"(")
        for item in x:
            _encode(item, out)
        out.append(b")")
    elif isinstance(x, frozenset):
        out.append(b"z(")
        for item in sorted(x, key=canonical_key):
            _encode(item, out)
        out.append(b")")
    else:
        out.append(b"r" + repr(x).encode("utf-8", "backslashreplace"))


# The stable hashes of int and str keys this process has computed, by key: a shuffle
# hashes the same keys in every partition (about 1.5 us each), a lookup costs a tenth of
# that. Only those two exact types: keys equal under ``==`` (1, 1.0, True, Decimal(1))
# may encode differently, and an int never equals a str, so one dict serves both.
# Bounded in count and in size (short strings only), so a shuffle over millions of
# distinct keys, or over long ones, does not keep them all.
_HASHED: dict = {}
HASHED_UPTO = 1 << 16
HASHED_STR_UPTO = 256


def stable_hash(key) -> int:
    """A 64-bit hash of ``key`` that is the same in every process (unlike ``hash``)."""
    kind = type(key)
    cacheable = kind is int and -(1 << 63) <= key < 1 << 64 or kind is str and len(key) <= HASHED_STR_UPTO
    if cacheable:
        found = _HASHED.get(key)
        if found is not None:
            return found
    parts: list[bytes] = []
    _encode(key, parts)
    hashed = int.from_bytes(hashlib.blake2b(b"".join(parts), digest_size=8).digest(), "little")
    if cacheable and len(_HASHED) < HASHED_UPTO:
        _HASHED[key] = hashed
    return hashed


def key_partition(key, k: int) -> int:
    """The output partition of a record with ``key`` among ``k``."""
    return stable_hash(key) % k


def canonical_key(x):
    """A sort key that orders any mix of keys the same way everywhere."""
    if hasattr(x, "item") and type(x).__module__ == "numpy" and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if x is None:
        return (0,)
    if isinstance(x, (bool, int, float)):
        return (1, x) if not (isinstance(x, float) and math.isnan(x)) else (1, math.inf, 1)
    if isinstance(x, str):
        return (2, x)
    if isinstance(x, bytes):
        return (3, x)
    if isinstance(x, (tuple, list)):
        return (4, tuple(canonical_key(i) for i in x))
    return (9, type(x).__name__, repr(x))


def _record_key(record, what: str):
    try:
        key, _ = record
    except (TypeError, ValueError):
        raise TypeError(f"{what} needs (key, value) pairs, got {type(record).__name__} {record!r:.60}") from None
    return key


# ---- reductions -----------------------------------------------------------------------------


def fold(fn: Callable, items: Iterable):
    """Left fold of one partition; EMPTY for an empty one."""
    items = iter(items)
    first = next(items, EMPTY)
    # functools.reduce is the same left fold, its loop in C.
    return first if first is EMPTY else functools.reduce(fn, items, first)


def combine_group(fn: Callable, group: Iterable):
    """Fold one group of partials left to right, skipping EMPTY ones (EMPTY if all are)."""
    return fold(fn, (p for p in group if p is not EMPTY))


def combine_partials(fn: Callable, partials: Sequence):
    """Combine per-partition partials level by level: consecutive groups of FAN_IN (by
    partition index; an empty partition keeps its place in its group), each folded with
    :func:`combine_group`. The grouping depends only on the number of partitions, so an
    engine can build the tree of combine tasks before anything runs."""
    level = list(partials)
    while len(level) > 1:
        level = [combine_group(fn, level[i:i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
    return level[0] if level else EMPTY


def shuffle_buckets(records: Iterable, k: int, what: str) -> dict[int, list]:
    """Bucket one partition's (key, value) records among k outputs, keeping their order:
    only the buckets that get a record, by output index. Sparse because a wide shuffle
    of a combined partition fills few of its buckets (benchmarks/mapreduce.pipe at 1,024
    partitions: about 50 of 1,024), and making the empty ones cost more than the rest."""
    return _bucketed(records, k, lambda record: _record_key(record, what))


def _bucketed(items: Iterable, k: int, key: Callable | None = None) -> dict[int, list]:
    """``items`` among k buckets by the stable hash of each one's key (``key(item)``, or
    the item itself), in order: only the buckets that get one, by output index."""
    buckets: dict[int, list] = {}
    for item in items:
        index = key_partition(item if key is None else key(item), k)
        bucket = buckets.get(index)
        if bucket is None:
            buckets[index] = [item]
        else:
            bucket.append(item)
    return buckets


def dense(buckets: dict[int, list], k: int) -> list[list]:
    """Sparse buckets (as :func:`shuffle_buckets` gives them) as all ``k``, empty ones []."""
    return [buckets.get(index) or [] for index in range(k)]


def shuffle_split(records: Iterable, k: int, what: str) -> list[list]:
    """Bucket one partition's (key, value) records into k outputs, keeping their order."""
    return dense(shuffle_buckets(records, k, what), k)


def reduce_by_key_partial(fn: Callable, records: Iterable) -> list[tuple]:
    """Map-side combine of one partition: one (key, partial) per key, in first-seen order."""
    records = records if isinstance(records, (list, tuple)) else list(records)
    if is_addition(fn):
        counted = _counted(records)
        if counted is not None:
            return counted
    acc: dict = {}
    get = acc.get
    try:
        for key, value in records:
            seen = get(key, EMPTY)  # one lookup, not two: this loop runs once per record
            acc[key] = value if seen is EMPTY else fn(seen, value)
    except (TypeError, ValueError):
        for record in records:  # a record that is not a pair gets the clear message
            _record_key(record, "reduce_by_key")
        raise
    return list(acc.items())


# ---- counting at C speed ------------------------------------------------------------------------
#
# The counting idiom (`map` to (key, 1), then `reduce_by_key` with addition) folds one
# Python call per record. When the reducer is addition and every record's value is the
# same int c, the fold of n records of a key is exactly n * c, in the order the keys
# were first seen: collections.Counter computes that in C. Whatever does not fit (another
# reducer, a bool, a float, a record that is not a pair, an unhashable key) takes the
# general loop, which gives the same result or the same error as before.


def _addition(a, b):
    return a + b


def _pair_with_constant(x):
    return x, 1


def _instructions(fn) -> list[tuple[str, int | None]] | None:
    """The bytecode of a plain Python function with positional parameters only (no
    defaults, closure, globals or ``*args``), as (opname, arg) pairs; None for anything
    else (a builtin, a lambda with defaults, a bound method...)."""
    import dis
    import inspect
    import types
    if not isinstance(fn, types.FunctionType) or fn.__defaults__ or fn.__kwdefaults__ or fn.__closure__:
        return None
    code = fn.__code__
    if code.co_kwonlyargcount or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS) or code.co_names:
        return None
    return [(i.opname, i.arg) for i in dis.get_instructions(fn)]


@functools.lru_cache(maxsize=256)
def _is_addition_code(fn) -> bool:
    mine = _instructions(fn)
    return mine is not None and fn.__code__.co_argcount == 2 and mine == _instructions(_addition)


def is_addition(fn: Callable) -> bool:
    """Whether ``fn(a, b)`` is ``a + b``: :func:`operator.add`, or a function whose code
    is exactly ``return a + b`` of its two parameters (names, annotations and a
    docstring aside)."""
    if fn is operator.add:
        return True
    try:
        return _is_addition_code(fn)
    except TypeError:  # not hashable: not a plain function either
        return False


@functools.lru_cache(maxsize=256)
def _constant_pair_code(fn) -> tuple[bool, Any]:
    mine = _instructions(fn)
    shape = _instructions(_pair_with_constant)
    if mine is None or fn.__code__.co_argcount != 1 or [op for op, _ in mine] != [op for op, _ in shape]:
        return False, None
    if mine != [(op, arg) if op != "LOAD_CONST" else (op, mine[i][1]) for i, (op, arg) in enumerate(shape)]:
        return False, None  # the same instructions, on other operands (not x itself)
    const = next(arg for op, arg in mine if op == "LOAD_CONST")
    return True, fn.__code__.co_consts[const]


def constant_pair(fn: Callable) -> int | None:
    """The int c when ``fn(x)`` is exactly ``return x, c`` (c an int constant, not a
    bool), else None: a `map` that pairs each element with a count."""
    try:
        found, c = _constant_pair_code(fn)
    except TypeError:
        return None
    return c if found and type(c) is int else None


def count_pairs(elements: Sequence, c: int) -> list[tuple] | None:
    """``reduce_by_key`` with addition over ``[(x, c) for x in elements]``: (x, n * c) in
    first-seen order; None when an element is not hashable (the general loop then
    raises the error it always raised)."""
    try:
        counts = Counter(elements)
    except TypeError:
        return None
    return list(counts.items()) if c == 1 else [(key, n * c) for key, n in counts.items()]


def _counted(records: Sequence) -> list[tuple] | None:
    """The map-side combine with addition when every record is a pair (key, c) with the
    same int c (see above); None when the records do not all have that shape."""
    if not records or not set(map(type, records)) <= {tuple, list}:
        return None
    try:
        if set(map(len, records)) != {2}:
            return None
        values = list(map(itemgetter(1), records))
    except TypeError:  # a record without a length or an index: the general loop says so
        return None
    if set(map(type, values)) != {int}:
        return None
    distinct = set(values)
    if len(distinct) != 1:
        return None
    return count_pairs(list(map(itemgetter(0), records)), distinct.pop())


def reduce_by_key_merge(fn: Callable, parts: Sequence[Iterable]) -> list[tuple]:
    """Reduce side: ``parts`` are the buckets for one output partition, in source
    partition order; partials of a key are folded in that order. Sorted by key."""
    acc: dict = {}
    get = acc.get
    for part in parts:
        for key, value in part:
            seen = get(key, EMPTY)
            acc[key] = value if seen is EMPTY else fn(seen, value)
    return sort_records(acc.items())


def group_merge(parts: Sequence[Iterable]) -> list[tuple]:
    """Each key with its values in input order (source partition, then position)."""
    acc: dict = {}
    for part in parts:
        for record in part:
            key = _record_key(record, "group_by_key")
            acc.setdefault(key, []).append(record[1])
    return sort_records(acc.items())


def join_merge(left_parts: Sequence[Iterable], right_parts: Sequence[Iterable]) -> list[tuple]:
    """Inner join of one output partition: (key, (a, b)) sorted by key, pairs in input order."""
    left = dict(group_merge(left_parts))
    right = dict(group_merge(right_parts))
    out = []
    for key in sorted(left.keys() & right.keys(), key=canonical_key):
        for a in left[key]:
            for b in right[key]:
                out.append((key, (a, b)))
    return out


def distinct_buckets(items: Iterable, k: int) -> dict[int, list]:
    """Bucket one partition's items among k outputs by their key hash, keeping their
    order: only the buckets that get an item, by output index (see :func:`shuffle_buckets`)."""
    return _bucketed(items, k)


def distinct_split(items: Iterable, k: int) -> list[list]:
    return dense(distinct_buckets(items, k), k)


def distinct_merge(parts: Sequence[Iterable]) -> list:
    """The distinct elements of one output partition, in canonical order."""
    seen: dict = {}
    for part in parts:
        for item in part:
            parts_ = []
            _encode(item, parts_)
            seen.setdefault(b"".join(parts_), item)
    return sorted(seen.values(), key=canonical_key)


def sort_records(records: Iterable) -> list[tuple]:
    return sorted(records, key=lambda kv: canonical_key(kv[0]))


def ordered(items: list, order: str | None) -> list:
    """A collected collection in its canonical order: keyed output sorted by key."""
    if order == "key":
        return sort_records(items)
    if order == "element":
        return sorted(items, key=canonical_key)
    return items


def top(items: Sequence, n: int, by: Callable | None):
    """The n largest items by ``by`` (or themselves); ties keep their collected order."""
    keyfn = by if by is not None else (lambda x: x)
    return sorted(items, key=keyfn, reverse=True)[: max(0, n)]


def top_partial(items: list, n: int, by: Callable | None, order: str | None) -> list:
    """One partition's candidates for :func:`top`: its own top n in its canonical order.

    ``top_merge`` of the partitions' candidates (in partition order) equals ``top`` of the
    whole collected collection: every item of the global top n is in its partition's top
    n, and the stable sorts keep equal items in their collected order."""
    return top(ordered(items, order), n, by)


def top_merge(candidates: Sequence[list], n: int, by: Callable | None, order: str | None) -> list:
    """The global top n from the per-partition candidates, given in partition order."""
    return top(ordered([x for part in candidates for x in part], order), n, by)


# ---- ordering, sampling and indexing ------------------------------------------------------
# Positions are positions in collection order: what `collect` shows (a keyed result
# sorted by key, anything else partition after partition). A planned backend brings a
# keyed result into that order first (a sort with neither `by` nor `by_element`: by
# collection order only), so an element's position never depends on how many
# partitions hold the collection.


def take(items: Sequence, n: int) -> list:
    """The first n items (all of them when there are fewer; none for n <= 0)."""
    return list(items[: max(0, n)])


def take_partial(items: list, n: int, order: str | None) -> list:
    """One partition's candidates for :func:`take`: its own first n in canonical order.

    ``take_merge`` of the candidates (in partition order) is the first n of the whole
    collected collection: an item among the global first n is among its partition's
    first n, and the stable sorts keep equal items in their collected order."""
    return take(ordered(items, order), n)


def take_merge(candidates: Sequence[list], n: int, order: str | None) -> list:
    """The first n of the collection from the per-partition candidates, in partition order."""
    return take(ordered([x for part in candidates for x in part], order), n)


def sort_key(x, by: Callable | None, by_element: bool, order: str | None) -> tuple:
    """Where ``x`` goes in a sort: by ``by(x)`` (or the element itself when
    ``by_element``), in canonical order (:func:`canonical_key`: a total order over any
    mix of values), then by its position in collection order. Items are always sorted
    stably in partition order, so the position needs spelling out only for a keyed
    result, whose collection order is by key (``order`` "key") or by element
    ("element"); records of one key share a partition, so their own order stands."""
    key = (canonical_key(by(x)),) if by is not None else (canonical_key(x),) if by_element else ()
    if order == "key":
        return key + (canonical_key(_record_key(x, "sort_by")),)
    if order == "element":
        return key + (canonical_key(x),)
    return key


def sort_partial(items: Iterable, by: Callable | None, by_element: bool, order: str | None) -> tuple:
    """One partition sorted stably by :func:`sort_key`, as a *run*: ``(kinds, pairs)``,
    ``pairs`` being (key, item) with the key as ``by`` gave it (``by`` runs once per
    element; the merge compares the keys without calling it again; a tuple of the parts
    when the collection order adds a tiebreak), ``kinds`` per part what kinds of value
    it held. A part that is all numbers (no NaN), or all strings, compares as it is, in
    the very order :func:`canonical_key` gives it and many times faster; any other part
    is compared by its canonical key."""
    items = items if isinstance(items, list) else list(items)
    columns = []
    if by is not None:
        columns.append([by(x) for x in items])
    elif by_element:
        columns.append(items)
    if order == "key":
        try:
            columns.append([k for k, _ in items])
        except (TypeError, ValueError):
            for x in items:  # a record that is not a pair gets the clear message
                _record_key(x, "sort_by")
            raise
    elif order == "element":
        columns.append(items)
    kinds = tuple(_kinds(column) for column in columns)
    keys = columns[0] if len(columns) == 1 else list(zip(*columns)) if columns else [()] * len(items)
    pairs = list(zip(keys, items))
    pairs.sort(key=_comparing(kinds))
    return kinds, pairs


# ---- the range-partitioned sort: no task holds more than one key range ---------------------
# A sort of k partitions gives k partitions, partition r holding the r-th key range:
# each partition sorted into a *run* of (key, item) pairs (sort_run); from each run
# evenly spaced keys, weighted by how many items each stands for (run_sample); from
# all of them, in canonical order, k - 1 splitters at the weighted quantiles
# (sort_splitters); each run cut at the splitters (range_split), an item going to the
# range of the first splitter not below its key, so equal keys share a range; each
# range merged from the runs' pieces in partition order (range_merge), stably. Every
# step is a function of its inputs only: the same splitters, the same partitions on
# every backend and in every run.

# Sampled keys per run: 20 per output range, but about 100,000 in all at most (at least
# 20 per run), so the task choosing the splitters stays small for any partition count.
SAMPLES_PER_RANGE, SAMPLES_IN_ALL = 20, 100_000


def sort_width(by: bool, by_element: bool, order: str | None) -> int:
    """How many parts a sort key has (see :func:`sort_key`): the key itself, and the
    position in collection order for a keyed (or distinct) input."""
    return int(by or by_element) + int(order is not None)


def sort_run(items: Iterable, by: Callable | None, by_element: bool, order: str | None) -> list[tuple]:
    """One partition sorted stably by :func:`sort_key`: its run of (key, item) pairs (see
    :func:`sort_partial`; ``by`` runs once per element)."""
    return sort_partial(items, by, by_element, order)[1]


def samples_per_run(k: int) -> int:
    """How many keys :func:`run_sample` takes from each of ``k`` runs (at most)."""
    return min(SAMPLES_PER_RANGE * k, max(SAMPLES_PER_RANGE, SAMPLES_IN_ALL // max(1, k)))


def run_sample(run: Sequence[tuple], k: int) -> list[tuple]:
    """The keys of a sorted run that choose the ``k`` ranges: the run cut into s equal
    blocks (s = :func:`samples_per_run`, or its length if shorter), the middle key of
    each with the block's length, in order."""
    m = len(run)
    n = min(m, samples_per_run(k))
    bounds = [j * m // n for j in range(n + 1)] if n else [0]
    return [(run[(a + b) // 2][0], b - a) for a, b in zip(bounds, bounds[1:])]


def _columns(keys: list, width: int) -> list[list]:
    if width == 1:
        return [keys]
    return [list(column) for column in zip(*keys)] if keys else [[] for _ in range(width)]


def _key_kinds(pairs: Sequence[tuple], width: int) -> tuple:
    return tuple(_kinds(column) for column in _columns([key for key, _ in pairs], width))


def _key_order(kinds: tuple) -> Callable:
    """What a sort key is compared as, given the kinds of each part (see _comparing)."""
    plain = [kind in (_NUMBER, _STRING) for kind in kinds]
    if all(plain):
        return _itself
    if len(plain) == 1:
        return canonical_key
    return lambda key: tuple(p if raw else canonical_key(p) for p, raw in zip(key, plain))


def _itself(x):
    return x


def sort_splitters(samples: Sequence[list], k: int, width: int) -> tuple:
    """The ``k - 1`` splitters of a sort from the runs' samples (given in partition
    order): ``(width, kinds, keys)``, the keys in canonical order, splitter r the first
    sampled key at which the samples' weight reaches r/k of their total (no splitters
    when every run is empty)."""
    entries = [entry for sample in samples for entry in sample]
    canonical = _key_order((_OTHER,) * width)
    entries.sort(key=lambda entry: canonical(entry[0]))  # stable: equal keys in partition order
    total = sum(weight for _, weight in entries)
    keys, seen, i = [], 0, 0
    if entries:
        for r in range(1, k):
            while i < len(entries) and seen * k < r * total:
                seen += entries[i][1]
                i += 1
            keys.append(entries[max(i, 1) - 1][0])
    return width, _key_kinds([(key, None) for key in keys], width), keys


def range_split(run: Sequence[tuple], splitters: tuple, k: int) -> list:
    """A sorted run cut into ``k`` key ranges at the splitters: range r holds the keys
    above splitter r - 1 and up to splitter r. Each piece is ``(kinds, pairs)``, an
    empty one ``[]``; the cuts are found by bisection (the run is sorted already)."""
    width, kinds, keys = splitters
    if not run:
        return [[] for _ in range(k)]
    run_kinds = _key_kinds(run, width)
    key = _key_order(tuple(a | b for a, b in zip(run_kinds, kinds)) if keys else run_kinds)
    cuts = [bisect.bisect_left(run, key(splitter), key=lambda pair: key(pair[0])) for splitter in keys]
    bounds = [0, *cuts, len(run)]
    pieces = [(run_kinds, list(run[a:b])) if b > a else [] for a, b in zip(bounds, bounds[1:])]
    return pieces + [[] for _ in range(k - len(pieces))]


def range_merge(pieces: Sequence) -> list:
    """One key range of the sorted collection from the runs' pieces of it (given in
    partition order): one stable sort of their concatenation, a merge of sorted runs,
    so equal keys keep partition order, then position."""
    pieces = [piece for piece in pieces if piece]
    if not pieces:
        return []
    kinds = tuple(functools.reduce(lambda a, b: a | b, column, 0) for column in zip(*(k for k, _ in pieces)))
    pairs = [pair for _, part in pieces for pair in part]
    pairs.sort(key=_comparing(kinds))
    return [x for _, x in pairs]


def sorted_ranges(runs: Sequence[list], width: int) -> list[list]:
    """The partitions of a sort from its runs (one per input partition, in order), as
    the planned backends' tasks compute them: one per key range."""
    k = len(runs)
    splitters = sort_splitters([run_sample(run, k) for run in runs], k, width)
    pieces = [range_split(run, splitters, k) for run in runs]
    return [range_merge([p[r] for p in pieces]) for r in range(k)]


_NUMBER, _STRING, _OTHER = 1, 2, 4
_NUMBER_TYPES = frozenset((int, bool, float))


def _kinds(column: list) -> int:
    """What kinds of value ``column`` holds: numbers without NaN, strings, or other."""
    types = set(map(type, column))
    if not types:
        return 0
    if types <= _NUMBER_TYPES:
        return _OTHER if float in types and any(v != v for v in column) else _NUMBER
    return _STRING if types == {str} else _OTHER


def _comparing(kinds: tuple) -> Callable:
    """The sort key of a (key, item) pair, given what kinds of value each part holds."""
    plain = [kind in (_NUMBER, _STRING) for kind in kinds]
    if all(plain):
        return _first
    if len(plain) == 1:
        return lambda pair: canonical_key(pair[0])
    return lambda pair: tuple(p if raw else canonical_key(p) for p, raw in zip(pair[0], plain))


def _first(pair):
    return pair[0]


def sort_by(items: Iterable, by: Callable | None, by_element: bool, order: str | None) -> list:
    """The whole collection (gathered in partition order) sorted: :func:`range_merge` of one run."""
    return range_merge([sort_partial(items, by, by_element, order)])


def offsets(counts: Sequence[int]) -> list[int]:
    """The global index of each partition's first item, from the partitions' lengths."""
    out, total = [], 0
    for n in counts:
        out.append(total)
        total += n
    return out


def zip_part(items: Iterable, start: int) -> list[tuple]:
    """One partition's (item, global index) pairs; ``start`` is its first item's index."""
    return [(x, i) for i, x in enumerate(items, start)]


def check_fraction(fraction) -> float:
    """``fraction`` as a float in [0, 1], or a ValueError saying what is wrong."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"`sample` needs a fraction between 0 and 1, got {fraction!r}")
    return float(fraction)


def check_seed(seed) -> int:
    """``seed`` as an int, or a ValueError saying what is wrong."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`sample` needs an integer seed, got {seed!r}")
    return seed


def sample_hash(seed: int, index: int) -> int:
    """The 64-bit number that decides whether the item at global ``index`` is sampled:
    BLAKE2b with an 8-byte digest of the ASCII text ``pipec.sample:SEED:INDEX``, read as
    a little-endian unsigned integer. Plain text in, so any language can recompute it."""
    data = f"pipec.sample:{seed}:{index}".encode("ascii")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def sample_keep(seed: int, index: int, fraction: float) -> bool:
    """Whether ``sample(xs, fraction, seed)`` keeps the item at global ``index``: its
    :func:`sample_hash` is below ``fraction * 2**64`` (every item at 1, none at 0)."""
    return sample_hash(seed, index) < fraction * 18446744073709551616.0


def sample_part(items: Iterable, start: int, fraction: float, seed: int) -> list:
    """One partition's sampled items, in order; ``start`` is its first item's global index.
    The same test as :func:`sample_keep`, the hash of the common prefix computed once
    (2.5 times faster)."""
    limit = fraction * 18446744073709551616.0
    prefix = hashlib.blake2b(f"pipec.sample:{seed}:".encode("ascii"), digest_size=8)
    out = []
    for i, x in enumerate(items, start):
        h = prefix.copy()
        h.update(str(i).encode("ascii"))
        if int.from_bytes(h.digest(), "little") < limit:
            out.append(x)
    return out


class DuplicateKey(ValueError):
    """``collect_map`` met a key twice."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"`collect_map` found the key {self.key!r:.60} more than once"


def collect_map(records: Iterable) -> dict:
    """A dict of (key, value) records given in collection order, its keys in canonical
    order (:func:`canonical_key`). A key met twice is a :class:`DuplicateKey` (two keys
    count as one when they are equal in Python, as ``1`` and ``1.0`` are)."""
    out: dict = {}
    for record in records:
        key = _record_key(record, "collect_map")
        try:
            seen = key in out
        except TypeError:
            raise TypeError(f"collect_map needs keys a dict can hold, got {type(key).__name__} {key!r:.60}") from None
        if seen:
            raise DuplicateKey(key)
        out[key] = record[1]
    return {k: out[k] for k in sorted(out, key=canonical_key)}


# ---- writing results ----------------------------------------------------------------------


def to_jsonable(x: Any):
    """Plain JSON data: numpy arrays as lists, numpy scalars as numbers, tuples as lists."""
    module = type(x).__module__
    if module == "numpy" and hasattr(x, "tolist"):
        return to_jsonable(x.tolist())
    if isinstance(x, dict):
        # Keys in canonical order (numbers by value: 2 before 10), written as they come.
        return {k if isinstance(k, str) else json.dumps(to_jsonable(k)): to_jsonable(x[k])
                for k in sorted(x, key=canonical_key)}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(i) for i in x]
    if isinstance(x, (set, frozenset)):
        return [to_jsonable(i) for i in sorted(x, key=canonical_key)]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot write a {type(x).__name__} as JSON")


def render_sink(value, fmt: str, is_collection: bool) -> str:
    """The exact text a sink writes."""
    if fmt == "json":
        return json.dumps(to_jsonable(value), indent=2, allow_nan=True) + "\n"
    if fmt == "jsonl":
        items = value if is_collection or isinstance(value, (list, tuple)) else [value]
        return "".join(json.dumps(to_jsonable(i)) + "\n" for i in items)
    if fmt == "text":
        items = value if is_collection else [value]
        return "".join(f"{i}\n" for i in items)
    raise ValueError(f"unknown sink format {fmt!r}")
