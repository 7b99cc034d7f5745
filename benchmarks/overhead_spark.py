"""pipec on Spark against hand-written, idiomatic PySpark programs.

The same three workloads as benchmarks/overhead.py (the shared pipelines
benchmarks/*.pipe and functions benchmarks/workloads.py), each run as a hand-written
PySpark RDD program and as the pipec pipeline on the same SparkContext (started once, not
timed), alternating, after one warm-up run of each; prints the median seconds of each
and the ratio pipec / hand-written.

    python benchmarks/overhead_spark.py [--reps 5] [--quick] [--only mapreduce,...] [--address MASTER]

The hand-written programs are what the RDD programming guide teaches: chained
transformations, ``broadcast`` for the weights, ``treeReduce`` (default depth),
``reduceByKey`` and ``top``; the parameter server lives in the driver, as in any PySpark
program. The guide would also ``cache()`` the data read twice (mapreduce) or every round
(paramserver); measured here, that made both programs slower (2.36 s against 2.10 s,
5.79 s against 5.41 s), so the baseline leaves it out: pipec is compared with the faster
variant.

One function per workload, ``bench_<name>(size, reps, scratch) -> (hand_s, pipec_s)``,
so the workloads can move into overhead.py's harness unchanged.

Measured on a 2-core machine (embedded local[2,4], full sizes, medians of 5, while the
machine was otherwise quiet): mapreduce 2.47 s hand-written, 2.29 s pipec (0.93);
paramserver 5.61 s, 3.76 s (0.67); wordcount 1.06 s, 0.63 s (0.59). On paramserver the
difference is the reduction (one stage and a combine on the driver, against
treeReduce's two stages); mapreduce does the same Python work both ways (its collection
read twice is computed twice in both), so it stays near 1.
"""

from __future__ import annotations

import argparse
import json
import operator
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and pipec importable
    sys.path.insert(0, str(ROOT))

from benchmarks import workloads as w  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZES = w.SIZES


def _sc():
    from backends.spark.session import active
    return active()


# ---- the hand-written PySpark programs --------------------------------------------------------


def hand_mapreduce(n: int, parts: int):
    sc = _sc()
    evens = sc.parallelize(range(n), parts).map(w.square_mod).filter(w.is_even)
    total = evens.reduce(operator.add)
    counts = evens.map(w.bucket).reduceByKey(operator.add).collect()
    return total, sorted(counts)


def hand_paramserver(rows: int, rounds: int, rate: float = 0.1):
    sc = _sc()
    batches = sc.parallelize(w.make_rows(rows, 10, 0), 8)
    ps = w.ParameterServer(10, rate)
    for _ in range(rounds):
        weights = sc.broadcast(ps.weights())
        total = batches.map(lambda b: w.gradient(b, weights.value)).treeReduce(w.add_grads)
        ps.apply(total)
        weights.unpersist()
    return ps.weights()


def hand_wordcount(path: str, parts: int, n: int):
    sc = _sc()
    counts = sc.textFile(path, parts).flatMap(w.words).map(w.one).reduceByKey(w.add)
    return counts.top(n, key=w.count)


# ---- the pipec pipelines ------------------------------------------------------------------


def _plan(name: str, params: dict):
    from compiler.api import load
    return load(HERE / f"{name}.pipe").lower("spark", params)


def _median_pair(hand, pipec, reps: int, check, record: dict | None) -> tuple[float, float]:
    same = check(hand(), pipec())  # warm-up: worker processes, imports, the JIT of the JVM
    hand_times, pipec_times = [], []
    for rep in range(reps):
        order = [(hand, hand_times), (pipec, pipec_times)]
        for fn, times in (order if rep % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    if record is not None:
        record.update(same_result=bool(same), hand_runs=[round(t, 4) for t in hand_times],
                      pipec_runs=[round(t, 4) for t in pipec_times])
    return statistics.median(hand_times), statistics.median(pipec_times)


def bench_mapreduce(size: dict, reps: int, scratch: Path, record: dict | None = None) -> tuple[float, float]:
    plan = _plan("mapreduce", {"n": size["n"], "parts": size["parts"]})

    def check(hand, pipec):
        total, counts = hand
        return pipec.outputs["total_out"] == total and \
            [tuple(kv) for kv in pipec.outputs["counts_out"]] == [tuple(kv) for kv in counts]
    return _median_pair(lambda: hand_mapreduce(size["n"], size["parts"]),
                        lambda: plan.run(run_dir=str(scratch / "runs" / "mapreduce")), reps, check, record)


def bench_paramserver(size: dict, reps: int, scratch: Path, record: dict | None = None) -> tuple[float, float]:
    import numpy as np
    plan = _plan("paramserver", {"rows": size["rows"], "rounds": size["rounds"]})

    def check(hand, pipec):
        # treeReduce combines partials in task-completion order: equal up to rounding.
        return bool(np.allclose(pipec.outputs["weights"], hand, rtol=1e-12, atol=0))
    return _median_pair(lambda: hand_paramserver(size["rows"], size["rounds"]),
                        lambda: plan.run(run_dir=str(scratch / "runs" / "paramserver")), reps, check, record)


def bench_wordcount(size: dict, reps: int, scratch: Path, record: dict | None = None) -> tuple[float, float]:
    path = scratch / "corpus.txt"
    if not path.exists():
        w.write_corpus(str(path), size["lines"], seed=0)
    plan = _plan("wordcount", {"path": str(path), "parts": size["parts"], "n": size["n"]})

    def check(hand, pipec):
        return [c for _, c in pipec.outputs["top_words"]] == [c for _, c in hand]
    return _median_pair(lambda: hand_wordcount(str(path), size["parts"], size["n"]),
                        lambda: plan.run(run_dir=str(scratch / "runs" / "wordcount")), reps, check, record)


BENCHES = {"mapreduce": bench_mapreduce, "paramserver": bench_paramserver, "wordcount": bench_wordcount}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each program")
    parser.add_argument("--address", help="a Spark master (default: the embedded local[N,F])")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", help="comma-separated workloads (default: all three)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    from backends.spark.session import embedded_master, start
    sizes = SIZES["quick" if args.quick else "full"]
    names = args.only.split(",") if args.only else list(BENCHES)
    master = args.address or embedded_master()
    session = start(master, log_path=str(Path(tempfile.gettempdir()) / "pipec-bench-spark.log"))
    figures = {}
    try:
        print(f"backend spark on {master}, {args.reps} repetitions (+1 warm-up), medians", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="pipec-bench-") as tmp:
            for name in names:
                record: dict = {}
                h, p = BENCHES[name](sizes[name], args.reps, Path(tmp), record)
                figures[name] = {"hand_written_s": round(h, 4), "pipec_s": round(p, 4), "ratio": round(p / h, 3),
                                 **record}
                print(f"  {name}: done", file=sys.stderr)
    finally:
        session.stop()
    print(f"{'workload':<12} {'hand-written s':>15} {'pipec s':>9} {'pipec/hand':>11}  same result")
    for name, f in figures.items():
        print(f"{name:<12} {f['hand_written_s']:>15.3f} {f['pipec_s']:>9.3f} {f['ratio']:>11.2f}  "
              f"{'yes' if f['same_result'] else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
