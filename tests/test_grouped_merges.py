"""Grouped merges: a shuffle of more partitions than MERGE_WIDTH is merged by MERGE_WIDTH
tasks, each making a contiguous run of the partitions (steps.group_bounds), so P splits
make P x MERGE_WIDTH dependencies, not P x k.

The conformance case ``wide_shuffles_merge_in_groups`` (tests/test_conformance.py)
holds every engine's bytes to the reference backend's with grouped reduce_by_key,
group_by_key, distinct, join, sort and a dataset sink; here the plan's tasks and
dependencies, the keys and dependencies Dask is given, and the interpreter's grouped
merge against the ungrouped one on generated data.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from distributed.diagnostics.plugin import SchedulerPlugin
from hypothesis import given, settings
from hypothesis import strategies as st

from pipec import load
from pipec.backends.physical import planner
from pipec.backends.physical import steps as s
from pipec.backends.runtime import interpreter
from tests.conftest import ROOT
from tests.engines import engine_options

MAPREDUCE = ROOT / "benchmarks" / "mapreduce.pipe"


def _tasks(plan) -> list:
    return [spec for specs in plan.physical.tasks.values() for spec in specs if spec.data is None]


def test_the_width_is_sixteen():
    # The counts below are written out for this width (the planner says why it is 16).
    assert planner.MERGE_WIDTH == 16


@pytest.mark.parametrize("backend", ["dask", "ray"])
def test_a_256_partition_reduce_by_key_has_16_merge_tasks(backend):
    plan = load(MAPREDUCE).lower(backend, {"parts": 256})
    tasks = _tasks(plan)
    # 256 scans (the fold's partial and the split in one pass), the fold's tree (32 + 4
    # + 1), 16 merges: 309 tasks, 256 x 16 + 256 + 32 + 4 = 4,388 dependencies (P x P
    # would be 549 tasks and 65,828).
    assert len(tasks) == 309
    assert sum(len(spec.deps) for spec in tasks) == 4388
    merges = [spec for spec in tasks if spec.body == "merge"]
    assert [spec.key for spec in merges] == [f"counts-{16 * j}..{16 * j + 15}" for j in range(16)]
    for j, spec in enumerate(merges):
        assert len(spec.deps) == 256 and {ref.key for ref in spec.deps} == {f"ys-{i}" for i in range(256)}
        head = spec.args[0].head
        assert (head.k, head.groups, spec.args[1]) == (256, 16, j)
        assert f"partitions {16 * j}..{16 * j + 15} of 256 (group {j} of 16)" in spec.label
    split = next(t for _, t in _tasks(plan)[0].args[0].terminal.branches if isinstance(t, s.Split))
    assert (split.k, split.groups, s.outputs_of(split)) == (256, 16, 16)
    text = plan.explain()
    assert "split 256 ways, in 16 groups (one per merge task)" in text
    # The collection's partition 40 is output 8 of the task making partitions 32..47.
    refs = plan.physical.parts["counts"]
    assert len(refs) == 256 and refs[40] == "counts-32..47"


def test_1024_partitions_make_p_times_16_dependencies_not_p_squared():
    for parts, tasks, deps in ((16, 35, 274), (64, 89, 1096), (256, 309, 4388), (1024, 1187, 17554)):
        plan = load(MAPREDUCE).lower("dask", {"parts": parts})
        specs = _tasks(plan)
        assert (len(specs), sum(len(spec.deps) for spec in specs)) == (tasks, deps), parts


def test_spark_declines_the_grouping_and_says_why():
    plan = load(MAPREDUCE).lower("spark", {"parts": 64})
    merges = [spec for spec in _tasks(plan) if spec.body == "merge"]
    assert [spec.key for spec in merges] == [f"counts-{i}" for i in range(64)]
    assert all(spec.args[0].head.groups is None for spec in merges)
    text = plan.explain()
    assert "note: `counts` merges its 64 partitions in 64 tasks, not in groups of partitions: Spark's" in text
    assert plan.to_json()["steps"][2]["ungrouped_merges"] == [{"node": "counts", "partitions": 64}]


WIDE = """
use operator as op
use tests.test_grouped_merges as m

