"""The price of exactly-once: a big actor checkpointed every 3 calls, against no checkpoint.

benchmarks/snapshot.pipe is the paramserver workload with an actor whose state holds a
table of about 50 MB (``BigParameterServer``: each ``apply`` updates a sixteenth of it).
This benchmark runs it as written (``checkpoint every 3 calls``) and without the
checkpoint clause, fault-free, on the same engine session (started once, not timed),
alternating which goes first, after one warm-up run of each that also checks both ended
with the same state; it prints the median seconds of each and the overhead of the
checkpoints in percent.

    python benchmarks/snapshot_cost.py --backend local|dask|ray|spark [--reps 5] [--quick]
                                       [--mb 50] [--rounds 24] [--address URL]
                                       [--profile OUT] [--json OUT]

``--profile OUT`` also runs the checkpointed pipeline once under cProfile (the driver's
process: where the local and Spark backends host their actors) and writes the stats
to OUT (read them with ``python -m pstats OUT``), printing the top entries.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and pipec importable
    sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
PIPELINE = HERE / "snapshot.pipe"
BACKENDS = ("local", "dask", "ray", "spark")
CLAUSE = "checkpoint every 3 calls"
SIZES = {"full": {"rows": 1_000_000, "rounds": 24, "mb": 50.0},
         "quick": {"rows": 20_000, "rounds": 6, "mb": 2.0}}


@contextlib.contextmanager
def engine(backend: str, address: str | None):
    """The engine session every run shares (the hand-written benchmarks' own), yielding
    ``(description, run options)``; the local backend needs none."""
    if backend == "local":
        yield "this process", {}
        return
    from benchmarks import overhead
    progs = overhead.hand_written(backend)
    with progs.engine(address) as description:
        yield description, progs.engine_options()


def pipelines():
    """``{"checkpointed": Pipeline, "plain": Pipeline}``: benchmarks/snapshot.pipe as
    written, and the same text without its checkpoint clause."""
    from pipec.api import load_source
    from pipec.dsl.source import SourceFile
    text = PIPELINE.read_text(encoding="utf-8")
    assert CLAUSE in text, f"{PIPELINE} lost its `{CLAUSE}` clause"
    return {"checkpointed": load_source(SourceFile(str(PIPELINE), text)),
            "plain": load_source(SourceFile(str(PIPELINE), text.replace(CLAUSE, "")))}


class Runner:
    """Runs one variant on ``backend`` with ``params``, each run in a fresh run folder
    under ``scratch`` (removed afterwards: the snapshots are big)."""

    def __init__(self, pipeline, backend: str, params: dict, options: dict, scratch: Path, name: str):
        self.plan = pipeline.lower(backend, params, **options)
        self.scratch, self.name, self.runs = scratch, name, 0

    def __call__(self):
        self.runs += 1
        run_dir = self.scratch / f"{self.name}-{self.runs}"
        try:
            return self.plan.run(run_dir=str(run_dir))
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


def measure(runners: dict[str, Runner], reps: int) -> dict:
    """Warm up each variant once (checking both end with the same actor state), then
    time ``reps`` runs of each, alternating which goes first."""
    warm = {name: run() for name, run in runners.items()}
    same = warm["checkpointed"].outputs["digest"] == warm["plain"].outputs["digest"]
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for rep in range(reps):
        for name in (order if rep % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    plain, checkpointed = statistics.median(times["plain"]), statistics.median(times["checkpointed"])
    return {"plain_s": round(plain, 4), "checkpointed_s": round(checkpointed, 4),
            "overhead_pct": round(100 * (checkpointed / plain - 1), 1), "same_result": bool(same),
            "plain_runs": [round(t, 4) for t in times["plain"]],
            "checkpointed_runs": [round(t, 4) for t in times["checkpointed"]]}


def profile(run: Runner, out: str, top: int = 25) -> None:
    """One run of ``run`` under cProfile; the stats go to ``out``, the top entries by
    cumulative time to standard error."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run()
    finally:
        profiler.disable()
    profiler.dump_stats(out)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    print(text.getvalue(), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="local")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each variant")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--mb", type=float, help="the actor's table in MB (default 50; --quick: 2)")
    parser.add_argument("--rounds", type=int, help="rounds of the loop (default 24; --quick: 6)")
    parser.add_argument("--rows", type=int, help="rows of data (default 1,000,000; --quick: 20,000)")
    parser.add_argument("--address", help="an existing cluster (default: the backend's embedded engine)")
    parser.add_argument("--profile", help="also profile one checkpointed run; write the stats here")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    params = dict(SIZES["quick" if args.quick else "full"])
    params.update({k: v for k, v in (("mb", args.mb), ("rounds", args.rounds), ("rows", args.rows)) if v is not None})
    variants = pipelines()
    with engine(args.backend, args.address) as (description, options), \
            tempfile.TemporaryDirectory(prefix="pipec-bench-snapshot-") as tmp:
        print(f"backend {args.backend} ({description}), actor state {params['mb']:g} MB, {params['rounds']} rounds, "
              f"{args.reps} repetitions (+1 warm-up), medians", file=sys.stderr)
        runners = {name: Runner(p, args.backend, params, options, Path(tmp), name) for name, p in variants.items()}
        figures = measure(runners, args.reps)
        if args.profile:
            profile(runners["checkpointed"], args.profile)
    figures.update(backend=args.backend, **params)
    return report(figures, args.json)


def report(figures: dict, json_path: str | None) -> int:
    """Print the figures (and write them to ``json_path``); the exit status: 0 when both
    variants ended with the same actor state."""
    print(f"{'backend':<8} {'no checkpoint s':>16} {'every 3 calls s':>16} {'overhead':>9}  same result")
    print(f"{figures['backend']:<8} {figures['plain_s']:>16.3f} {figures['checkpointed_s']:>16.3f} "
          f"{figures['overhead_pct']:>8.1f}%  {'yes' if figures['same_result'] else 'NO'}")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0 if figures["same_result"] else 1


if __name__ == "__main__":
    sys.exit(main())
