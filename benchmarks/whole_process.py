"""pipec as a user runs it, against a hand-written program, each a whole process.

``benchmarks/overhead.py`` times pipec inside an engine session that is already running.
A user runs ``pipec run``: a process that imports pipec, compiles the file, starts the
engine, runs, writes its summary and stops the engine. This benchmark times exactly that
against a hand-written program for the same engine, also a whole process that imports its
engine, starts it the way the engine's own docs show (``Client()``, ``ray.init()``,
``SparkSession.builder...getOrCreate()``), runs the same functions on the same data and
exits. The two commands run in alternating pairs (A B, B A, ...) after one warm-up pair that
also checks both computed the same; it prints the median seconds of each and the ratio
pipec / hand-written (lower is better).

    python -m benchmarks.whole_process --backend dask|ray|spark [--pairs 3] [--quick]
                                       [--only mapreduce,...] [--json OUT]

The hand-written programs are the functions of ``benchmarks/hand_<backend>.py`` (the same
ones ``overhead.py`` uses); only how the engine starts differs, because here it is part of
what is timed. ``python -m benchmarks.whole_process --hand BACKEND WORKLOAD [k=v ...]`` is
one hand-written process (it prints its result as JSON). Both sides run with bytecode
caching on, as an installed program does, even where the calling shell sets
``PYTHONDONTWRITEBYTECODE``; the warm-up pair writes the caches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
BACKENDS = ("dask", "ray", "spark")


# ---- the hand-written side: one process, the engine started as its docs show ---------------------


@contextmanager
def idiomatic_engine(backend: str):
    """Start ``backend``'s engine as a user's script does, and stop it at the end."""
    if backend == "dask":
        from distributed import Client
        from benchmarks import hand_dask
        with Client() as client:  # a LocalCluster sized to the machine, as the Dask docs start one
            hand_dask._CLIENT[:] = [client]
            yield
    elif backend == "ray":
        import ray
        ray.init()
        try:
            yield
        finally:
            ray.shutdown()
    elif backend == "spark":
        from pyspark.sql import SparkSession
        spark = SparkSession.builder.master("local[*]").appName("hand-written").getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        try:
            yield
        finally:
            spark.stop()
    else:
        raise ValueError(f"unknown backend {backend!r}")


def run_hand(backend: str, workload: str, params: dict) -> dict:
    """Run one hand-written workload and give its outputs named as the pipeline's sinks."""
    import importlib
    progs = importlib.import_module(f"benchmarks.hand_{backend}")
    with idiomatic_engine(backend):
        if workload == "mapreduce":
            total, counts = progs.mapreduce(params["n"], params["parts"])
            return {"total_out": total, "counts_out": [list(kv) for kv in counts]}
        if workload == "paramserver":
            return {"weights": [float(x) for x in progs.paramserver(params["rows"], params["rounds"])]}
        if workload in ("wordcount", "wordcount_naive"):  # one hand-written program for both formulations
            return {"top_words": [list(kv) for kv in progs.wordcount(params["path"], params["parts"], params["n"])]}
    raise ValueError(f"unknown workload {workload!r}")


# ---- the timed pairs ----------------------------------------------------------------------------------


def commands(backend: str, workload: str, params: dict, run_dir: Path) -> dict[str, list[str]]:
    """The two whole-process commands of ``workload`` on ``backend``."""
    kv = [f"{k}={v}" for k, v in params.items()]
    hand = [sys.executable, "-m", "benchmarks.whole_process", "--hand", backend, workload, *kv]
    pipec = [sys.executable, "-m", "pipec", "run", str(HERE / f"{workload}.pipe"), "--backend", backend,
             "--run-dir", str(run_dir), "--json", *[a for p in kv for a in ("-p", p)]]
    return {"hand": hand, "pipec": pipec}


