"""pipec on Ray against hand-written, idiomatic Ray programs.

The same three workloads as benchmarks/overhead.py (the shared pipelines
benchmarks/*.pipe and functions benchmarks/workloads.py), each run as a hand-written Ray
core program and as the pipec pipeline on the same Ray runtime (started once, not timed),
alternating, several times; prints the median seconds of each and the ratio
pipec / hand-written.

    python benchmarks/overhead_ray.py [--reps 5] [--quick] [--only mapreduce,...] [--address HOST:PORT]

One function per workload, ``bench_<name>(size, reps, scratch) -> (hand_s, pipec_s)``,
so the workloads can move into overhead.py's harness unchanged.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and pipec importable
    sys.path.insert(0, str(ROOT))

from benchmarks import workloads as w  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZES = w.SIZES


# ---- the hand-written Ray programs ---------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _remote():
    """The hand-written programs' remote functions and actor, made once."""
    import ray

    @ray.remote
    def mapreduce_part(lo: int, hi: int):
        evens = [y for y in map(w.square_mod, range(lo, hi)) if w.is_even(y)]
        return sum(evens), Counter(map(w.bucket_key, evens))

    @ray.remote
    def gradient_part(batches, weights):
        return functools.reduce(w.add_grads, [w.gradient(b, weights) for b in batches])

    @ray.remote
    def wordcount_part(lines):
        return Counter(word for line in lines for word in w.words(line))

    class Remote:
        mapreduce = mapreduce_part
        gradient = gradient_part
        wordcount = wordcount_part
        server = ray.remote(w.ParameterServer)
    return Remote


def _blocks(items, k: int) -> list:
    return [items[i * len(items) // k:(i + 1) * len(items) // k] for i in range(k)]


def hand_mapreduce(n: int, parts: int):
    import ray
    results = ray.get([_remote().mapreduce.remote(i * n // parts, (i + 1) * n // parts) for i in range(parts)])
    counts = Counter()
    for _, part in results:
        counts.update(part)
    return sum(total for total, _ in results), sorted(counts.items())


def hand_paramserver(rows: int, rounds: int, rate: float = 0.1):
    import ray
    remote = _remote()
    parts = [ray.put(block) for block in _blocks(w.make_rows(rows, 10, 0), 8)]
    ps = remote.server.remote(10, rate)
    for _ in range(rounds):
        weights = ps.weights.remote()  # passed by reference: no trip through the driver
        grads = ray.get([remote.gradient.remote(p, weights) for p in parts])
        ray.get(ps.apply.remote(functools.reduce(w.add_grads, grads)))
    result = ray.get(ps.weights.remote())
    ray.kill(ps)
    return result


def hand_wordcount(path: str, parts: int, n: int):
    import ray
    with open(path, encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in fh]
    counters = ray.get([_remote().wordcount.remote(block) for block in _blocks(lines, parts)])
    total = Counter()
    for part in counters:
        total.update(part)
    return sorted(total.items(), key=lambda kv: -kv[1])[:n]


# ---- the pipec pipelines, and timing -----------------------------------------------------------


def _plan(name: str, params: dict):
    from compiler.api import load
    return load(HERE / f"{name}.pipe").lower("ray", params)


def _median_pair(hand, pipec, reps: int, check, record: dict | None) -> tuple[float, float]:
    """Warm up once (imports, worker caches), check both agree, then time ``reps`` runs
    of each, alternating which goes first; the medians."""
    if not check(hand(), pipec()):
        raise AssertionError("the hand-written program and pipec disagree")
    times: dict[str, list[float]] = {"hand": [], "pipec": []}
    for rep in range(reps):
        order = [("hand", hand), ("pipec", pipec)]
        for key, fn in (order if rep % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    if record is not None:
        record.update({k: [round(t, 4) for t in v] for k, v in times.items()})
    return statistics.median(times["hand"]), statistics.median(times["pipec"])


def bench_mapreduce(size: dict, reps: int, scratch: Path, record: dict | None = None) -> tuple[float, float]:
    plan = _plan("mapreduce", {"n": size["n"], "parts": size["parts"]})

    def check(hand, pipec):
        total, counts = hand
        return pipec.outputs["total_out"] == total and \
            [tuple(kv) for kv in pipec.outputs["counts_out"]] == [tuple(kv) for kv in counts]
    return _median_pair(lambda: hand_mapreduce(size["n"], size["parts"]),
                        lambda: plan.run(run_dir=str(scratch / "runs")), reps, check, record)


def bench_paramserver(size: dict, reps: int, scratch: Path, record: dict | None = None) -> tuple[float, float]:
    plan = _plan("paramserver", {"rows": size["rows"], "rounds": size["rounds"]})

    def check(hand, pipec):
        return list(pipec.outputs["weights"]) == list(hand)
    return _median_pair(lambda: hand_paramserver(size["rows"], size["rounds"]),
                        lambda: plan.run(run_dir=str(scratch / "runs")), reps, check, record)


def bench_wordcount(size: dict, reps: int, scratch: Path, record: dict | None = None) -> tuple[float, float]:
    path = scratch / "corpus.txt"
    if not path.exists():
        w.write_corpus(str(path), size["lines"], seed=0)
    plan = _plan("wordcount", {"path": str(path), "parts": size["parts"], "n": size["n"]})

    def check(hand, pipec):
        return [c for _, c in pipec.outputs["top_words"]] == [c for _, c in hand]
    return _median_pair(lambda: hand_wordcount(str(path), size["parts"], size["n"]),
                        lambda: plan.run(run_dir=str(scratch / "runs")), reps, check, record)


WORKLOADS = {"mapreduce": bench_mapreduce, "paramserver": bench_paramserver, "wordcount": bench_wordcount}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each program")
    parser.add_argument("--address", help="an existing Ray cluster (default: an embedded local runtime)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", help="comma-separated workloads (default: all three)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    from backends.ray.engine import start_runtime, stop_runtime
    import ray
    sizes = SIZES["quick" if args.quick else "full"]
    names = args.only.split(",") if args.only else list(sizes)
    start_runtime(args.address)  # not timed; pipec's runs reuse it
    figures = {}
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        print(f"backend ray, {cpus} CPUs, {args.reps} repetitions (+1 warm-up), medians", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="pipec-bench-") as tmp:
            for name in names:
                record: dict = {}
                hand, pipec = WORKLOADS[name](sizes[name], args.reps, Path(tmp), record)
                figures[name] = {"hand_written_s": round(hand, 4), "pipec_s": round(pipec, 4),
                                 "ratio": round(pipec / hand, 3), "hand_runs": record["hand"],
                                 "pipec_runs": record["pipec"]}
                print(f"  {name}: done", file=sys.stderr)
    finally:
        stop_runtime()
    print(f"{'workload':<12} {'hand-written s':>15} {'pipec s':>9} {'pipec/hand':>11}")
    for name, f in figures.items():
        print(f"{name:<12} {f['hand_written_s']:>15.3f} {f['pipec_s']:>9.3f} {f['ratio']:>11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
