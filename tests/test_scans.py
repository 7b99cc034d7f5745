"""Work the physical plan shares: a collection read by several consumers of one graph is
made by one task per partition that feeds them all (steps.Branches), and a join inside a
loop splits a side made before the loop once, not every round (planner.HoistedSplit). On
every engine that takes them; an engine that declines them says so in its plan.

The conformance cases ``shared_scan_feeds_every_reader`` and
``join_in_a_loop_splits_the_invariant_side_once`` (tests/test_conformance.py) hold the
results byte-identical to the reference backend on every engine; here the plan's task
specs, and the keys a run submits, show that the sharing is what runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipec import load
from pipec.backends.physical import steps as s
from tests.engines import BACKENDS, engine_options
from tests.test_conformance import CASES, _write_case

CASE = "shared_scan_feeds_every_reader"


def _plan(backend: str, root: Path):
    return load(_write_case(root, CASE, CASES[CASE])).lower(backend)


def _segment(spec):
    return spec.args[0] if spec.body in ("segment", "merge") else None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shared_scan_is_one_task_per_partition(backend, tmp_path):
    plan = _plan(backend, tmp_path)
    if not hasattr(plan, "physical"):
        pytest.skip(f"the {backend} backend runs the IR itself, without a physical plan")
    physical = plan.physical
    step = next(step for step in physical.planner.graph_steps() if "ys" in step.nodes)
    specs = physical.tasks[step.number]
    making_ys = [spec for spec in specs if _segment(spec) is not None and "ys" in _segment(spec).nodes]
    assert len(making_ys) == 4  # one task per partition of ys, whatever reads it
    scans = [spec for spec in specs if isinstance(getattr(_segment(spec), "terminal", None), s.Branches)]
    if "ys" in step.declined:
        # The engine declines shared scans: its plan says so, and each reader reads ys.
        assert not scans
        assert "no shared scan of `ys` for `total`, `sums/input`, `count`" in plan.explain()
        return
    assert step.scans["ys"].branches == ("total", "sums/input", "count")
    assert making_ys == [spec for spec in scans if spec.group == "ys"]
    for spec in making_ys:
        branches = _segment(spec).terminal
        assert branches.keep  # the sink reads ys after the graph
        assert [t.node for _, t in branches.branches] == ["total", "sums", "count"]
        assert [e.node for e in branches.branches[1][0]] == ["sums/input"]
        assert s.outputs_of(branches) == 1 + 1 + 4 + 1
    # Every other task reads one output of the scan's tasks, never a whole task.
    keys = {spec.key for spec in making_ys}
    reads = [ref for spec in specs for ref in spec.deps if ref.key in keys]
    assert reads and all(ref.output is not None for ref in reads)
    merges = [spec for spec in specs if spec.group == "sums"]
    assert {(ref.output, ref.buckets) for spec in merges for ref in spec.deps} == {(2, 4)}  # after ys and total
    assert "ys-0[total], ys-1[total], ys-2[total], ys-3[total]" in plan.explain()


HOIST = "join_in_a_loop_splits_the_invariant_side_once"
RANKS_JOIN = "ranks@loop1/value/input/input"  # join(links, ranks): links is made before the loop
GROWN_JOIN = "grown@loop1/value/part1/input/input"  # join(grown, links): grown grows every round


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_join_side_made_before_its_loop_is_split_once(backend, tmp_path):
    plan = load(_write_case(tmp_path, HOIST, CASES[HOIST])).lower(backend)
    if not hasattr(plan, "physical"):
        pytest.skip(f"the {backend} backend runs the IR itself, without a physical plan")
    physical = plan.physical
    loop = next(step for step in physical.root if hasattr(step, "block"))
    before = [step for step in physical.planner.graph_steps() if step.hoisted]
    if not before:
        # The engine declines: every round splits links, and the plan says why.
        assert {h.name for h in loop.declined} == {f"{RANKS_JOIN}@left", f"{GROWN_JOIN}@right"}
        assert "note: `links` is split for" in plan.explain()
        return
    assert [h.name for h in before[0].hoisted] == [f"{RANKS_JOIN}@left", f"{GROWN_JOIN}@right"]
    made = [spec.key for spec in physical.tasks[before[0].number]]
    assert made == [f"{RANKS_JOIN}@left-{i}" for i in range(4)] + [f"{GROWN_JOIN}@right-{i}" for i in range(4)]
    assert "before loop1: the splits its rounds share" in plan.explain()
    (round_graph,) = [step for step in physical.planner.graph_steps() if step.loop == "loop1"]
    specs = physical.tasks[round_graph.number]
    assert not [spec.key for spec in specs if spec.key.startswith((f"{RANKS_JOIN}-left", f"{GROWN_JOIN}-right"))]
    merge = next(spec for spec in specs if spec.key == f"{RANKS_JOIN.rsplit('/', 1)[0]}-0")
    assert [ref.key for ref in merge.deps][:4] == [f"{RANKS_JOIN}@left-{i}" for i in range(4)]


def test_a_round_joining_another_number_of_ways_splits_again(tmp_path, monkeypatch):
    """On a real Dask cluster: the rounds read the split made before the loop while the
    join's bucket count is the one it was made for; grown's count changes after the
    first round, and from then on its join splits links again, every round."""
    monkeypatch.chdir(tmp_path)
    plan = load(_write_case(tmp_path, HOIST, CASES[HOIST])).lower("dask", **engine_options("dask"))
    plan.run()
    submitted = plan.last_driver.submitted
    rounds = [keys for keys in submitted if f"{RANKS_JOIN.rsplit('/', 1)[0]}-0" in keys]
    assert len(rounds) == 3
    hoisted = [keys for keys in submitted if f"{RANKS_JOIN}@left-0" in keys]
    assert len(hoisted) == 1 and submitted.index(hoisted[0]) < submitted.index(rounds[0])
    for keys in rounds:
        assert not [key for key in keys if key.startswith(f"{RANKS_JOIN}-left")]  # never split again
    again = [sorted(key for key in keys if key.startswith(f"{GROWN_JOIN}-right")) for keys in rounds]
    assert again[0] == []  # grown has 2 partitions: the join is 4 ways, as the split was made
    assert again[1] == [f"{GROWN_JOIN}-right-{i}" for i in range(4)]  # grown has 6 now: 6 ways
    assert again[2] == [f"{GROWN_JOIN}-right-{i}" for i in range(4)]
