"""Scaling curves: pipec's cost grows as the work grows, not faster.

Three curves, each point checked against a plain Python/numpy reference, printed as a
table and drawn as a self-contained HTML page (inline SVG, no network):

    python benchmarks/scaling.py --backend dask|ray|spark [--curve rounds|partitions|rows]
                                 [--points 16,64,...] [--quick] [--reps N] [--address URL]
                                 [--json OUT] [--html OUT]

* rounds:     benchmarks/paramserver.pipe (200,000 rows in 8 partitions) for 20, 100, 300
              and 1,000 rounds. pipec's time per round is read round by round (the run's
              progress hooks: from a round's start to its end), so the work before the loop
              is not in it, and the first round (one-off costs, such as an actor starting
              inside it) is shown apart; the hand-written program
              (benchmarks/hand_<backend>.py) runs the same rounds beside it, its time per
              round being its whole time / rounds.
              Goal: pipec's time per round constant within 10 %.
* partitions: benchmarks/mapreduce.pipe on the same 2,000,000 integers cut into 16, 64,
              256 and 1,024 partitions, against the hand-written program on the same
              engine session, alternating. The overhead per task is the marginal cost of
              a task: (time(P) - time(16)) / (tasks(P) - tasks(16)), with pipec's tasks
              counted from its plan (what ``pipec compile`` lists) and the hand-written
              program's from its own graph; beside it, the engine's floor: the time per task of 1,024 empty
              tasks. Goal: pipec's overhead per task within 2x of the hand-written's.
* rows:       benchmarks/mapreduce.pipe on 2M, 5M, 10M, 20M and 50M integers in 16
              partitions, each point in a fresh process that starts its own engine (not
              timed) and warms it up, so the driver's peak memory (RSS sampled every 5 ms
              in a thread, and ``getrusage``'s maximum) is that run's own. Goal: time
              linear in the rows, the driver's memory flat.

``--quick`` runs tiny sizes (a smoke run); ``--curve`` picks one curve (default: all).
The engine is started once per invocation as ``benchmarks/overhead.py`` starts it (the
rows curve starts one per point); its start is never timed. Every figure carries the
1-minute load average when its point started: on a shared machine it says how far to
trust it.
"""

from __future__ import annotations

import argparse
import functools
import html
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and pipec importable
    sys.path.insert(0, str(ROOT))

from benchmarks import workloads as w  # noqa: E402
from benchmarks.overhead import hand_written, pipec_plan  # noqa: E402
from pipec.backends.base import NoProgress  # noqa: E402

BACKENDS = ("dask", "ray", "spark")
CURVES = ("rounds", "partitions", "rows")

# The points of each curve, as issue 16 sets them ('full'), and a smoke variant.
SIZES = {
    "full": {"rounds": {"points": [20, 100, 300, 1000], "rows": 200_000},
             "partitions": {"points": [16, 64, 256, 1024], "n": 2_000_000, "floor_tasks": 1024},
             "rows": {"points": [2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000], "parts": 16}},
    "quick": {"rounds": {"points": [2, 4, 8], "rows": 16_000},
              "partitions": {"points": [4, 8, 16], "n": 20_000, "floor_tasks": 32},
              "rows": {"points": [20_000, 40_000, 80_000], "parts": 4}},
}

# The goals of issue 16, item 5.
ROUND_TOLERANCE = 0.10   # time per round within 10 % of the first point's
TASK_OVERHEAD_RATIO = 2.0  # pipec's overhead per task within 2x of the hand-written's


def load_average() -> float:
    """The machine's 1-minute load average."""
    return round(os.getloadavg()[0], 2)


# ---- references: what every point must compute ---------------------------------------------------


def mapreduce_reference(n: int) -> tuple[int, list[tuple[int, int]]]:
    """mapreduce.pipe's (total, counts) for ``range(n)``, in numpy, a block at a time."""
    import numpy as np
    total, counts = 0, np.zeros(100, dtype=np.int64)
    for lo in range(0, n, 4_000_000):
        x = np.arange(lo, min(n, lo + 4_000_000), dtype=np.int64)
        y = (x * x) % 1000003  # x*x < 2**63 for x < 3e9
        y = y[y % 2 == 0]
        total += int(y.sum())
        counts += np.bincount(y % 100, minlength=100)
    return total, [(k, int(c)) for k, c in enumerate(counts) if c]