pipeline wide(parts: int = 20) {
    source xs = range(400) partitions parts
    stage counts = reduce_by_key op.add over (map m.bucket over xs)
    stage again = reduce_by_key op.add over (map m.swap over counts)
    stage sorted = sort_by(xs, by = m.neg)
    sink a = collect(again) -> json("out/a.json")
    sink b = collect(sorted) -> json("out/b.json")
}
"""


def bucket(x):
    return (x % 37, 1)


def swap(pair):
    return (pair[1] % 5, pair[0])


def neg(x):
    return -x


@pytest.mark.parametrize("backend", ["dask", "spark"])
def test_plan_golden_of_grouped_merges(backend, tmp_path, golden):
    path = tmp_path / "wide.pipe"
    path.write_text(WIDE)
    # A merge of 20 partitions in 16 tasks (one or two partitions each), a second
    # shuffle split inside them, a sort's range merges; Spark's declines.
    golden(f"{backend}/wide_shuffle.txt", load(path).lower(backend).explain())


class Edges(SchedulerPlugin):
    """A scheduler plugin recording each task's dependencies as graphs arrive."""

    name = "pipec-test-edges"

    def __init__(self):
        self.deps: dict[str, set[str]] = {}

    async def start(self, scheduler):
        pass

    async def close(self):
        pass

    def update_graph(self, scheduler, *, keys, tasks, **kwargs):
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is not None:
                self.deps[str(key)] = {str(d.key) for d in ts.dependencies}


def test_dask_gets_p_times_16_edges(tmp_path, monkeypatch):
    client = engine_options("dask")["client"]
    client.wait_for_workers(2, timeout=60)
    plugin = Edges()
    client.register_plugin(plugin, name=Edges.name)  # the scheduler runs in this process
    path = tmp_path / "p.pipe"
    path.write_text("""
use operator as op
use tests.test_grouped_merges as m

pipeline p(parts: int = 64) {
    source xs = range(5000) partitions parts
    stage counts = reduce_by_key op.add over (map m.bucket over xs)
    sink out = collect(counts) -> json("out/out.json")
}
""")
    monkeypatch.chdir(tmp_path)
    try:
        load(path).run(backend="dask", client=client)
        seen = dict(client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins[Edges.name].deps))
    finally:
        client.unregister_scheduler_plugin(Edges.name)
    splits = {k: v for k, v in seen.items() if k.startswith("counts/input-")}
    merges = {k: v for k, v in seen.items() if k.startswith("counts-")}
    assert len(splits) == 64 and all(not v for v in splits.values())
    assert len(merges) == 16 and all(len(v) == 64 and v <= set(splits) for v in merges.values())
    assert sum(len(v) for v in seen.values()) == 64 * 16  # P x w, not P x P (4,096)
    # The driver holds the merge tasks' keys: no key per partition was added to read them.
    assert len(seen) == 64 + 16
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    monkeypatch.chdir(local_dir)
    load(path).run(backend="local")
    assert (tmp_path / "out" / "out.json").read_bytes() == (local_dir / "out" / "out.json").read_bytes()


# ---- the interpreter: a grouped merge gives the ungrouped merges' partitions --------------------------

keys = st.one_of(st.integers(-3, 30), st.sampled_from(["a", "b", "é", ""]), st.tuples(st.integers(0, 2)))
records = st.lists(st.tuples(keys, st.integers(-5, 5)), max_size=30)


