"""Recovery time: from killing a process to the next actor call applied, whole `pipec run`s.

Every run executes one pipeline (``PIPELINE``) whose actor, a ledger, is called once a
round after a short stage; each application of a call appends the actor's pid, the
moment (``time.monotonic()``, one clock for every process of the machine) and the
call's key to a file, and the actor's state lists the keys it holds. After ``k``
applied calls (``k`` drawn from the run's seed) one process is killed with SIGKILL, by
pid:

* Dask and Ray: the actor's process (on Dask, the worker hosting it);
* Spark, which hosts actors in the driver: a Python worker running the next round's
  stage (the stage's function notes its pid and round in a beacon file).

The figure is **kill-to-next-applied-call**: from the kill to the first application of
a call after it (by the actor's replacement on Dask and Ray: the first call it replays
or is sent). It includes whatever of the round was still to run, so each engine's
fault-free interval between two calls is printed beside it. A run is correct when its
sinks are byte-identical to a fault-free run of the reference backend and its ledger's
final state holds every round's key exactly once.

    python -m benchmarks.recovery [--runs 5] [--engines dask,ray] [--rounds 24]
                                  [--clean 2] [--seed 0] [--timeout 240] [--json OUT]
                                  [--keep DIR]

Runs alternate between the engines (run i on every engine, then run i + 1), after
``--clean`` fault-free runs per engine (also alternating). The harness (starting
``pipec run``, waiting, killing a run that hangs, reading its error) is
benchmarks/faults.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and pipec importable
    sys.path.insert(0, str(ROOT))

from benchmarks import faults  # noqa: E402

ENGINES = ("dask", "ray", "spark")
ROUNDS, ITEMS, PARTITIONS = 24, 16, 4
# What is killed on each engine (Spark hosts actors in its driver).
VICTIM = {"dask": "actor", "ray": "actor", "spark": "stage worker"}

MODULE = '''"""The recovery benchmark's ledger and stage functions (see benchmarks/recovery.py)."""
''' + faults.NOTES + '''
def work(x, r, beacons):
    _note(beacons, f"{os.getpid()} {r}")
    time.sleep(0.005)
    return (x * x + r) % 97

def add(a, b):
    return a + b

def row(x, r):
    return {"r": r, "x": x}

class Ledger:
    """Holds the key of every call applied to it; each application is noted in a file."""
    def __init__(self, path):
        self.path, self.keys = path, []
    def apply(self, r, total):
        key = ["round", r, total]
        _note(self.path, f"{os.getpid()} {time.monotonic():.6f} {json.dumps(key)}")
        self.keys.append(key)
        return len(self.keys)
    def state(self):
        return sorted(self.keys)
