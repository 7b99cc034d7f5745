"""The worker-side interpreter, on its own: segments of the physical plan run on plain
partitions, with the one failure type, retry rule and timeout every engine shares."""

from __future__ import annotations

import pickle

import pytest

from pipec.backends.physical import steps as s
from pipec.backends.runtime import semantics
from pipec.backends.runtime.interpreter import (Given, StageFailure, UnknownStep, run_finisher, run_segment)

MOD = "interp_fns"


@pytest.fixture(autouse=True)
def fns(tmp_path, monkeypatch):
    (tmp_path / "interp_fns.py").write_text(
        "import time\n"
        "calls = []\n"
        "def double(x):\n    return 2 * x\n"
        "def odd(x):\n    return x % 2 == 1\n"
        "def pair(x):\n    return (x % 3, x)\n"
        "def add(a, b):\n    return a + b\n"
        "def scale(x, by):\n    return x * by\n"
        "def flaky(x):\n"
        "    calls.append(x)\n"
        "    if len(calls) < 3:\n        raise ValueError('not yet')\n"
        "    return x\n"
        "def slow(x):\n    time.sleep(5)\n    return x\n"
        "def shards(partition, partitions):\n    return [partition] * (partition + 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import sys
    sys.modules.pop("interp_fns", None)
    from pipec.backends.runtime.tasks import resolve
    resolve.cache_clear()
    yield
    resolve.cache_clear()


def fn(name: str) -> s.Fn:
    return s.Fn(MOD, name)


def test_range_head_fused_steps_and_fold_match_the_reference():
    seg = s.Segment("xs+ys:fold", s.RangeSlice("xs", 10, 3),
                    (s.Elementwise("ys", "map", fn("double")), s.Elementwise("zs", "filter", fn("odd"))),
                    s.Fold("total", fn("add")))
    # range(10) cut 3 ways: [0,3) [3,6) [6,10); doubled numbers are never odd
    assert [run_segment(seg, i) for i in range(3)] == [semantics.EMPTY] * 3
    seg = s.Segment("xs+ys", s.RangeSlice("xs", 10, 3), (s.Elementwise("ys", "map", fn("double")),))
    assert [run_segment(seg, i) for i in range(3)] == [[0, 2, 4], [6, 8, 10], [12, 14, 16, 18]]


def test_split_then_merge_is_reduce_by_key_in_source_order():
    split = s.Segment("p:split", s.Input("p"), (s.Elementwise("kv", "map", fn("pair")),),
                      s.Split("c", "reduce_by_key", 2, fn("add")))
    parts = [[0, 1, 2, 3], [4, 5, 6]]
    buckets = [run_segment(split, i, items) for i, items in enumerate(parts)]
    merge = s.Segment("c", s.Merge("c", "reduce_by_key", fn("add")))
    out = [run_segment(merge, j, [(0, i, buckets[i][j]) for i in reversed(range(2))]) for j in range(2)]
    merged = sorted(kv for part in out for kv in part)
    assert merged == [(0, 0 + 3 + 6), (1, 1 + 4), (2, 2 + 5)]


def test_bindings_come_from_slots_and_literals():
    seg = s.Segment("ys", s.Input("xs"), (s.Elementwise("ys", "map", fn("scale"), (("by", s.Slot(0, "k")),)),))
    assert run_segment(seg, 0, [1, 2], Given([10])) == [10, 20]
    seg = s.Segment("ys", s.Input("xs"), (s.Elementwise("ys", "map", fn("scale"), (("by", s.Lit(3)),)),))
    assert run_segment(seg, 0, [1, 2]) == [3, 6]


def test_user_errors_are_one_picklable_failure_naming_stage_and_partition():
    seg = s.Segment("ys", s.Input("xs"), (s.Elementwise("ys", "map", fn("double")),))
    with pytest.raises(StageFailure) as info:
        run_segment(seg, 4, [1, None])
    failure = pickle.loads(pickle.dumps(info.value))
    assert (failure.node, failure.partition, failure.kind, failure.error) == ("ys", 4, "error", "TypeError")
    assert "interp_fns.py:4 in double" in failure.frame


def test_retries_apply_to_user_code_and_effectful_stages_are_tried_once():
    seg = s.Segment("ys", s.Input("xs"), (s.Elementwise("ys", "map", fn("flaky"), policy=s.Policy(retries=2)),))
    assert run_segment(seg, 0, [7]) == [7]
    import interp_fns as m
    m.calls.clear()
    seg = s.Segment("ys", s.Input("xs"),
                    (s.Elementwise("ys", "map", fn("flaky"), policy=s.Policy(retries=2, effectful=True)),))
    with pytest.raises(StageFailure):
        run_segment(seg, 0, [7])
    assert m.calls == [7]


def test_a_timeout_is_a_failure_of_the_stage():
    seg = s.Segment("ys", s.Input("xs"), (s.Elementwise("ys", "map", fn("slow"), policy=s.Policy(timeout=0.2)),))
    with pytest.raises(StageFailure) as info:
        run_segment(seg, 1, [1])
    assert info.value.kind == "timeout"
    assert "did not finish within its timeout of 0.2 s" in info.value.message


def test_sharded_source_and_shared_scan():
    seg = s.Segment("xs", s.Sharded("xs", fn("shards"), k=3),
                    terminal=s.Branches("xs", ((((s.Elementwise("ys", "map", fn("double")),)), s.Count("n")),
                                               ((), s.Fold("t", fn("add")))), keep=True))
    assert run_segment(seg, 2) == [[2, 2, 2], 3, 6]
    assert s.outputs_of(seg.terminal) == 3


def test_a_shared_scan_gives_a_one_bucket_split_as_the_bucket_itself():
    # one partition: the split has one bucket, and outputs_of counts it as one output
    seg = s.Segment("xs", s.Input("xs"),
                    terminal=s.Branches("xs", (((), s.Split("g", "group_by_key", 1)), ((), s.Count("n")))))
    assert run_segment(seg, 0, [(1, 2), (3, 4)]) == [[(1, 2), (3, 4)], 2]
    assert s.outputs_of(seg.terminal) == 2


def test_a_shared_scan_hands_a_table_over_as_it_is_and_each_terminal_reads_its_own_form():
    # A columnar partition stays a table for the kept output and a dataset part; a count
    # reads rows, as it would reading the partition from a task of its own.
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"id": [1, 2, 3]})
    seg = s.Segment("xs", s.Input("xs"), terminal=s.Branches("xs", (((), s.Count("n")),), keep=True))
    kept, n = run_segment(seg, 0, table)
    assert kept is table and n == 3
    assert s.pick([kept, n], 1) == 3 and s.pick(["p", 0, 1, 2], 1, 2) == [0, 1]


