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
