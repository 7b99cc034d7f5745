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
