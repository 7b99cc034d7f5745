"""The range-partitioned sort against Python's ``sorted``, on generated data.

A sort of k partitions is k key ranges (semantics.sorted_ranges; the planned backends'
tasks compute the same, see test_interpreter): read in order they must be exactly the
stable sort Python gives with the canonical key, whatever the data (duplicates, ties,
keys of mixed kinds, empty partitions, one partition), and equal keys share one range.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from pipec.backends.runtime import semantics

scalars = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True, width=16),
                    st.sampled_from(["a", "b", "", "é"]), st.none(), st.booleans(),
                    st.tuples(st.integers(0, 2), st.sampled_from(["x", "y"])))
few_keys = st.integers(0, 4)  # many duplicates: long runs of ties across partitions


def _cuts(items: list, cuts: list[int]) -> list[list]:
    """``items`` cut at the sorted positions ``cuts`` (empty partitions where they repeat)."""
    bounds = [0, *sorted(min(c, len(items)) for c in cuts), len(items)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def _canonical_sort(items: list, key) -> list:
    return sorted(items, key=lambda x: semantics.canonical_key(key(x)))


def _check(parts: list[list], by, by_element: bool, order: str | None, key) -> list[list]:
    runs = [semantics.sort_run(p, by, by_element, order) for p in parts]
    ranges = semantics.sorted_ranges(runs, semantics.sort_width(by is not None, by_element, order))
    assert len(ranges) == len(parts)
    flat = [x for r in ranges for x in r]
    expected = _canonical_sort([x for p in parts for x in p], key)
    assert [repr(x) for x in flat] == [repr(x) for x in expected]
    # Equal keys share one range.
    where: dict = {}
    for i, r in enumerate(ranges):
        for x in r:
            k = repr(semantics.canonical_key(key(x)))
            assert where.setdefault(k, i) == i, (x, where[k], i)
    return ranges


@settings(max_examples=300, deadline=None)
@given(st.lists(few_keys, max_size=60), st.lists(st.integers(0, 60), max_size=7))
def test_a_sort_by_key_is_pythons_stable_sort_with_ties_in_collection_order(keys, cuts):
    items = [(k, i) for i, k in enumerate(keys)]  # the index shows the order ties keep
    _check(_cuts(items, cuts), lambda x: x[0], False, None, lambda x: x[0])


@settings(max_examples=300, deadline=None)
@given(st.lists(scalars, max_size=40), st.lists(st.integers(0, 40), max_size=5))
def test_a_sort_by_element_of_mixed_kinds_is_the_canonical_order(items, cuts):
    _check(_cuts(items, cuts), None, True, None, lambda x: x)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(few_keys, st.integers(0, 3)), max_size=40), st.integers(1, 6))
def test_a_keyed_input_sorts_ties_by_its_collection_order(records, k):
    # A keyed result: hash buckets, each sorted by key, every key in one bucket.
    buckets = [semantics.sort_records([r for r in records if semantics.key_partition(r[0], k) == j])
               for j in range(k)]
    collection = semantics.sort_records([r for b in buckets for r in b])
    by = lambda kv: kv[1] % 2  # noqa: E731
    runs = [semantics.sort_run(b, by, False, "key") for b in buckets]
    ranges = semantics.sorted_ranges(runs, 2)
    assert [x for r in ranges for x in r] == sorted(collection, key=by)
    # No key function at all: collection order only (how positions are counted).
    runs = [semantics.sort_run(b, None, False, "key") for b in buckets]
    assert [x for r in semantics.sorted_ranges(runs, 1) for x in r] == collection


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=400), st.integers(1, 8))
def test_ranges_are_balanced_when_the_keys_are_distinct(values, k):
    items = sorted(set(values))
    parts = semantics.split(items[::-1], k)
    ranges = _check(parts, None, True, None, lambda x: x)
    # A range holds about n/k items; the samples' resolution bounds how far off it may be.
    n = len(items)
    assert max(len(r) for r in ranges) <= math.ceil(n / k) + math.ceil(n / (k * semantics.samples_per_run(k))) + k


def test_one_partition_and_no_partitions():
    assert semantics.sorted_ranges([], 1) == []
    assert semantics.sorted_ranges([semantics.sort_run([3, 1, 2], None, True, None)], 1) == [[1, 2, 3]]
    empty = [semantics.sort_run([], None, True, None)] * 3
    assert semantics.sorted_ranges(empty, 1) == [[], [], []]


def test_splitters_do_not_depend_on_anything_but_the_runs():
    runs = [semantics.sort_run(list(range(i, 100, 3)), None, True, None) for i in range(3)]
    samples = [semantics.run_sample(r, 3) for r in runs]
    assert semantics.sort_splitters(samples, 3, 1) == semantics.sort_splitters([list(s) for s in samples], 3, 1)
    width, kinds, keys = semantics.sort_splitters(samples, 3, 1)
    assert (width, len(keys)) == (1, 2) and keys == sorted(keys)


def test_the_plan_shows_the_sort_task_by_task(tmp_path, capsys):
    from pipec.cli import main
    (tmp_path / "m_sort_plan.py").write_text("def key(x):\n    return x % 7\n")
    path = tmp_path / "s.pipe"
    path.write_text("use m_sort_plan as m\n\npipeline s() {\n    source xs = range(40) partitions 3\n"
                    "    sink out = collect(sort_by(xs, by = m.key)) -> json(\"out/s.json\")\n}\n")
    assert main(["compile", str(path), "--backend", "dask"]) == 0
    plan = capsys.readouterr().out
    lines = [line.split() for line in plan.splitlines()]
    tasks = {words[0]: words[1] for words in lines if len(words) > 1 and words[0].startswith("out/value/input")}
    stem = "out/value/input"
    assert [tasks[f"{stem}-run-{i}"] for i in range(3)] == ["segment"] * 3
    assert [tasks[f"{stem}-sample-{i}"] for i in range(3)] == ["segment"] * 3
    assert tasks[f"{stem}-splitters"] == "finish"
    assert [tasks[f"{stem}-split-{i}"] for i in range(3)] == ["segment"] * 3
    assert [tasks[f"{stem}-{i}"] for i in range(3)] == ["merge"] * 3
    assert "sort by m_sort_plan.key: this partition's sorted run" in plan
    assert "2 splitters of 3 key ranges from the 3 runs' keys" in plan
    assert "merge one key range from every run's piece, in partition order" in plan
    assert "take_part" not in plan  # no task holds the whole collection


@settings(max_examples=150, deadline=None)
@given(st.lists(few_keys, max_size=50), st.lists(st.integers(0, 50), max_size=6), st.randoms(use_true_random=False))
def test_the_tasks_of_the_plan_give_the_same_ranges_whatever_order_the_shuffle_delivers(keys, cuts, rng):
    from pipec.backends.physical import steps as s
    from pipec.backends.runtime.interpreter import Given, run_finisher, run_segment
    parts = _cuts([(k, i) for i, k in enumerate(keys)], cuts)
    k = len(parts)
    head = s.SortRun("s", None, True, None)  # by the element: (key, index) pairs, all distinct
    runs = [run_segment(s.Segment("s-run", head), i, p) for i, p in enumerate(parts)]
    samples = [run_segment(s.Segment("s-sample", s.Input("s"), (), s.SortSample("s", k)), i, r)
               for i, r in enumerate(runs)]
    splitters = run_finisher(s.SortSplitters("s", k, 1), samples)
    cut = s.Segment("s-split", s.Input("s"), (), s.Split("s", "range", k, splitters=0))
    pieces = [run_segment(cut, i, r, Given([splitters])) for i, r in enumerate(runs)]
    merged = []
    for r in range(k):
        delivered = [(0, i, p[r]) for i, p in enumerate(pieces)]
        rng.shuffle(delivered)  # an engine's shuffle delivers the pieces in any order
        merged.append(run_segment(s.Segment("s", s.Merge("s", "sort")), r, delivered))
    runs_plain = [semantics.sort_run(p, None, True, None) for p in parts]
    assert merged == semantics.sorted_ranges(runs_plain, 1)
    assert [x for m in merged for x in m] == sorted(x for p in parts for x in p)
