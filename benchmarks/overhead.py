"""pipec's runtime overhead against hand-written, idiomatic engine programs.

Three workloads, each run as a hand-written program for the engine
(``benchmarks/hand_<backend>.py``) and as the pipec pipeline (``benchmarks/<name>.pipe``),
on the same data, in the same engine session (started once, not timed), alternating which
goes first, after one warm-up run of each that also checks both computed the same; prints
the median seconds of each and the ratio pipec / hand-written.

    python benchmarks/overhead.py --backend dask|ray|spark [--reps 5] [--quick]
                                  [--only mapreduce,...] [--address URL] [--json OUT]

* mapreduce:   2,000,000 integers in 16 partitions; x -> (x*x) % 1000003; keep even;
               global sum and count per (value % 100)
* paramserver: synchronous SGD for linear regression, 200,000 rows x 10 features (numpy,
               seed 0) in 8 partitions, 20 rounds, weights held by an actor
* wordcount:   200,000 generated lines from a fixed vocabulary (seeded), top 20 words

Both programs of a workload call the same Python functions (benchmarks/workloads.py), so
the ratio measures what pipec adds: lowering, the driver, task submission, the shared
semantics that make every backend byte-identical. ``--only wordcount_naive`` runs
examples/wordcount.pipe's formulation (a call per word and per pair) against the same
hand-written program, to show what that formulation costs.

A backend joins by providing ``benchmarks/hand_<backend>.py`` with ``engine(address)`` (a
context manager yielding a one-line description), ``engine_options()`` (the backend options for
needs to share the engine), ``WEIGHTS_RTOL`` and one function per workload.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and pipec importable
    sys.path.insert(0, str(ROOT))

from benchmarks import workloads as w  # noqa: E402

HERE = Path(__file__).resolve().parent
BACKENDS = ("dask", "ray", "spark")
WORKLOADS = ("mapreduce", "paramserver", "wordcount", "wordcount_naive")


def hand_written(backend: str):
    """The module of hand-written programs for ``backend``."""
    return importlib.import_module(f"benchmarks.hand_{backend}")


def pipec_plan(name: str, backend: str, params: dict):
    """The benchmark pipeline ``name``, lowered for ``backend`` with ``params``, on the
    engine session the hand-written programs use."""
    from pipec import load
    return load(HERE / f"{name}.pipe").lower(backend, params, **hand_written(backend).engine_options())


class Workload:
    """One workload on one backend: the hand-written call, the pipec call, and a check
    that both computed the same thing."""

    def __init__(self, hand: Callable[[], object], pipec: Callable[[], object], same: Callable[[object, object], bool]):
        self.hand, self.pipec, self.same = hand, pipec, same


def workload(name: str, size: dict, backend: str, scratch: Path) -> Workload:
    """Build workload ``name`` at ``size`` (a row of ``workloads.SIZES``) for ``backend``;
    its runs write under ``scratch``."""
    progs = hand_written(backend)
    runs = str(scratch / "runs" / name)

    def run(plan):
        return lambda: plan.run(run_dir=runs)

    if name == "mapreduce":
        plan = pipec_plan(name, backend, {"n": size["n"], "parts": size["parts"]})

        def same(hand, result):
            total, counts = hand
            return result.outputs["total_out"] == total and \
                [tuple(kv) for kv in result.outputs["counts_out"]] == [tuple(kv) for kv in counts]
        return Workload(lambda: progs.mapreduce(size["n"], size["parts"]), run(plan), same)
    if name == "paramserver":
        import numpy as np
        plan = pipec_plan(name, backend, {"rows": size["rows"], "rounds": size["rounds"]})

        def same(hand, result):
            return bool(np.allclose(result.outputs["weights"], hand, rtol=progs.WEIGHTS_RTOL, atol=0))
        return Workload(lambda: progs.paramserver(size["rows"], size["rounds"]), run(plan), same)
    if name in ("wordcount", "wordcount_naive"):
        path = scratch / "corpus.txt"
        if not path.exists():
            w.write_corpus(str(path), size["lines"], seed=0)
        plan = pipec_plan(name, backend, {"path": str(path), "parts": size["parts"], "n": size["n"]})

        def same(hand, result):
            # Ties between words of equal count may be listed in another order.
            return [c for _, c in result.outputs["top_words"]] == [c for _, c in hand]
        return Workload(lambda: progs.wordcount(str(path), size["parts"], size["n"]), run(plan), same)
    raise ValueError(f"unknown workload {name!r}")


def measure(load: Workload, reps: int) -> dict:
    """Warm up once (worker processes, imports, caches) and check both programs agree,
    then time ``reps`` runs of each, alternating which goes first."""
    same = load.same(load.hand(), load.pipec())
    times: dict[str, list[float]] = {"hand": [], "pipec": []}
    for rep in range(reps):
        order = [("hand", load.hand), ("pipec", load.pipec)]
        for key, fn in (order if rep % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    hand, pipec = statistics.median(times["hand"]), statistics.median(times["pipec"])
    return {"hand_written_s": round(hand, 4), "pipec_s": round(pipec, 4), "ratio": round(pipec / hand, 3),
            "same_result": bool(same), "hand_runs": [round(t, 4) for t in times["hand"]],
            "pipec_runs": [round(t, 4) for t in times["pipec"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="dask")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each program")
    parser.add_argument("--address", help="an existing cluster (default: the backend's embedded engine)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", help="comma-separated workloads (default: mapreduce,paramserver,wordcount)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    sizes = w.SIZES["quick" if args.quick else "full"]
    names = args.only.split(",") if args.only else list(sizes)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r} (choose from {', '.join(WORKLOADS)})")
    figures = {}
    with hand_written(args.backend).engine(args.address) as engine, \
            tempfile.TemporaryDirectory(prefix="pipec-bench-") as tmp:
        print(f"backend {args.backend} ({engine}), {args.reps} repetitions (+1 warm-up), medians",
              file=sys.stderr)
        for name in names:
            size = sizes["wordcount" if name == "wordcount_naive" else name]
            figures[name] = measure(workload(name, size, args.backend, Path(tmp)), args.reps)
            print(f"  {name}: done", file=sys.stderr)
    return report(figures, args.json)


def report(figures: dict[str, dict], json_path: str | None, width: int = 16) -> int:
    """Print the figures of every workload as a table (and write them to ``json_path``);
    the exit status: 0 when both programs computed the same everywhere."""
    print(f"{'workload':<{width}} {'hand-written s':>15} {'pipec s':>9} {'pipec/hand':>11}  same result")
    for name, f in figures.items():
        print(f"{name:<{width}} {f['hand_written_s']:>15.3f} {f['pipec_s']:>9.3f} {f['ratio']:>11.2f}  "
              f"{'yes' if f['same_result'] else 'NO'}")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0 if all(f["same_result"] for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
