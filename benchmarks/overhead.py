"""pipec's runtime overhead against hand-written, idiomatic engine programs.

Three workloads, each run as a hand-written Dask program and as the pipec pipeline
(benchmarks/*.pipe), on the same data, in the same engine session (one Client; starting
the engine is not timed), several times; prints the median seconds of each and the ratio
pipec / hand-written.

    python benchmarks/overhead.py --backend dask [--reps 5] [--address tcp://...] [--quick]

* mapreduce:   2,000,000 integers in 16 partitions; x -> (x*x) % 1000003; keep even;
               global sum and count per (value % 100)
* paramserver: synchronous SGD for linear regression, 200,000 rows x 10 features (numpy,
               seed 0) in 8 partitions, 20 rounds, weights held by an actor
* wordcount:   200,000 generated lines from a fixed vocabulary (seeded), top 20 words

Both programs of a workload call the same Python functions per element (the pipeline's
functions live in benchmarks/workloads.py), so the ratio measures what pipec adds:
lowering, the driver, graph submission, sealed boundaries. ``--only wordcount_naive``
runs examples/wordcount.pipe's formulation (a call per word and per pair) against the
same hand-written program, to show what that formulation costs.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
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


# ---- the hand-written programs ----------------------------------------------------------------


def hand_mapreduce(client, n: int, parts: int):
    import dask.bag as db
    evens = db.range(n, npartitions=parts).map(w.square_mod).filter(w.is_even)
    total, counts = client.compute([evens.sum(), evens.map(w.bucket_key).frequencies()], sync=True)
    return total, sorted(counts)


def _take(items, i, k):
    return items[i * len(items) // k:(i + 1) * len(items) // k]


def _partition_gradient(batches, weights):
    return functools.reduce(w.add_grads, [w.gradient(b, weights) for b in batches])


def _sum_grads(grads):
    return functools.reduce(w.add_grads, grads)


def hand_paramserver(client, rows: int, rounds: int, rate: float = 0.1):
    data = client.submit(w.make_rows, rows, 10, 0)
    parts = [client.submit(_take, data, i, 8) for i in range(8)]
    ps = client.submit(w.ParameterServer, 10, rate, actor=True).result()
    for _ in range(rounds):
        weights = ps.weights().result()
        grads = [client.submit(_partition_gradient, p, weights, pure=False) for p in parts]
        total = client.submit(_sum_grads, grads, pure=False).result()
        ps.apply(total).result()
    return ps.weights().result()


def hand_wordcount(client, path: str, parts: int, n: int):
    import dask.bag as db
    size = os.path.getsize(path)
    lines = db.read_text(path, blocksize=-(-size // parts))
    top = lines.map(w.words).flatten().frequencies().topk(n, key=1)
    return client.compute(top, sync=True)


# ---- the pipec pipelines ----------------------------------------------------------------------


def pipec_plan(name: str, backend: str, params: dict, address: str | None):
    from compiler.api import load
    pipeline = load(HERE / f"{name}.pipe")
    return pipeline.lower(backend, params, **({"address": address} if address else {}))


def run_plan(plan, client, run_dir: str):
    return plan.run(client=client, run_dir=run_dir)


# ---- timing -------------------------------------------------------------------------------------


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def sizes_of(size, name):
    return size if size is not None else SIZES["full"][name]


def workload_runs(name: str, size: dict | None, client, backend: str, address: str | None, scratch: Path):
    """(hand-written callable, pipec callable, a check that both computed the same)."""
    if name == "mapreduce":
        plan = pipec_plan(name, backend, {"n": size["n"], "parts": size["parts"]}, address)

        def check(hand, pipec):
            total, counts = hand
            return pipec.outputs["total_out"] == total and \
                [tuple(kv) for kv in pipec.outputs["counts_out"]] == [tuple(kv) for kv in counts]
        return (lambda: hand_mapreduce(client, size["n"], size["parts"]),
                lambda: run_plan(plan, client, str(scratch / "runs")), check)
    if name == "paramserver":
        plan = pipec_plan(name, backend, {"rows": size["rows"], "rounds": size["rounds"]}, address)

        def check(hand, pipec):
            return list(pipec.outputs["weights"]) == list(hand)
        return (lambda: hand_paramserver(client, size["rows"], size["rounds"]),
                lambda: run_plan(plan, client, str(scratch / "runs")), check)
    if name in ("wordcount", "wordcount_naive"):
        size = sizes_of(size, "wordcount")
        path = scratch / "corpus.txt"
        if not path.exists():
            w.write_corpus(str(path), size["lines"], seed=0)
        plan = pipec_plan(name, backend, {"path": str(path), "parts": size["parts"], "n": size["n"]}, address)

        def check(hand, pipec):
            return [c for _, c in pipec.outputs["top_words"]] == [c for _, c in hand]
        return (lambda: hand_wordcount(client, str(path), size["parts"], size["n"]),
                lambda: run_plan(plan, client, str(scratch / "runs")), check)
    raise ValueError(name)


def start_engine(backend: str, address: str | None):
    if backend != "dask":
        raise SystemExit(f"no hand-written programs for backend {backend!r} yet")
    from distributed import Client, LocalCluster
    from backends.dask.engine import LocalShape
    if address:
        return Client(address), None
    shape = LocalShape.of_machine()
    cluster = LocalCluster(n_workers=shape.workers, threads_per_worker=shape.threads, processes=True,
                           memory_limit=shape.memory, resources=shape.resources, dashboard_address="127.0.0.1:0",
                           silence_logs=logging.CRITICAL, host="127.0.0.1")
    return Client(cluster), cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="dask")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each program")
    parser.add_argument("--address", help="an existing scheduler (default: a local cluster)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", help="comma-separated workloads (default: all three)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    sizes = SIZES["quick" if args.quick else "full"]
    names = args.only.split(",") if args.only else list(sizes)
    client, cluster = start_engine(args.backend, args.address)
    figures = {}
    try:
        workers = len(client.scheduler_info()["workers"])
        print(f"backend {args.backend}, {workers} workers, {args.reps} repetitions (+1 warm-up), medians",
              file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="pipec-bench-") as tmp:
            for name in names:
                size = sizes.get(name, sizes["wordcount"] if name == "wordcount_naive" else None)
                hand, pipec, check = workload_runs(name, size, client, args.backend, args.address, Path(tmp))
                same = check(hand(), pipec())  # warm-up: imports, worker caches
                hand_times, pipec_times = [], []
                for rep in range(args.reps):
                    order = [(hand, hand_times), (pipec, pipec_times)]
                    for fn, times in (order if rep % 2 == 0 else order[::-1]):
                        times.append(timed(fn)[0])
                h, p = statistics.median(hand_times), statistics.median(pipec_times)
                figures[name] = {"hand_written_s": round(h, 4), "pipec_s": round(p, 4), "ratio": round(p / h, 3),
                                 "same_result": bool(same), "hand_runs": [round(t, 4) for t in hand_times],
                                 "pipec_runs": [round(t, 4) for t in pipec_times]}
                print(f"  {name}: done", file=sys.stderr)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    print(f"{'workload':<12} {'hand-written s':>15} {'pipec s':>9} {'pipec/hand':>11}  same result")
    for name, f in figures.items():
        print(f"{name:<12} {f['hand_written_s']:>15.3f} {f['pipec_s']:>9.3f} {f['ratio']:>11.2f}  "
              f"{'yes' if f['same_result'] else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