def paramserver_reference(rows: int, rounds: list[int], rate: float = 0.1) -> dict[int, list[float]]:
    """paramserver.pipe's weights after each count of ``rounds``, computed in this process
    with the same functions, adding the partial gradients in partition order as pipec
    defines it (so the weights must agree exactly)."""
    data = w.make_rows(rows, 10, 0)
    parts = [data[i * len(data) // 8:(i + 1) * len(data) // 8] for i in range(8)]
    ps = w.ParameterServer(10, rate)
    wanted, out = set(rounds), {}
    for r in range(1, max(rounds) + 1):
        weights = ps.weights()
        grads = [functools.reduce(w.add_grads, [w.gradient(b, weights) for b in p]) for p in parts]
        ps.apply(functools.reduce(w.add_grads, grads))
        if r in wanted:
            out[r] = [float(x) for x in ps.weights()]
    return out


# ---- what pipec's driver reports while it runs ---------------------------------------------------


class Recorder(NoProgress):
    """Progress hooks that time each round. A NoProgress, so the engines take the path of
    an unwatched run (one wait per graph, not one per task) and the figures are a plain
    run's."""

    def __init__(self):
        self.round_seconds: list[float] = []
        self._started: float | None = None

    def round(self, loop: str, index: int, count: int) -> None:
        self._started = time.perf_counter()

    def round_end(self, loop: str, index: int, count: int, ok: bool) -> None:
        if self._started is not None:
            self.round_seconds.append(time.perf_counter() - self._started)
            self._started = None


def timed_run(plan, run_dir: str) -> tuple[float, object, Recorder]:
    """Run ``plan`` once; its wall time, result and recorder."""
    recorder = Recorder()
    start = time.perf_counter()
    result = plan.run(progress=recorder, run_dir=run_dir)
    return time.perf_counter() - start, result, recorder


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# ---- the hand-written side: task counts and the engine's floor -------------------------------------


def hand_mapreduce_tasks(backend: str, n: int, parts: int) -> tuple[int, int | None]:
    """How many tasks the hand-written mapreduce of ``backend`` runs at ``parts``, and how
    many task-to-task dependencies they have (None where the engine does not show them)."""
    if backend == "dask":  # the optimised graph ``client.compute`` submits
        import dask
        import dask.bag as db
        from dask.core import get_dependencies
        evens = db.range(n, npartitions=parts).map(w.square_mod).filter(w.is_even)
        graph: dict = {}
        for collection in dask.optimize(evens.sum(), evens.map(w.bucket_key).frequencies()):
            graph.update(dict(collection.__dask_graph__()))
        return len(graph), sum(len(get_dependencies(graph, key)) for key in graph)
    if backend == "ray":  # one remote task per block, merged on the driver
        return parts, 0
    if backend == "spark":  # reduce: a task per partition; reduceByKey: a map and a result task per partition
        return 3 * parts, None
    raise ValueError(f"unknown backend {backend!r}")


def plan_tasks(plan) -> tuple[int, int]:
    """How many tasks pipec's plan submits and how many task-to-task dependencies they
    have (``pipec compile``'s tasks and their ``deps``; the same on every engine)."""
    tasks = [task for step in plan.to_json()["steps"] for task in step.get("tasks") or ()]
    return len(tasks), sum(len(task.get("deps", ())) for task in tasks)


def _noop(i):
    return i


def engine_floor(backend: str, tasks: int) -> float:
    """Seconds per task of ``tasks`` empty tasks on the engine session (best of 3, after
    a warm-up): the least a task costs on this engine."""
    if backend == "dask":
        from benchmarks import hand_dask
        client = hand_dask._CLIENT[0]

        def run():
            client.gather(client.map(_noop, range(tasks), pure=False))
    elif backend == "ray":
        import ray
        noop = ray.remote(_noop)

        def run():
            ray.get([noop.remote(i) for i in range(tasks)])
    elif backend == "spark":
        from pipec.backends.spark.session import active
        sc = active()

        def run():
            sc.parallelize(range(tasks), tasks).map(_noop).count()
    else:
        raise ValueError(f"unknown backend {backend!r}")
    run()
    return min(timed(run)[0] for _ in range(3)) / tasks


# ---- the curves ----------------------------------------------------------------------------------


@dataclass
class Curve:
    """One curve's points (a dict each) and what it found."""

    name: str
    backend: str
    points: list[dict]
    notes: dict

    def to_json(self) -> dict:
        return {"name": self.name, "backend": self.backend, "points": self.points, "notes": self.notes}


def rounds_curve(backend: str, size: dict, scratch: Path, log=print) -> Curve:
    """paramserver for each count of rounds: pipec (time per round from its round hooks)
    and the hand-written program, alternating which goes first."""
    import numpy as np
    progs = hand_written(backend)
    points = size["points"]
    reference = paramserver_reference(size["rows"], points)
    # Warm-up at the smallest point: worker imports, caches.
    pipec_plan("paramserver", backend, {"rows": size["rows"], "rounds": points[0]}).run(run_dir=str(scratch / "warm"))
    progs.paramserver(size["rows"], points[0])
    out = []
    for k, rounds in enumerate(points):
        load = load_average()
        plan = pipec_plan("paramserver", backend, {"rows": size["rows"], "rounds": rounds})
        pipec_side = lambda: timed_run(plan, str(scratch / f"rounds-{rounds}"))  # noqa: E731
        hand_side = lambda: timed(lambda: progs.paramserver(size["rows"], rounds))  # noqa: E731
        if k % 2 == 0:
            seconds, result, rec = pipec_side()
            hand_s, hand = hand_side()
        else:
            hand_s, hand = hand_side()
            seconds, result, rec = pipec_side()
        per = rec.round_seconds
        # The first round pays one-off costs (on Ray the actor starts inside it, about a
        # second at load 30): it is shown apart, and the time per round is the rest's.
        steady = per[1:] or per
        tenth = per[-max(1, len(per) // 10):]
        want = np.array(reference[rounds])
        out.append({
            "rounds": rounds, "load": load, "pipec_s": round(seconds, 4), "hand_s": round(hand_s, 4),
            "first_round_ms": round(1e3 * per[0], 3),
            "per_round_ms": round(1e3 * statistics.fmean(steady), 3),
            "median_round_ms": round(1e3 * statistics.median(steady), 3),
            "last_tenth_ms": round(1e3 * statistics.fmean(tenth), 3),
            "pipec_total_per_round_ms": round(1e3 * seconds / rounds, 3),
            "hand_per_round_ms": round(1e3 * hand_s / rounds, 3),
            "round_ms": [round(1e3 * s, 3) for s in per],
            "same_result": bool(np.array_equal(np.asarray(result.outputs["weights"]), want)
                                and np.allclose(np.asarray(hand), want, rtol=progs.WEIGHTS_RTOL, atol=0)),
        })
        log(f"  rounds {rounds}: {out[-1]['per_round_ms']:.1f} ms a round (load {load})")
    first = out[0]["per_round_ms"]
    for p in out:
        p["vs_first"] = round(p["per_round_ms"] / first, 3)
    worst = max(abs(p["vs_first"] - 1) for p in out)
    return Curve("rounds", backend, out, {"worst_change": round(worst, 3), "goal": ROUND_TOLERANCE,
                                         "met": worst <= ROUND_TOLERANCE})


def partitions_curve(backend: str, size: dict, scratch: Path, reps: int, log=print) -> Curve:
    """mapreduce on the same data cut ever finer: pipec and the hand-written program,
    alternating, medians of ``reps``; then the marginal cost of a task."""
    progs = hand_written(backend)
    n, points = size["n"], size["points"]
    reference = mapreduce_reference(n)
    floor = engine_floor(backend, size["floor_tasks"])
    log(f"  engine floor: {1e6 * floor:.0f} us a task ({size['floor_tasks']} empty tasks, load {load_average()})")
    pipec_plan("mapreduce", backend, {"n": n, "parts": points[0]})  # imports: not part of lowering's time
    out = []
    for parts in points:
        load = load_average()
        lower_s, plan = timed(lambda: pipec_plan("mapreduce", backend, {"n": n, "parts": parts}))
        run_dir = str(scratch / f"parts-{parts}")
        # A warm-up of each side, also the check.
        _, result, _ = timed_run(plan, run_dir)
        hand = progs.mapreduce(n, parts)
        got = (result.outputs["total_out"], [tuple(kv) for kv in result.outputs["counts_out"]])
        same = got == reference and (hand[0], [tuple(kv) for kv in hand[1]]) == reference
        hand_tasks, hand_deps = hand_mapreduce_tasks(backend, n, parts)
        pipec_tasks, pipec_deps = plan_tasks(plan)
        times = {"pipec": [], "hand": []}
        for rep in range(reps):
            order = ["hand", "pipec"] if rep % 2 == 0 else ["pipec", "hand"]
            for side in order:
                if side == "pipec":
                    times["pipec"].append(timed_run(plan, run_dir)[0])
                else:
                    times["hand"].append(timed(lambda: progs.mapreduce(n, parts))[0])
        out.append({"partitions": parts, "load": load, "lower_s": round(lower_s, 4),
                    "pipec_s": round(statistics.median(times["pipec"]), 4),
                    "hand_s": round(statistics.median(times["hand"]), 4),
                    "pipec_tasks": pipec_tasks, "pipec_dependencies": pipec_deps,
                    "hand_tasks": hand_tasks, "hand_dependencies": hand_deps,
                    "pipec_runs": [round(t, 4) for t in times["pipec"]],
                    "hand_runs": [round(t, 4) for t in times["hand"]], "same_result": same})
        log(f"  partitions {parts}: pipec {out[-1]['pipec_s']:.3f} s, hand-written {out[-1]['hand_s']:.3f} s "
            f"(load {load})")
    base = out[0]
    for p in out[1:]:
        for side in ("pipec", "hand"):
            extra = p[f"{side}_tasks"] - base[f"{side}_tasks"]
            p[f"{side}_us_per_task"] = round(1e6 * (p[f"{side}_s"] - base[f"{side}_s"]) / extra, 1)
            p[f"{side}_us_per_partition"] = round(
                1e6 * (p[f"{side}_s"] - base[f"{side}_s"]) / (p["partitions"] - base["partitions"]), 1)
        p["task_ratio"] = (round(p["pipec_us_per_task"] / p["hand_us_per_task"], 2)
                           if p["hand_us_per_task"] > 0 else None)
    ratios = [p["task_ratio"] for p in out[1:] if p.get("task_ratio") is not None]
    worst = max(ratios) if ratios else None
    return Curve("partitions", backend, out, {
        "engine_floor_us_per_task": round(1e6 * floor, 1), "floor_tasks": size["floor_tasks"],
        "worst_task_ratio": worst,
        "goal": TASK_OVERHEAD_RATIO, "met": worst is not None and worst <= TASK_OVERHEAD_RATIO})


class PeakRss:
    """The process's resident memory, sampled in a thread every ``every`` seconds; the
    peak seen between ``start`` and ``stop``."""

    def __init__(self, every: float = 0.005):
        import psutil
        self._proc = psutil.Process()
        self.every = every
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.every)

    def __enter__(self):
        self.before = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return False


def max_rss() -> int:
    """The process's peak resident memory so far, in bytes (``getrusage``)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux gives kilobytes


def rows_point(backend: str, n: int, parts: int, scratch: Path) -> dict:
    """One point of the rows curve on the engine session already running: a warm-up on
    a tiny range (imports, worker start), then one timed run at ``n`` with the driver's
    memory watched."""
    pipec_plan("mapreduce", backend, {"n": 1000 * parts, "parts": parts}).run(run_dir=str(scratch / "warm"))
    plan = pipec_plan("mapreduce", backend, {"n": n, "parts": parts})
    peak_before = max_rss()
    load = load_average()
    with PeakRss() as rss:
        seconds, result, _ = timed_run(plan, str(scratch / f"rows-{n}"))
    got = (result.outputs["total_out"], [tuple(kv) for kv in result.outputs["counts_out"]])
    return {"rows": n, "partitions": parts, "load": load, "pipec_s": round(seconds, 4), "tasks": plan_tasks(plan)[0],
            "rss_before_mb": round(rss.before / 2**20, 1), "rss_peak_mb": round(rss.peak / 2**20, 1),
            "rss_growth_mb": round((rss.peak - rss.before) / 2**20, 1),
            "maxrss_before_mb": round(peak_before / 2**20, 1), "maxrss_after_mb": round(max_rss() / 2**20, 1),
            "same_result": got == mapreduce_reference(n)}


def rows_curve(backend: str, size: dict, scratch: Path, fresh: bool = True, address: str | None = None,
               log=print) -> Curve:
    """mapreduce on ever more rows; each point in a fresh process (``fresh``), or on this
    process's engine session (a smoke test: then memory figures share one process)."""
    out = []
    for n in size["points"]:
        if fresh:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--point", "rows", "--backend", backend,
                   "--n", str(n), "--parts", str(size["parts"])] + (["--address", address] if address else [])
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"rows point {n} failed ({done.returncode}):\n{done.stderr[-2000:]}")
            out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            out.append(rows_point(backend, n, size["parts"], scratch / f"rows-{n}"))
        log(f"  rows {n:,}: {out[-1]['pipec_s']:.3f} s, driver peak {out[-1]['rss_peak_mb']:.0f} MB "
            f"(+{out[-1]['rss_growth_mb']:.1f} MB) (load {out[-1]['load']})")
    first = out[0]
    for p in out:
        p["s_per_million"] = round(p["pipec_s"] / (p["rows"] / 1e6), 4)
        p["per_row_vs_first"] = round(p["s_per_million"] / first["s_per_million"], 3)
    slope, intercept = _fit([p["rows"] / 1e6 for p in out], [p["pipec_s"] for p in out])
    worst = max(p["per_row_vs_first"] for p in out)
    growth = max(p["rss_growth_mb"] for p in out)
    return Curve("rows", backend, out, {
        "fit_s_per_million": round(slope, 4), "fit_intercept_s": round(intercept, 4),
        "worst_per_row_vs_first": worst, "largest_driver_growth_mb": growth,
        "linear": worst <= 1 + ROUND_TOLERANCE})


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of ys on xs."""
    if len(xs) < 2:
        return (ys[0] / xs[0] if xs and xs[0] else 0.0), 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


# ---- the table --------------------------------------------------------------------------------------


def table(curve: Curve) -> str:
    """The curve's figures as a plain-text table."""
    p = curve.points
    lines = []
    if curve.name == "rounds":
        lines.append(f"{'rounds':>7} {'pipec s':>9} {'1st ms':>8} {'ms/round':>9} {'median':>8} {'last 10%':>9} "
                     f"{'vs first':>9} {'hand s':>8} {'hand ms/round':>14} {'load':>6}  same")
        for q in p:
            lines.append(f"{q['rounds']:>7} {q['pipec_s']:>9.3f} {q['first_round_ms']:>8.1f} {q['per_round_ms']:>9.2f} "
                         f"{q['median_round_ms']:>8.2f} {q['last_tenth_ms']:>9.2f} {q['vs_first']:>9.2f} "
                         f"{q['hand_s']:>8.3f} {q['hand_per_round_ms']:>14.2f} {q['load']:>6.2f}  "
                         f"{_yes(q['same_result'])}")
        n = curve.notes
        lines.append(f"worst change of the time per round against the first point: {100 * n['worst_change']:.1f} % "
                     f"(goal {100 * n['goal']:.0f} %: {'met' if n['met'] else 'NOT met'})")
    elif curve.name == "partitions":
        lines.append(f"{'parts':>6} {'lower s':>8} {'pipec s':>8} {'tasks':>6} {'deps':>8} {'us/task':>8} "
                     f"{'us/part':>8} {'hand s':>8} {'tasks':>6} {'deps':>8} {'us/task':>8} {'us/part':>8} "
                     f"{'ratio':>6} {'load':>6}  same")
        for q in p:
            def f(key, fmt=">8.0f"):
                return format(q[key], fmt) if key in q and q[key] is not None else f"{'-':>{fmt[1:].split('.')[0]}}"
            lines.append(f"{q['partitions']:>6} {q['lower_s']:>8.3f} {q['pipec_s']:>8.3f} {q['pipec_tasks']:>6} "
                         f"{f('pipec_dependencies')} {f('pipec_us_per_task')} {f('pipec_us_per_partition')} "
                         f"{q['hand_s']:>8.3f} {q['hand_tasks']:>6} {f('hand_dependencies')} "
                         f"{f('hand_us_per_task')} {f('hand_us_per_partition')} "
                         f"{f('task_ratio', '>6.2f')} {q['load']:>6.2f}  {_yes(q['same_result'])}")
        n = curve.notes
        worst = "-" if n["worst_task_ratio"] is None else f"{n['worst_task_ratio']:.2f}"
        lines.append(f"deps: task-to-task dependencies; us/task: the marginal cost of a task against the first "
                     f"point; the engine's floor "
                     f"{n['engine_floor_us_per_task']:.0f} us a task. Worst pipec/hand-written ratio {worst} "
                     f"(goal {n['goal']:.0f}x: {'met' if n['met'] else 'NOT met'})")
    else:
        lines.append(f"{'rows':>11} {'pipec s':>9} {'s/M rows':>9} {'vs first':>9} {'tasks':>6} "
                     f"{'rss MB':>8} {'peak MB':>8} {'growth':>7} {'maxrss':>8} {'load':>6}  same")
        for q in p:
            lines.append(f"{q['rows']:>11,} {q['pipec_s']:>9.3f} {q['s_per_million']:>9.4f} "
                         f"{q['per_row_vs_first']:>9.2f} {q['tasks']:>6} {q['rss_before_mb']:>8.1f} "
                         f"{q['rss_peak_mb']:>8.1f} {q['rss_growth_mb']:>7.1f} {q['maxrss_after_mb']:>8.1f} "
                         f"{q['load']:>6.2f}  {_yes(q['same_result'])}")
        n = curve.notes
        lines.append(f"fit: {n['fit_intercept_s']:.3f} s + {n['fit_s_per_million']:.4f} s per million rows; "
                     f"driver memory grew at most {n['largest_driver_growth_mb']:.1f} MB during a run")
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


# ---- the chart: inline SVG, drawn here ------------------------------------------------------------------

COLOURS = {"pipec": "#1f6feb", "hand": "#d9480f", "extra": "#2f9e44", "floor": "#868e96"}


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step)) + 1)]


