"""Shared scans in the physical plan: a collection read by several consumers of one graph
is made by one task per partition that feeds them all (steps.Branches), on every engine
that takes them, and an engine that declines them says so in its plan.

The conformance case ``shared_scan_feeds_every_reader`` (tests/test_conformance.py) holds
the results of the same pipeline byte-identical to the reference backend on every engine;
here the plan's task specs show that the scan is what runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipec import load
from pipec.backends.physical import steps as s
from tests.engines import BACKENDS
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
