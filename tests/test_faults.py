"""The fast slice of the fault-injection suite (benchmarks/faults.py; the full sweep is
`python -m benchmarks.faults --runs 20`).

Each case is a whole `pipec run` process on an engine it starts itself, with a ledger
actor, killed by pid at a seeded point: the actor's process, a worker of a pure stage or
of a stage calling the actor through a handle, or the driver (then `pipec run --resume`).
Each must end with the sinks of a fault-free run on the reference backend, every key
applied exactly once in the ledger's final state, no temporary file left, within the
timeout; after a killed driver no Ray process pipec started may stay alive.
"""

from __future__ import annotations

import pytest

pytest.importorskip("psutil")

from benchmarks import faults  # noqa: E402
from tests.engines import BACKENDS  # noqa: E402

ROUNDS = 2  # short runs: a few seconds each once the engine is up
TIMEOUT = 180.0

# A few cases across the engines (the sweep covers every site on every engine): the
# driver on Ray (resumed, and none of Ray's helpers outlives it), a handle stage's worker
# on Dask, a pure stage's Python worker on Spark. Ray's actor loss in a handle stage is
# in tests/test_ray.py, in the test session's runtime.
CASES = [("ray", "driver", 1), ("dask", "handle", 2), ("spark", "stage", 0)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


_REFERENCES: dict[str, dict[str, bytes]] = {}


def _reference(base, engine: str) -> dict[str, bytes]:
    text = faults.pipeline_text(engine, ROUNDS)  # Dask's and Ray's are the same
    if text not in _REFERENCES:
        _REFERENCES[text] = faults.reference(base, engine, ROUNDS)
    return _REFERENCES[text]


@pytest.mark.parametrize("engine,site,seed", [c for c in CASES if c[0] in BACKENDS],
                         ids=[f"{e}-{s}" for e, s, _ in CASES if e in BACKENDS])
def test_a_run_killed_at_a_seeded_point_ends_with_the_fault_free_result(engine, site, seed, base):
    pytest.importorskip(engine if engine != "spark" else "pyspark")
    expected = _reference(base, engine)
    assert expected["state.json"].count(b'"push"') == (faults.ITEMS * ROUNDS if engine != "spark" else 0)
    outcome = faults.run_case(base, engine, site, seed, expected, TIMEOUT, rounds=ROUNDS)
    assert outcome.verdict == "correct", outcome
    assert outcome.detail.startswith(f"{site} pid "), outcome  # the fault really was injected
    assert not outcome.leftovers and not outcome.strays, outcome
