"""pipec against each engine's own Parquet reader and writer, on one large dataset.

benchmarks/batches.pipe reads a Parquet dataset (columns ``id``, ``x``, ``y`` of four),
computes ``z = 2x + y`` and ``high = z > 1`` in two ``map_batches ... as arrow`` stages
and writes a Parquet dataset. The hand-written program for the engine
(``parquet(src, dst)`` in ``benchmarks/hand_<backend>.py``) does the same the way that
engine's users do: ``dask.dataframe.read_parquet ... to_parquet`` with column
arithmetic, ``ray.data.read_parquet ... map_batches ... write_parquet`` with the same
pyarrow functions, ``spark.read.parquet ... write.parquet`` with column expressions in
the JVM. Both run on the same engine session (started once, not timed), alternating
which goes first, after a warm-up run of each that checks both wrote the same rows
(compared by ``id``, every column bit for bit). Each run writes a fresh folder; lowering
the pipeline is part of pipec's time.

    python benchmarks/native_parquet.py --backend dask|ray|spark [--rows 10000000]
                                        [--reps 3] [--quick] [--address URL] [--json OUT]

Prints the median seconds of each and the ratio pipec / native (lower is better).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and pipec importable
    sys.path.insert(0, str(ROOT))

from benchmarks.batches import make_dataset  # noqa: E402
from benchmarks.overhead import BACKENDS, Workload, hand_written, pipec_plan, report  # noqa: E402


def read_sorted(folder: Path):
    """The rows a run wrote (every Parquet file under ``folder``), sorted by id."""
    import pyarrow.dataset as ds
    table = ds.dataset(str(folder), format="parquet").to_table(columns=["id", "z", "high"])
    return table.sort_by("id")


def workload(backend: str, scratch: Path, rows: int) -> Workload:
    """The native program and the pipeline for ``backend`` on a dataset of ``rows`` rows
    made under ``scratch``; each call writes a fresh folder there and gives its path."""
    native = hand_written(backend)
    src = scratch / "features"
    make_dataset(src, rows)
    runs = itertools.count()

    def by_native() -> Path:
        dst = scratch / f"native-{next(runs)}"
        native.parquet(str(src), str(dst))
        return dst

    def by_pipec() -> Path:
        n = next(runs)
        dst = scratch / f"pipec-{n}"
        plan = pipec_plan("batches", backend, {"src": str(src), "dst": str(dst)})
        plan.run(run_dir=str(scratch / "runs" / str(n)))
        return dst

    return Workload(by_native, by_pipec, lambda a, b: read_sorted(a).equals(read_sorted(b)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="dask")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each program")
    parser.add_argument("--quick", action="store_true", help="1,000,000 rows (a smoke test)")
    parser.add_argument("--address", help="an existing cluster (default: the backend's embedded engine)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    rows = 1_000_000 if args.quick else args.rows
    with tempfile.TemporaryDirectory(prefix="pipec-bench-") as tmp, \
            hand_written(args.backend).engine(args.address) as engine:
        load = workload(args.backend, Path(tmp), rows)
        print(f"backend {args.backend} ({engine}), {rows:,} rows, {args.reps} repetitions (+1 warm-up), "
              f"medians", file=sys.stderr)
        same = load.same(load.hand(), load.pipec())
        times: dict[str, list[float]] = {"native": [], "pipec": []}
        for rep in range(args.reps):
            order = [("native", load.hand), ("pipec", load.pipec)]
            for key, run in (order if rep % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                out = run()
                times[key].append(time.perf_counter() - start)
                shutil.rmtree(out)  # keep the disk to one copy of the output
    hand, pipec = statistics.median(times["native"]), statistics.median(times["pipec"])
    figures = {"parquet": {"hand_written_s": round(hand, 4), "pipec_s": round(pipec, 4),
                           "ratio": round(pipec / hand, 3), "same_result": bool(same), "rows": rows,
                           "hand_runs": [round(t, 4) for t in times["native"]],
                           "pipec_runs": [round(t, 4) for t in times["pipec"]]}}
    print("(hand-written = the engine's own reader and writer)")
    return report(figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