def test_pool_members_come_from_the_engine_and_a_member_that_cannot_be_built_fails_at_the_pool():
    seg = s.Segment("ys", s.Input("xs"), (s.Elementwise("ys", "map_batches", None, pool="models", method="go"),))
    members = Given((), members=lambda pool, method: lambda batch: [(pool, method, len(batch))])
    assert run_segment(seg, 0, [1, 2, 3], members) == [("models", "go", 3)]

    def broken(pool, method):
        raise OSError("no model file")
    with pytest.raises(StageFailure) as info:
        run_segment(seg, 2, [1], Given((), members=broken))
    assert (info.value.node, info.value.partition, info.value.error) == ("models", 2, "OSError")
    with pytest.raises(UnknownStep):
        run_segment(seg, 0, [1])


def test_combine_tree_and_unknown_steps():
    assert run_finisher(s.Combine("t", fn("add"), final=True), [1, semantics.EMPTY, 2]) == 3
    with pytest.raises(StageFailure) as info:
        run_finisher(s.Combine("t", fn("add"), final=True), [semantics.EMPTY])
    assert "empty collection" in info.value.message and info.value.hint
    with pytest.raises(UnknownStep):
        run_segment(s.Segment("x", s.Input("x"), (), terminal=s.Fn("not", "a terminal")), 0, [])


# ---- ordering, sampling and indexing --------------------------------------------------------------

MIXED = [None, "b", 3, 2.5, "a", float("nan"), (1, 2), 3.0, True, -1, b"x", [0, "z"], 3]


def _cut(items: list, k: int) -> list[list]:
    return semantics.split(items, k)


def _range_sort(parts: list[list], head: s.SortRun) -> list[list]:
    """A sort as the planned backends' tasks run it: runs, samples, splitters, splits, merges."""
    k, width = len(parts), semantics.sort_width(head.by is not None, head.by_element, head.order)
    runs = [run_segment(s.Segment("s-run", head), i, part) for i, part in enumerate(parts)]
    samples = [run_segment(s.Segment("s-sample", s.Input("s"), (), s.SortSample("s", k)), i, run)
               for i, run in enumerate(runs)]
    splitters = run_finisher(s.SortSplitters("s", k, width), samples)
    cut = s.Segment("s-split", s.Input("s"), (), s.Split("s", "range", k, splitters=0))
    pieces = [run_segment(cut, i, run, Given([splitters])) for i, run in enumerate(runs)]
    merge = s.Segment("s", s.Merge("s", "sort"))
    return [run_segment(merge, r, [(0, i, p[r]) for i, p in reversed(list(enumerate(pieces)))]) for r in range(k)]


@pytest.mark.parametrize("k", [1, 2, 5, 13, 20])
def test_sort_runs_merged_are_one_stable_total_order_whatever_the_partitioning(k):
    parts = _range_sort(_cut(MIXED, k), s.SortRun("s", None, True, None))  # by the elements
    assert parts == semantics.sorted_ranges([semantics.sort_run(p, None, True, None) for p in _cut(MIXED, k)], 1)
    merged = [x for part in parts for x in part]
    assert merged == semantics.sort_by(MIXED, None, True, None)
    # None, numbers by value (True == 1; 3 and 3.0 tie and keep their order; NaN last),
    # strings, bytes, sequences element by element
    assert [repr(x) for x in merged] == ["None", "-1", "True", "2.5", "3", "3.0", "3", "nan", "'a'", "'b'", "b'x'",
                                         "[0, 'z']", "(1, 2)"]


