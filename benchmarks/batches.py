"""What keeping partitions columnar between batch stages buys, on Dask.

benchmarks/batches.pipe reads a Parquet dataset (8 files), runs two ``map_batches ...
as arrow`` stages and writes a Parquet dataset. Timed three ways on one embedded Dask
cluster (started once, not timed), alternating, after a warm-up run of each that checks
all three wrote the same rows:

* **columnar**: the pipeline as pipec runs it (a table from the reader to the sink);
* **rows**: the same plan with every partition turned into Python rows (dicts) between
  the stages and before the sink, as it would be without the columnar rule
  (``planner.reads_columnar`` answering no);
* **hand-written**: one ``dask.delayed`` task per file doing the same with pyarrow.

Prints medians and the ratios rows / columnar and columnar / hand-written.

    python benchmarks/batches.py [--rows 2000000] [--reps 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FILES = 8


def make_dataset(folder: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in range(FILES):
        a, b = f * rows // FILES, (f + 1) * rows // FILES
        pq.write_table(pa.table({"id": np.arange(a, b), "x": rng.random(b - a), "y": rng.random(b - a),
                                 "unused": rng.random(b - a)}), folder / f"f{f}.parquet")


def hand_written(client, src: Path, dst: Path) -> None:
    import dask
    import pyarrow.parquet as pq
    from benchmarks.batch_work import scale, score

    def one(i: int, path: str) -> None:
        pq.write_table(score(scale(pq.read_table(path, columns=["id", "x", "y"]))), dst / f"part-{i:05d}.parquet")
    dst.mkdir(parents=True, exist_ok=True)
    tasks = [dask.delayed(one)(i, str(p)) for i, p in enumerate(sorted(src.glob("*.parquet")))]
    client.compute(tasks, sync=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 3 repetitions")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.reps = 200_000, 3

    import pyarrow.parquet as pq
    from benchmarks import hand_dask
    from pipec import load
    from pipec.backends.physical import planner

    with tempfile.TemporaryDirectory() as tmp, hand_dask.engine(None) as engine:
        tmp = Path(tmp)
        make_dataset(tmp / "features", args.rows)
        pipeline = load(ROOT / "benchmarks" / "batches.pipe")
        options = hand_dask.engine_options()
        columnar_rule = planner.reads_columnar

        def run_pipec(columnar: bool, dst: Path):
            planner.reads_columnar = columnar_rule if columnar else (lambda graph, node: False)
            try:
                pipeline.run(backend="dask", params={"src": str(tmp / "features"), "dst": str(dst)},
                             run_dir=str(tmp / "runs" / dst.name), **options)
            finally:
                planner.reads_columnar = columnar_rule

        ways = {"columnar": lambda dst: run_pipec(True, dst), "rows": lambda dst: run_pipec(False, dst),
                "hand-written": lambda dst: hand_written(options["client"], tmp / "features", dst)}
        outputs = {}
        for name, fn in ways.items():  # warm-up, and the check that all three agree
            fn(tmp / f"check-{name}")
            outputs[name] = pq.read_table(tmp / f"check-{name}").to_pylist()
        assert outputs["columnar"] == outputs["rows"] == outputs["hand-written"], "the three disagree"
        times: dict[str, list[float]] = {name: [] for name in ways}
        for rep in range(args.reps):
            order = list(ways) if rep % 2 == 0 else list(reversed(ways))
            for name in order:
                start = time.perf_counter()
                ways[name](tmp / f"{name}-{rep}")
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        print(f"{engine}; {args.rows:,} rows in {FILES} Parquet files, medians of {args.reps}")
        for name, t in med.items():
            print(f"  {name:<13} {t:7.3f} s")
        print(f"  rows / columnar         {med['rows'] / med['columnar']:.2f}")
        print(f"  columnar / hand-written {med['columnar'] / med['hand-written']:.2f}")


if __name__ == "__main__":
    main()