def timed(command: list[str]) -> tuple[float, str]:
    """Run ``command`` from the repository root; its wall time and stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # A user's Python keeps compiled bytecode beside the sources; with it switched off every
    # process compiles each module of the repository again (for pipec about 50 modules and
    # 0.1 s on the driver, and again in every worker), which no installed program pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def outputs_of(side: str, stdout: str) -> dict:
    """The named outputs one side printed (the hand-written JSON, or pipec's ``--json``)."""
    data = json.loads(stdout[stdout.index("{"):])
    return data if side == "hand" else data["outputs"]


def same_result(workload: str, hand: dict, pipec: dict) -> bool:
    """Whether both sides computed the same (weights to rounding, as overhead.py allows)."""
    if workload == "paramserver":
        import numpy as np
        return bool(np.allclose(hand["weights"], pipec["weights"], rtol=1e-12, atol=0))
    if workload in ("wordcount", "wordcount_naive"):  # ties between words of equal count may come in another order
        return [c for _, c in hand["top_words"]] == [c for _, c in pipec["top_words"]]
    return hand == pipec


def measure(backend: str, workload: str, params: dict, pairs: int, scratch: Path) -> dict:
    """One warm-up pair (checked for the same result), then ``pairs`` alternating pairs."""
    cmds = commands(backend, workload, params, scratch / "runs")
    warm = {side: outputs_of(side, timed(cmd)[1]) for side, cmd in cmds.items()}
    times: dict[str, list[float]] = {"hand": [], "pipec": []}
    for pair in range(pairs):
        order = ["hand", "pipec"] if pair % 2 == 0 else ["pipec", "hand"]
        for side in order:
            times[side].append(timed(cmds[side])[0])
    hand, pipec = statistics.median(times["hand"]), statistics.median(times["pipec"])
    return {"hand_written_s": round(hand, 3), "pipec_s": round(pipec, 3), "ratio": round(pipec / hand, 3),
            "same_result": same_result(workload, warm["hand"], warm["pipec"]),
            "hand_runs": [round(t, 3) for t in times["hand"]], "pipec_runs": [round(t, 3) for t in times["pipec"]]}


def workload_params(name: str, size: dict, scratch: Path) -> dict:
    """The parameters both sides get for workload ``name`` at ``size``."""
    from benchmarks import workloads as w
    if name in ("wordcount", "wordcount_naive"):
        path = scratch / "corpus.txt"
        if not path.exists():
            w.write_corpus(str(path), size["lines"], seed=0)
        return {"path": str(path), "parts": size["parts"], "n": size["n"]}
    return dict(size)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hand"]:
        backend, workload, *kv = argv[1:]
        params = {k: (v if k == "path" else int(v)) for k, v in (p.split("=", 1) for p in kv)}
        print(json.dumps(run_hand(backend, workload, params)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="dask")
    parser.add_argument("--pairs", type=int, default=3, help="timed pairs (after one warm-up pair)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", help="comma-separated workloads (default: mapreduce,paramserver,wordcount; "
                                       "wordcount_naive is examples/wordcount.pipe's formulation on the same data)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import workloads as w
    sizes = dict(w.SIZES["quick" if args.quick else "full"])
    names = args.only.split(",") if args.only else list(sizes)
    sizes["wordcount_naive"] = sizes["wordcount"]  # the same data and the same hand-written program
    unknown = [n for n in names if n not in sizes]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r} (choose from {', '.join(sizes)})")
    figures = {}
    with tempfile.TemporaryDirectory(prefix="pipec-whole-") as tmp:
        print(f"backend {args.backend}: whole processes, 1 warm-up pair + {args.pairs} alternating pairs, medians",
              file=sys.stderr)
        for name in names:
            figures[name] = measure(args.backend, name, workload_params(name, sizes[name], Path(tmp)),
                                    args.pairs, Path(tmp))
            print(f"  {name}: done", file=sys.stderr)
    from benchmarks.overhead import report
    return report(figures, args.json, width=12)


if __name__ == "__main__":
    sys.exit(main())