'''


def pipeline_text(rounds: int = ROUNDS) -> str:
    """The benchmark's pipeline: a stage, a reduction and one actor call a round."""
    return f"""use fault_ledger as m

pipeline recovery(rounds: int = {rounds}, ledger: str = "ledger.log", beacons: str = "beacons.log") {{
    actor book = m.Ledger(path = ledger) {{
        restarts 3
        checkpoint every 3 calls
    }}
    source xs = range({ITEMS}) partitions {PARTITIONS}
    repeat rounds as r {{
        stage ys = map m.work over xs with r = r, beacons = beacons
        value total = reduce m.add over ys
        book.apply(r, total)
    }}
    stage rows = flat_map m.row over xs with r = rounds
    sink state = book.state() -> json("out/state.json")
    sink table = collect(rows) -> jsonl("out/rows.jsonl")
}}
"""


class Folder(faults.Folder):
    """faults.py's run folder holding this benchmark's module and pipeline (under the
    names its harness runs: ``fault_ledger.py``, ``faults.pipe``)."""

    def __init__(self, base: Path, engine: str, name: str, rounds: int = ROUNDS):
        super().__init__(base, engine, name, rounds)
        (self.path / "fault_ledger.py").write_text(MODULE)
        (self.path / "faults.pipe").write_text(pipeline_text(rounds))

    def applications(self) -> list[tuple[int, float, list]]:
        """The ledger's lines: (pid, moment, key) for each application, in order."""
        out = []
        for line in self.lines(self.ledger):
            pid, moment, key = line.split(" ", 2)
            out.append((int(pid), float(moment), json.loads(key)))
        return out


@dataclass
class Outcome:
    engine: str
    seed: int
    verdict: str  # correct, wrong, hung, clean (a fault-free run), missed (no kill)
    wall: float = 0.0  # the whole run, seconds
    kill_to_next: float | None = None  # seconds from the kill to the next applied call
    after: int = 0  # applied calls before the kill
    interval: float | None = None  # median seconds between two calls of a fault-free run
    detail: str = ""
    load: float = field(default_factory=lambda: os.getloadavg()[0])


class Killer(threading.Thread):
    """Kills the run's actor process (Dask, Ray) after ``k`` applied calls, or (Spark) the
    Python worker that notes round ``k``'s stage first; ``moment`` is when, ``pid`` whom."""

    def __init__(self, folder: Folder, engine: str, driver, k: int):
        super().__init__(daemon=True)
        self.folder, self.engine, self.driver, self.k = folder, engine, driver, k
        self.moment: float | None = None
        self.pid: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.driver.poll() is None:
            pid = self._victim()
            if pid is not None:
                moment = time.monotonic()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # gone already: wait for the next one
                self.moment, self.pid = moment, pid
                return
            time.sleep(0.001)

    def _victim(self) -> int | None:
        f = self.folder
        if self.engine == "spark":
            for line in f.lines(f.beacons):
                pid, r = line.split()
                if int(r) == self.k:
                    return int(pid)
            return None
        ledger = f.lines(f.ledger)
        return int(ledger[-1].split()[0]) if len(ledger) >= self.k else None


def reference(base: Path, rounds: int) -> dict[str, bytes]:
    """The sinks of a fault-free run on the reference backend."""
    folder = Folder(base, "local", "reference", rounds)
    proc = faults._pipec(folder, "local", ["--run-dir", str(folder.run_dir)])
    if proc.wait() != 0:
        raise SystemExit(f"the reference run failed: {faults._last_error(folder)}")
    return folder.sinks()


def run_case(base: Path, engine: str, seed: int | None, expected: dict[str, bytes], rounds: int = ROUNDS,
             timeout: float = 240.0) -> Outcome:
    """One run on ``engine``, killed where seed ``seed`` draws (None: fault-free), judged
    against ``expected`` (see ``reference``, with the same ``rounds``). Never raises for
    what the run does."""
    name = f"{engine}-{'clean' if seed is None else seed}"
    folder = Folder(base, engine, name, rounds)
    outcome = Outcome(engine, -1 if seed is None else seed, "clean" if seed is None else "correct")
    start = time.monotonic()
    driver = faults._pipec(folder, engine, ["--run-dir", str(folder.run_dir)])
    killer = None
    if seed is not None:
        # Never the first calls (the engine is still starting) nor the last ones.
        outcome.after = random.Random(f"recovery/{engine}/{seed}").randint(3, rounds - 3)
        killer = Killer(folder, engine, driver, outcome.after)
        killer.start()
    code = faults._wait(driver, start + timeout)
    outcome.wall = time.monotonic() - start
    if killer is not None:
        killer.stop.set()
        killer.join()
    if code is None:
        faults._kill_group(driver)
        outcome.verdict, outcome.detail = "hung", f"no end within {timeout:g} s"
        return outcome
    if code != 0:
        outcome.verdict, outcome.detail = "wrong", f"exit {code}: {faults._last_error(folder)}"
        return outcome
    verdict, detail = judge(folder, expected, rounds)
    if verdict != "correct":
        outcome.verdict, outcome.detail = verdict, detail
        return outcome
    applied = folder.applications()
    if killer is None:
        moments = [m for _, m, _ in applied]
        outcome.interval = statistics.median(b - a for a, b in zip(moments, moments[1:]))
    elif killer.moment is None:
        outcome.verdict, outcome.detail = "missed", "the run ended before the kill"
    else:
        later = [m for pid, m, _ in applied if m >= killer.moment and pid != killer.pid]
        outcome.kill_to_next = later[0] - killer.moment if later else None
        outcome.detail = f"{VICTIM[engine]} pid {killer.pid} killed after {outcome.after} calls"
        if not later:
            outcome.verdict, outcome.detail = "wrong", "no call was applied after the kill"
    return outcome


def judge(folder: Folder, expected: dict[str, bytes], rounds: int) -> tuple[str, str]:
    """Whether the run's sinks are the fault-free run's and each round's call counts once."""
    got = folder.sinks()
    keys = [json.dumps(k) for k in json.loads(got.get("state.json", b"[]"))]
    if len(set(keys)) != len(keys):
        return "wrong", "a call was applied twice"
    if len(keys) != rounds:
        return "wrong", f"{len(keys)} calls in the final state, not {rounds}"
    differ = sorted(name for name in set(got) | set(expected) if got.get(name) != expected.get(name))
    if differ:
        return "wrong", f"differs from the fault-free run: {', '.join(differ)}"
    return "correct", ""


def sweep(engines, runs: int, clean: int, seed: int, rounds: int, timeout: float, base: Path,
          report=print) -> list[Outcome]:
    """``clean`` fault-free runs, then ``runs`` killed runs, per engine, alternating
    between the engines."""
    expected = reference(base, rounds)
    outcomes = []
    plan = [(e, None) for _ in range(clean) for e in engines] + [(e, seed + i) for i in range(runs) for e in engines]
    for engine, s in plan:
        o = run_case(base, engine, s, expected, rounds, timeout)
        outcomes.append(o)
        shown = f"{o.kill_to_next:6.3f} s to the next call" if o.kill_to_next is not None else ""
        if o.interval is not None:
            shown = f"{o.interval * 1000:6.1f} ms between calls"
        report(f"{engine:6} {o.verdict:8} run {o.wall:5.1f} s  {shown}  load {o.load:.2f}  {o.detail}")
        shutil.rmtree(base / f"{engine}-{'clean' if s is None else s}", ignore_errors=True)
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    """The sweep as a Markdown table: one row per engine."""
    rows = ["| engine | killed | runs | correct | median kill-to-next-call | max | fault-free interval "
            "between calls | fault-free run | load |",
            "|---|---|---|---|---|---|---|---|---|"]
    engines = list(dict.fromkeys(o.engine for o in outcomes))
    for engine in engines:
        mine = [o for o in outcomes if o.engine == engine]
        killed = [o for o in mine if o.verdict not in ("clean", "missed")]
        clean = [o for o in mine if o.verdict == "clean"]
        times = [o.kill_to_next for o in killed if o.kill_to_next is not None]
        correct = sum(o.verdict == "correct" for o in killed)
        median = f"{statistics.median(times):.2f} s" if times else "-"
        worst = f"{max(times):.2f} s" if times else "-"
        interval = f"{statistics.median(o.interval for o in clean) * 1000:.0f} ms" if clean else "-"
        wall = f"{statistics.median(o.wall for o in clean):.1f} s" if clean else "-"
        loads = [o.load for o in mine]
        verdict = "all" if killed and correct == len(killed) else f"{correct} of {len(killed)}"
        rows.append(f"| {engine} | {VICTIM[engine]} | {len(killed)} | {verdict} | {median} | {worst} | "
                    f"{interval} | {wall} | {min(loads):.1f}–{max(loads):.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="killed runs per engine")
    parser.add_argument("--engines", default="dask,ray")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--clean", type=int, default=2, help="fault-free runs per engine (the interval column)")
    parser.add_argument("--seed", type=int, default=0, help="the first run's seed (then seed+1, ...)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before a run counts as hung")
    parser.add_argument("--json", help="also write every outcome here")
    parser.add_argument("--keep", help="keep the reference run's folder here (default: a temporary folder)")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine {', '.join(unknown)} (choose from {', '.join(ENGINES)})")
    # As an installed program runs: with its bytecode cached (a shell may switch that off).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pipec-recovery-"))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    try:
        outcomes = sweep(engines, args.runs, args.clean, args.seed, args.rounds, args.timeout, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(outcomes))
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return 0 if all(o.verdict in ("correct", "clean") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
