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
