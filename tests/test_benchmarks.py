"""The overhead benchmark stays honest: on every engine, each hand-written program
(benchmarks/hand_<backend>.py) and its pipec pipeline (benchmarks/*.pipe) compute the same
result. Small sizes (each of the 8 paramserver partitions holds 2 batches) and the
session's engines; the timing itself lives in benchmarks/overhead.py, never in a test."""

from __future__ import annotations

import pytest

from benchmarks import hand_dask, native_parquet, overhead
from tests.engines import engine_options

TINY = {"mapreduce": {"n": 20_000, "parts": 4},
        "paramserver": {"rows": 16_000, "rounds": 2},
        "wordcount": {"lines": 2_000, "parts": 4, "n": 5},
        "wordcount_naive": {"lines": 2_000, "parts": 4, "n": 5}}


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("backend", overhead.BACKENDS)
def test_hand_written_program_and_pipeline_agree(backend, name, tmp_path, monkeypatch):
    options = engine_options(backend)
    if backend == "dask":  # the hand-written Dask programs run on the client they are given
        monkeypatch.setattr(hand_dask, "_CLIENT", [options["client"]])
    load = overhead.workload(name, TINY[name], backend, tmp_path)
    hand, pipec = load.hand(), load.pipec()
    assert load.same(hand, pipec), (hand, pipec.outputs)
    # The check compares real results, not two empty ones.
    assert pipec.outputs and all(value is not None for value in pipec.outputs.values())


@pytest.mark.parametrize("backend", overhead.BACKENDS)
def test_the_engines_own_parquet_programs_and_the_pipeline_write_the_same_rows(backend, tmp_path, monkeypatch):
    """benchmarks/native_parquet.py: the engine's own reader and writer against
    benchmarks/batches.pipe, on 20,000 rows in 8 files."""
    options = engine_options(backend)
    if backend == "dask":
        monkeypatch.setattr(hand_dask, "_CLIENT", [options["client"]])
    load = native_parquet.workload(backend, tmp_path, 20_000)
    native, pipec = load.hand(), load.pipec()
    assert native_parquet.read_sorted(pipec).num_rows == 20_000
    assert load.same(native, pipec)


@pytest.mark.parametrize("backend", ["local", *overhead.BACKENDS])
def test_the_snapshot_benchmark_runs_both_variants_to_the_same_state(backend, tmp_path, monkeypatch):
    """benchmarks/snapshot_cost.py: the pipeline with and without its checkpoint clause,
    at tiny sizes, ends with the same actor state (the timing is the benchmark's)."""
    from benchmarks import snapshot_cost
    options = engine_options(backend) if backend != "local" else {}
    variants = snapshot_cost.pipelines()
    assert variants["checkpointed"].ir.op("ps").checkpoint_every == 3
    assert variants["plain"].ir.op("ps").checkpoint_every is None
    params = {"rows": 4_000, "rounds": 3, "mb": 0.5}
    runners = {name: snapshot_cost.Runner(p, backend, params, options, tmp_path, name) for name, p in variants.items()}
    figures = snapshot_cost.measure(runners, reps=1)
    assert figures["same_result"] and len(figures["plain_runs"]) == len(figures["checkpointed_runs"]) == 1
    assert not list(tmp_path.iterdir())  # each run's folder (its snapshots) is removed


def test_scaling_curves_are_drawn_and_every_point_computes_the_reference(tmp_path, monkeypatch, capsys):
    """benchmarks/scaling.py at tiny sizes on the session's Dask cluster: each curve gives
    a point per size, every point the reference's answer (numpy for mapreduce, the same
    functions in this process for paramserver), and the table, JSON and HTML chart come
    out. No timing is asserted."""
    import json

    from benchmarks import scaling
    monkeypatch.setattr(hand_dask, "_CLIENT", [engine_options("dask")["client"]])
    sizes = {"rounds": {"points": [1, 3], "rows": 16_000},
             "partitions": {"points": [2, 4, 8], "n": 4_000, "floor_tasks": 8},
             "rows": {"points": [4_000, 8_000], "parts": 2}}
    curves = scaling.run_curves("dask", list(scaling.CURVES), sizes, tmp_path, reps=1, fresh=False,
                                log=lambda msg: None)
    assert [c.name for c in curves] == list(scaling.CURVES)
    for curve, (name, size) in zip(curves, sizes.items()):
        assert len(curve.points) == len(size["points"])
        assert all(p["same_result"] for p in curve.points), (name, curve.points)
    rounds, partitions, rows = curves
    assert [len(p["round_ms"]) for p in rounds.points] == [1, 3]  # one time per round run
    assert [p["pipec_tasks"] for p in partitions.points] == sorted(p["pipec_tasks"] for p in partitions.points)
    assert all("pipec_us_per_task" in p for p in partitions.points[1:])
    assert all(p["pipec_dependencies"] > 0 and p["hand_dependencies"] > 0 for p in partitions.points)
    assert all(p["rss_peak_mb"] >= p["rss_before_mb"] > 0 for p in rows.points)

    meta = {"backend": "dask", "engine": "test session", "date": "today", "machine": "test", "quick": True}
    status = scaling.report(curves, meta, str(tmp_path / "s.json"), str(tmp_path / "s.html"))
    assert status == 0
    out = capsys.readouterr().out
    for header in ("ms/round", "us/task", "s/M rows"):
        assert header in out
    data = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in data["curves"]] == list(scaling.CURVES)
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 7 and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_the_recovery_benchmark_kills_the_actor_and_judges_the_run_byte_for_byte(tmp_path):
    """benchmarks/recovery.py: one whole `pipec run` on Ray (an embedded runtime of its
    own), 8 rounds, its actor's process killed after a seeded number of calls: the run
    ends with the fault-free bytes, every call once, and a kill-to-next-call figure is
    taken (how long it is, is the benchmark's to say)."""
    pytest.importorskip("ray")
    from benchmarks import recovery
    rounds = 8
    expected = recovery.reference(tmp_path, rounds)
    assert expected["state.json"].count(b'"round"') == rounds
    outcome = recovery.run_case(tmp_path, "ray", 0, expected, rounds, timeout=180)
    assert outcome.verdict == "correct", outcome
    assert outcome.detail.startswith("actor pid ") and outcome.kill_to_next > 0, outcome
    assert "| ray | actor | 1 | all |" in recovery.table([outcome])