def _ungrouped_and_grouped(how: str, parts: list[list], k: int, groups: int, steps_after=(), terminal=None,
                           right: list[list] | None = None):
    fn = s.Fn("operator", "add") if how == "reduce_by_key" else None
    sides = [parts] if right is None else [parts, right]
    split = s.Split(how, how, k, fn)
    gsplit = s.Split(how, how, k, fn, groups=groups)
    run = lambda term, items, i: interpreter.run_chain((), term, items, i)  # noqa: E731
    outs = [[run(split, p, i) for i, p in enumerate(side)] for side in sides]
    gouts = [[run(gsplit, p, i) for i, p in enumerate(side)] for side in sides]
    for side, gside in zip(outs, gouts):  # the groups are the non-empty buckets, cut contiguously
        for buckets, grouped in zip(side, gside):
            assert len(grouped) == groups
            starts = [a for a, _ in s.group_bounds(k, groups)]
            placed = {starts[j] + place: b for j, group in enumerate(grouped) for place, b in group.items()}
            assert placed == {r: b for r, b in enumerate(buckets) if b}
    segment = s.Segment(how, s.Merge(how, how, fn), tuple(steps_after), terminal)
    gsegment = s.Segment(how, s.Merge(how, how, fn, k=k, groups=groups), tuple(steps_after), terminal)
    wire = lambda x: pickle.loads(pickle.dumps(x))  # noqa: E731  (as between processes)
    expected = []
    for r in range(k):
        recs = [(side, i, wire(out[r])) for side, side_outs in enumerate(outs) for i, out in enumerate(side_outs)]
        expected.append(interpreter.run_merge(segment, r, recs))
    got = []
    for j in range(groups):
        recs = [(side, i, wire(out[j])) for side, side_outs in enumerate(gouts) for i, out in enumerate(side_outs)]
        result = interpreter.run_merge(gsegment, j, recs)
        assert len(result) == s.task_outputs(gsegment, j)
        got.extend(result)
    return expected, got


@settings(max_examples=60, deadline=None)
@given(st.lists(records, min_size=1, max_size=5), st.integers(1, 12), st.data(),
       st.sampled_from(["reduce_by_key", "group_by_key", "distinct"]))
def test_a_grouped_merge_gives_the_ungrouped_partitions(parts, k, data, how):
    groups = data.draw(st.integers(1, k))
    if how == "distinct":
        parts = [[repr(x) for x in p] for p in parts]
    expected, got = _ungrouped_and_grouped(how, parts, k, groups)
    assert repr(got) == repr(expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(records, min_size=1, max_size=4), st.lists(records, min_size=1, max_size=4), st.integers(1, 9),
       st.data())
def test_a_grouped_join_gives_the_ungrouped_partitions(left, right, k, data):
    groups = data.draw(st.integers(1, k))
    expected, got = _ungrouped_and_grouped("join", left, k, groups, right=right)
    assert repr(got) == repr(expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(records, min_size=1, max_size=4), st.integers(2, 10), st.data())
def test_the_chain_after_a_grouped_merge_runs_per_partition(parts, k, data):
    groups = data.draw(st.integers(1, k))
    swap_step = s.Elementwise("swap", "map", s.Fn("tests.test_grouped_merges", "swap"))
    # A second shuffle split inside the merge tasks: each partition's buckets, in order.
    second = s.Split("again", "group_by_key", 3)
    expected, got = _ungrouped_and_grouped("reduce_by_key", parts, k, groups, [swap_step], second)
    assert got == [bucket for buckets in expected for bucket in buckets]
    expected, got = _ungrouped_and_grouped("reduce_by_key", parts, k, groups, [swap_step], s.Count("n"))
    assert got == expected


def test_group_bounds_cut_like_range_partitions():
    for k in range(1, 70):
        for groups in range(1, k + 1):
            bounds = s.group_bounds(k, groups)
            assert [a for a, _ in bounds] == sorted(a for a, _ in bounds) and bounds[-1][1] == k
            assert all(b > a for a, b in bounds)  # no group without a partition
            # Every partition's bucket lands in the group whose run holds it, at its place there.
            out = s.grouped({r: [r] for r in range(k)}, k, groups)
            for j, (a, b) in enumerate(bounds):
                assert out[j] == {r - a: [r] for r in range(a, b)}
            assert s.grouped({}, k, groups) == [{}] * groups


def test_a_grouped_merge_read_twice_is_not_scanned_and_the_plan_says_so(tmp_path):
    from tests.test_conformance import CASES, _write_case
    name = "wide_shuffles_merge_in_groups"
    plan = load(_write_case(tmp_path, name, CASES[name])).lower("dask")
    text = plan.explain()
    for node in ("sums", "joined"):  # each read by two consumers in the graph that makes it
        assert f"note: no shared scan of `{node}`: grouped merge tasks make its partitions" in text
    step = next(s for s in plan.to_json()["steps"] if s["step"] == "graph")
    assert step["unscanned_grouped_merges"] == ["sums", "joined"]
    assert [scan["head"] for scan in step["shared_scans"]] == ["xs", "pairs"]