def _fmt(v: float) -> str:
    if v >= 1e6 and v % 1e6 == 0:
        return f"{v / 1e6:g}M"
    if v >= 1e4 and v % 1e3 == 0:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def svg_chart(title: str, x_label: str, y_label: str, series: list[dict], log_x: bool = True,
              bands: list[dict] | None = None, width: int = 600, height: int = 330) -> str:
    """A line chart as an SVG element. ``series``: dicts with ``label``, ``colour``,
    ``points`` [(x, y)] and optional ``dash``; ``bands``: shaded y ranges (``lo``, ``hi``,
    ``label``), a goal's tolerance say. X on a log scale by default."""
    left, right, top, bottom = 64, 16, 34, 46
    pw, ph = width - left - right, height - top - bottom
    xs = sorted({x for s in series for x, _ in s["points"]})
    ys = [y for s in series for _, y in s["points"]] + [b["hi"] for b in bands or []]
    y_ticks = _nice_ticks(max(ys) * 1.05 if ys else 1.0)
    y_top = y_ticks[-1]
    fx = (lambda x: math.log10(x)) if log_x else (lambda x: x)
    # A linear axis starts at 0, so that a straight line through the origin reads as linear.
    x0, x1 = ((fx(xs[0]) if log_x else 0.0), fx(xs[-1])) if xs else (0.0, 1.0)
    span = (x1 - x0) or 1.0

    def px(x):
        return left + pw * (fx(x) - x0) / span if len(xs) > 1 or not log_x else left + pw / 2

    def py(y):
        return top + ph * (1 - y / y_top)

    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">{e(title)}</text>']
    for b in bands or []:
        out.append(f'<rect x="{left}" y="{py(b["hi"]):.1f}" width="{pw}" height="{py(b["lo"]) - py(b["hi"]):.1f}" '
                   f'fill="#2f9e44" opacity="0.12"><title>{e(b["label"])}</title></rect>')
    for t in y_ticks:
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e9ecef"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(round(t, 10))}</text>')
    for x in xs:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{top + ph}" stroke="#f1f3f5"/>')
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{_fmt(x)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#adb5bd"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{e(x_label)}'
               f'{" (log scale)" if log_x else ""}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">{e(y_label)}</text>')
    for i, s in enumerate(series):
        pts = sorted(s["points"])
        if not pts:
            continue
        dash = ' stroke-dasharray="5 4"' if s.get("dash") else ""
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{s["colour"]}" stroke-width="2"{dash}/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{s["colour"]}">'
                       f'<title>{e(s["label"])}: {_fmt(x)} -> {y:.4g}</title></circle>')
        ly = top + 14 + 15 * i
        out.append(f'<line x1="{left + 10}" x2="{left + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{s["colour"]}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + 35}" y="{ly}">{e(s["label"])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def charts(curve: Curve) -> list[str]:
    """The SVG charts of one curve."""
    p = curve.points
    if curve.name == "rounds":
        first = p[0]["per_round_ms"]
        per = svg_chart("Time per round against rounds", "rounds", "ms per round", [
            {"label": "pipec, mean of its rounds after the first", "colour": COLOURS["pipec"],
             "points": [(q["rounds"], q["per_round_ms"]) for q in p]},
            {"label": "pipec, median round", "colour": COLOURS["pipec"], "dash": True,
             "points": [(q["rounds"], q["median_round_ms"]) for q in p]},
            {"label": "pipec, whole run / rounds", "colour": COLOURS["extra"],
             "points": [(q["rounds"], q["pipec_total_per_round_ms"]) for q in p]},
            {"label": "hand-written, whole run / rounds", "colour": COLOURS["hand"],
             "points": [(q["rounds"], q["hand_per_round_ms"]) for q in p]},
        ], bands=[{"lo": first * (1 - ROUND_TOLERANCE), "hi": first * (1 + ROUND_TOLERANCE),
                   "label": "goal: within 10 % of the first point"}])
        longest = p[-1]["round_ms"]
        window = max(1, len(longest) // 50)
        smooth = [(i + 1, statistics.median(longest[max(0, i - window + 1):i + 1])) for i in range(len(longest))]
        step = max(1, len(smooth) // 200)
        within = svg_chart(f"Round by round in the {p[-1]['rounds']}-round run (median of {window})",
                           "round", "ms", [{"label": "pipec round time", "colour": COLOURS["pipec"],
                                            "points": smooth[::step] + [smooth[-1]]}], log_x=False)
        return [per, within]
    if curve.name == "partitions":
        total = svg_chart("Run time on the same data, cut finer", "partitions", "seconds", [
            {"label": "pipec", "colour": COLOURS["pipec"], "points": [(q["partitions"], q["pipec_s"]) for q in p]},
            {"label": "hand-written", "colour": COLOURS["hand"], "points": [(q["partitions"], q["hand_s"]) for q in p]},
        ])
        rest = p[1:]
        floor = curve.notes["engine_floor_us_per_task"]
        series = [
            {"label": "pipec", "colour": COLOURS["pipec"],
             "points": [(q["partitions"], q["pipec_us_per_task"]) for q in rest]},
            {"label": "hand-written", "colour": COLOURS["hand"],
             "points": [(q["partitions"], q["hand_us_per_task"]) for q in rest]},
            {"label": "2x hand-written (goal)", "colour": COLOURS["hand"], "dash": True,
             "points": [(q["partitions"], 2 * q["hand_us_per_task"]) for q in rest]},
            {"label": f"engine floor ({floor:.0f} us, empty tasks)", "colour": COLOURS["floor"], "dash": True,
             "points": [(q["partitions"], floor) for q in rest]},
        ]
        for s in series:  # a negative marginal cost (noise at small sizes) cannot be drawn
            s["points"] = [(x, max(0.0, y)) for x, y in s["points"]]
        per_task = svg_chart("Overhead per task (marginal, against the first point)", "partitions",
                             "microseconds per task", series)
        deps = [{"label": "pipec", "colour": COLOURS["pipec"],
                 "points": [(q["partitions"], q["pipec_dependencies"]) for q in p]}]
        if all(q["hand_dependencies"] is not None for q in p):
            deps.append({"label": "hand-written", "colour": COLOURS["hand"],
                         "points": [(q["partitions"], q["hand_dependencies"]) for q in p]})
        dependencies = svg_chart("Task-to-task dependencies", "partitions", "dependencies", deps)
        return [total, per_task, dependencies]
    times = svg_chart("Run time against rows", "rows", "seconds", [
        {"label": "pipec", "colour": COLOURS["pipec"], "points": [(q["rows"], q["pipec_s"]) for q in p]},
        {"label": "linear from the first point", "colour": COLOURS["floor"], "dash": True,
         "points": [(q["rows"], p[0]["pipec_s"] * q["rows"] / p[0]["rows"]) for q in p]},
    ], log_x=False)
    memory = svg_chart("Driver memory against rows", "rows", "MB", [
        {"label": "peak RSS during the run", "colour": COLOURS["pipec"],
         "points": [(q["rows"], q["rss_peak_mb"]) for q in p]},
        {"label": "RSS before the run", "colour": COLOURS["floor"], "dash": True,
         "points": [(q["rows"], q["rss_before_mb"]) for q in p]},
    ], log_x=False)
    return [times, memory]


GOAL_TEXT = {
    "rounds": "Goal: time per round constant within 10 % from 20 to 1,000 rounds.",
    "partitions": "Goal: overhead per task within 2x of the engine's own (the hand-written program's).",
    "rows": "Goal: time linear in the rows, the driver's memory flat.",
}


def html_page(curves: list[Curve], meta: dict) -> str:
    """A self-contained page: every curve's charts and its table (no scripts, no network)."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>pipec scaling curves ({e(meta['backend'])})</title>",
             "<style>body{font-family:sans-serif;margin:24px;color:#212529}pre{background:#f8f9fa;"
             "padding:8px;overflow-x:auto;font-size:12px}.charts{display:flex;flex-wrap:wrap;gap:16px}"
             "</style></head><body>",
             f"<h1>pipec scaling curves on {e(meta['backend'])}</h1>",
             f"<p>{e(meta['date'])}, {e(meta['machine'])}, engine: {e(meta['engine'])}; "
             f"load average (1 min) at each point in the tables.</p>"]
    for curve in curves:
        parts.append(f"<h2>{e(curve.name)}</h2><p>{e(GOAL_TEXT[curve.name])}</p>")
        parts.append('<div class="charts">' + "".join(charts(curve)) + "</div>")
        parts.append(f"<pre>{e(table(curve))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---- the command ------------------------------------------------------------------------------------------


@contextmanager
def quiet_stdout():
    """Keep engine chatter off stdout (a child process's stdout carries its JSON)."""
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="dask")
    parser.add_argument("--curve", choices=CURVES, help="one curve (default: all three)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per partitions point (medians)")
    parser.add_argument("--points", help="comma-separated points of the one --curve (default: the issue's sizes)")
    parser.add_argument("--address", help="an existing cluster (default: the backend's embedded engine)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--html", help="write the charts to this HTML file")
    parser.add_argument("--point", choices=["rows"], help=argparse.SUPPRESS)  # one rows point, in a fresh process
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parts", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        with quiet_stdout(), hand_written(args.backend).engine(args.address), \
                tempfile.TemporaryDirectory(prefix="pipec-scaling-") as tmp:
            point = rows_point(args.backend, args.n, args.parts, Path(tmp))
        print(json.dumps(point))
        return 0
    sizes = SIZES["quick" if args.quick else "full"]
    names = [args.curve] if args.curve else list(CURVES)
    if args.points:
        if not args.curve:
            parser.error("--points needs --curve")
        sizes = dict(sizes, **{args.curve: dict(sizes[args.curve], points=[int(p) for p in args.points.split(",")])})
    curves: list[Curve] = []

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="pipec-scaling-") as tmp:
        scratch = Path(tmp)
        engine = "one per point (rows curve only)"
        in_session = [n for n in names if n != "rows"]
        if in_session:
            with hand_written(args.backend).engine(args.address) as engine:
                log(f"backend {args.backend} ({engine}), load {load_average()}")
                curves += run_curves(args.backend, in_session, sizes, scratch, args.reps, log=log)
        if "rows" in names:
            log(f"rows: one fresh process per point, load {load_average()}")
            curves += run_curves(args.backend, ["rows"], sizes, scratch, args.reps, address=args.address, log=log)
    curves.sort(key=lambda c: CURVES.index(c.name))
    meta = {"backend": args.backend, "engine": str(engine), "date": time.strftime("%d %B %Y %H:%M"),
            "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
            "quick": args.quick}
    return report(curves, meta, args.json, args.html)


def run_curves(backend: str, names: list[str], sizes: dict, scratch: Path, reps: int, fresh: bool = True,
               address: str | None = None, log=print) -> list[Curve]:
    """The named curves at ``sizes`` (a row of SIZES); the in-session ones need the
    backend's engine running (``hand_<backend>.engine``)."""
    out = []
    for name in names:
        if name == "rounds":
            out.append(rounds_curve(backend, sizes["rounds"], scratch, log=log))
        elif name == "partitions":
            out.append(partitions_curve(backend, sizes["partitions"], scratch, reps, log=log))
        elif name == "rows":
            out.append(rows_curve(backend, sizes["rows"], scratch, fresh=fresh, address=address, log=log))
        else:
            raise ValueError(f"unknown curve {name!r}")
    return out


def report(curves: list[Curve], meta: dict, json_path: str | None = None, html_path: str | None = None) -> int:
    """Print each curve's table (and write the JSON and the HTML chart); the exit status:
    0 when every point computed the reference's answer."""
    for curve in curves:
        print(f"\n{curve.name} ({curve.backend}):")
        print(table(curve))
    if json_path:
        Path(json_path).write_text(json.dumps({"meta": meta, "curves": [c.to_json() for c in curves]}, indent=1)
                                   + "\n", encoding="utf-8")
    if html_path:
        Path(html_path).write_text(html_page(curves, meta), encoding="utf-8")
    return 0 if all(p["same_result"] for c in curves for p in c.points) else 1


if __name__ == "__main__":
    sys.exit(main())