def test_a_keyed_input_sorts_its_ties_by_key_then_partition_position():
    # Two hash buckets of a keyed result, each sorted by key; every key lives in one bucket.
    buckets = [[(1, "b"), (1, "a"), (4, "c")], [(0, "d"), (2, "e")]]
    zero = semantics.sort_by([x for b in buckets for x in b], lambda kv: 0, False, "key")
    assert zero == [(0, "d"), (1, "b"), (1, "a"), (2, "e"), (4, "c")]  # collection order: by key, then position
    # With no key function at all: collection order only (how positions are counted).
    runs = [semantics.sort_partial(b, None, False, "key") for b in buckets]
    assert semantics.range_merge(runs) == zero


@pytest.mark.parametrize("k", [1, 3, 7])
def test_positions_and_samples_do_not_depend_on_the_partitioning(k):
    items = list(range(100, 160))
    parts = _cut(items, k)
    lengths = [run_segment(s.Segment("n", s.Input("xs"), (), s.Count("n")), i, p) for i, p in enumerate(parts)]
    offsets = run_finisher(s.Offsets("z"), lengths)
    slots = Given([offsets])
    zipped = [run_segment(s.Segment("z", s.Positioned("z", "zip", 0)), i, p, slots) for i, p in enumerate(parts)]
    assert [x for p in zipped for x in p] == [(x, i) for i, x in enumerate(items)]
    sampled = [run_segment(s.Segment("q", s.Positioned("q", "sample", 0, 0.25, 9)), i, p, slots)
               for i, p in enumerate(parts)]
    assert [x for p in sampled for x in p] == semantics.sample_part(items, 0, 0.25, 9)
    assert 5 < sum(map(len, sampled)) < 25


def test_the_sample_function_is_the_documented_hash():
    import hashlib
    digest = hashlib.blake2b(b"pipec.sample:7:12", digest_size=8).digest()
    assert semantics.sample_hash(7, 12) == int.from_bytes(digest, "little")
    assert semantics.sample_keep(7, 12, 1.0) and not semantics.sample_keep(7, 12, 0.0)
    small = semantics.sample_part(range(1000), 0, 0.1, 3)
    assert small == [i for i in range(1000) if semantics.sample_keep(3, i, 0.1)]
    assert set(small) <= set(semantics.sample_part(range(1000), 0, 0.3, 3))  # nested by fraction
    with pytest.raises(StageFailure, match="between 0 and 1, got 2"):
        run_segment(s.Segment("q", s.Positioned("q", "sample", 0, 2, 0)), 0, [1], Given([[0]]))


def test_take_candidates_merged_are_the_first_n_in_collection_order():
    parts = [[(3, "c"), (0, "a")], [], [(1, "b"), (2, "x")]]
    take = s.Segment("t", s.Input("kv"), (), s.TakePartial("t", 2, "key"))
    cands = [run_segment(take, i, p) for i, p in enumerate(parts)]
    assert run_finisher(s.TakeMerge("t", 2, "key"), cands) == [(0, "a"), (1, "b")]
    assert run_finisher(s.TakeMerge("t", 9, None), [[1, 2], [], [3]]) == [1, 2, 3]


def test_collect_map_orders_keys_and_refuses_a_key_twice():
    assert list(semantics.collect_map([(10, "a"), (2, "b"), ("k", 0), (None, 1)])) == [None, 2, 10, "k"]
    with pytest.raises(semantics.DuplicateKey, match="the key 1.0 more than once"):
        semantics.collect_map([(1, "a"), (2, "b"), (1.0, "c")])
    with pytest.raises(TypeError, match="needs \\(key, value\\) pairs"):
        semantics.collect_map([1, 2])
    with pytest.raises(TypeError, match="needs keys a dict can hold, got list"):
        semantics.collect_map([([1], 2)])
    assert semantics.render_sink({10: 1, 2: 2}, "json", False) == '{\n  "2": 2,\n  "10": 1\n}\n'


@pytest.mark.parametrize("values", [
    [3, -1, 2.5, True, 0, 3.0, -7, 2.5],  # numbers only: compared as they are
    ["b", "", "é", "a", "ab", "b"],  # strings only: as they are
    [1, "a", None, 2.0, float("nan"), (0, 1), 1],  # a mix: by canonical key
])
def test_the_fast_comparisons_order_exactly_as_the_canonical_key(values):
    def by_key(x):
        return semantics.sort_key(x, None, True, None)
    assert [repr(x) for x in semantics.sort_by(values, None, True, None)] == \
        [repr(x) for x in sorted(values, key=by_key)]
    # Runs of different kinds (numbers here, a mix there) merge by canonical key.
    runs = [semantics.sort_partial(values[:3], None, True, None), semantics.sort_partial(values[3:], None, True, None)]
    assert [repr(x) for x in semantics.range_merge(runs)] == [repr(x) for x in sorted(values, key=by_key)]
    records = [(v, i) for i, v in enumerate(values)]
    assert semantics.sort_by(records, semantics.canonical_key, False, "key") == \
        sorted(records, key=lambda r: semantics.sort_key(r, semantics.canonical_key, False, "key"))
