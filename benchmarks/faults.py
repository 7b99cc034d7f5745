"""Fault injection: whole `pipec run` processes killed by pid at seeded random points.

Every run executes one pipeline (``PIPELINE``) whose actor is a ledger: each application
of a call (a graph-level call numbered by the driver, or a call a stage task makes
through a handle, keyed by pipec) appends the call's key and the actor's pid to a file,
and the actor's state lists the keys it holds. Stage functions append their pid to a
beacon file, so the harness knows which process runs what. One site is killed per run
(SIGKILL, by pid, at a point drawn from the run's seed):

* ``actor``:  the actor's process, after k applications (Spark hosts actors in the
  driver: that is the ``driver`` row);
* ``stage``:  a worker running the pure stage, at its k-th item;
* ``handle``: a worker running the stage that calls the actor through a handle, at its
  k-th item (Spark refuses handles at compile time);
* ``driver``: the driver process alone after k applications, then ``pipec run --resume``;
* ``write``:  the driver, the moment a sink's staged file shows up in ``out/`` (the
  write in progress), then ``pipec run --resume``.

A run is **correct** when it ends (resumed where the site needs it) with sinks
byte-identical to a fault-free run on the reference backend, its ledger state holds every
key exactly once, nothing temporary is left beside the outputs or in the run folder, and
it finished within ``--timeout`` (else **hung**). **wrong** is anything else (a failed
run, other bytes, a key missing or twice); **strays** counts runs after which a process
pipec started was still alive a few seconds after its driver was gone (the harness then
kills it). Recovery time is the run's wall time (resume included) minus the median wall
time of fault-free runs on the same engine.

    python -m benchmarks.faults [--runs 20] [--engines dask,ray,spark]
                                [--sites actor,stage,handle,driver,write] [--seed 0]
                                [--timeout 240] [--json OUT]

tests/test_faults.py runs a few cases of the same harness in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and pipec importable
    sys.path.insert(0, str(ROOT))

ENGINES = ("local", "dask", "ray", "spark")
SITES = ("actor", "stage", "handle", "driver", "write")
ROUNDS, ITEMS, PARTITIONS = 5, 24, 4
# How long a process pipec started may outlive its driver before it counts as a stray.
STRAY_GRACE = 5.0

# The start of every ledger module (this suite's, benchmarks/recovery.py's): the imports
# and how a process notes a line in a file shared with other processes.
NOTES = '''import json, os, time

def _note(path, line):
    # One short O_APPEND write per line: lines from several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)
'''

MODULE = '''"""The fault-injection suite's ledger and stage functions (see benchmarks/faults.py)."""
''' + NOTES + '''
def work(x, r, beacons):
    _note(beacons, f"stage {os.getpid()}")
    time.sleep(0.03)
    return (x * x + r) % 97

def add(a, b):
    return a + b

def push(x, r, book, beacons):
    _note(beacons, f"handle {os.getpid()}")
    time.sleep(0.02)
    return book.add(["push", r, x]) + x

def row(x, r):
    return {"r": r, "x": x, "pad": "p" * 40}

class Ledger:
    """Holds the keys of every call applied to it; each application is noted in a file."""
    def __init__(self, path):
        self.path, self.keys = path, []
    def _apply(self, key):
        _note(self.path, f"{os.getpid()} {json.dumps(key)}")
        self.keys.append(key)
        return len(self.keys)
    def apply(self, r, total, pushes):
        return self._apply(["round", r, total, pushes])
    def add(self, key):
        self._apply(key)
        return key[1]
    def state(self):
        return sorted(self.keys)
'''


def pipeline_text(engine: str, rounds: int = ROUNDS) -> str:
    """The suite's pipeline; on Spark (no actor handles in stages) without the handle stage."""
    handle = ("        stage pushed = map m.push over xs with r = r, book = book, beacons = beacons\n"
              "        value pushes = reduce m.add over pushed\n"
              "        book.apply(r, total, pushes)\n") if engine != "spark" else "        book.apply(r, total, 0)\n"
    return f"""use fault_ledger as m

pipeline faults(rounds: int = {rounds}, ledger: str = "ledger.log", beacons: str = "beacons.log") {{
    actor book = m.Ledger(path = ledger) {{
        restarts 3
        checkpoint every 2 calls
    }}
    source xs = range({ITEMS}) partitions {PARTITIONS}
    repeat rounds as r {{
        stage ys = map m.work over xs with r = r, beacons = beacons
        value total = reduce m.add over ys
{handle}    }}
    stage rows = flat_map m.row over xs with r = rounds
    sink state = book.state() -> json("out/state.json")
    sink table = collect(rows) -> jsonl("out/rows.jsonl")
}}
"""


def not_applicable(engine: str, site: str) -> str | None:
    """Why ``site`` cannot be injected on ``engine``, or None."""
    if engine == "local" and site in ("actor", "stage", "handle"):
        return "the reference backend runs everything in the driver: see the driver row"
    if engine == "spark" and site == "actor":
        return "Spark hosts actors in the driver: see the driver row"
    if engine == "spark" and site == "handle":
        return "Spark refuses actor handles in stages at compile time"
    return None


def expected_keys(engine: str, rounds: int = ROUNDS) -> int:
    """How many keys the ledger's final state holds."""
    return rounds * (1 + (ITEMS if engine != "spark" else 0))


@dataclass
class Outcome:
    engine: str
    site: str
    seed: int
    verdict: str  # correct, wrong, hung, clean (no fault injected), n/a
    seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    detail: str = ""


class Folder:
    """A fresh folder for one run: the pipeline, its module, out/ and the run folder."""

    def __init__(self, base: Path, engine: str, name: str, rounds: int = ROUNDS):
        self.engine, self.rounds = engine, rounds
        self.path = base / name
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        (self.path / "fault_ledger.py").write_text(MODULE)
        (self.path / "faults.pipe").write_text(pipeline_text(engine, rounds))
        self.run_dir = self.path / "run"
        self.ledger, self.beacons = self.path / "ledger.log", self.path / "beacons.log"

    def lines(self, path: Path) -> list[str]:
        try:
            return path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def sinks(self) -> dict[str, bytes]:
        out = self.path / "out"
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())} if out.exists() else {}

    def leftovers(self) -> list[str]:
        """Temporary or staged files anywhere in the folder once the run is over."""
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*")
                      if p.is_file() and (p.name.endswith(".tmp") or ".pipec-staged-" in p.name))


def reference(base: Path, engine: str, rounds: int = ROUNDS) -> dict[str, bytes]:
    """The sinks of a fault-free run of ``engine``'s pipeline on the reference backend."""
    folder = Folder(base, engine, f"reference-{engine}", rounds)
    proc = _pipec(folder, "local", ["--run-dir", str(folder.run_dir)])
    if proc.wait() != 0:
        raise SystemExit(f"the reference run failed: {_last_error(folder)}")
    return folder.sinks()


def _env() -> dict:
    # Each run gets an engine of its own, started by pipec (never a cluster from outside).
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "DASK_SCHEDULER_ADDRESS": ""}


def _pipec(folder: Folder, engine: str, extra: list[str]) -> subprocess.Popen:
    log = open(folder.path / f"pipec-{len(list(folder.path.glob('pipec-*.log')))}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "pipec", "run", "faults.pipe", "--backend", engine, *extra],
                            cwd=folder.path, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _family(pid: int) -> list:
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _survivors(family: list, grace: float) -> list[str]:
    """Processes of ``family`` still alive ``grace`` seconds from now (killed, then named)."""
    import psutil
    deadline = time.monotonic() + grace
    alive = family
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.1)
    names = []
    for proc in alive:
        try:
            names.append(" ".join(proc.cmdline())[:60] or proc.name())
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return names


def _running(proc) -> bool:
    import psutil
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Injector(threading.Thread):
    """Waits for the run to reach the seeded point of ``site``, then kills the process
    running it (by pid). ``killed`` says what was killed, or stays None."""

    def __init__(self, folder: Folder, engine: str, site: str, driver: subprocess.Popen, rng: random.Random):
        super().__init__(daemon=True)
        self.folder, self.engine, self.site, self.driver = folder, engine, site, driver
        # The seeded point: the k-th stage item or ledger application, never the last ones.
        if site in ("stage", "handle"):
            self.k = rng.randint(2, folder.rounds * ITEMS - 2)
        elif site in ("actor", "driver"):
            self.k = rng.randint(1, max(1, expected_keys(engine, folder.rounds) - 2))
        else:
            self.k = 0
        self.killed: str | None = None
        self.family: list = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.driver.poll() is None:
            pid = self._victim()
            if pid is not None:
                if self.site in ("driver", "write"):
                    self.family = _family(self.driver.pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = f"{self.site} pid {pid}"
                except ProcessLookupError:
                    continue  # gone already (its task ended): wait for the next one
                return
            time.sleep(0.002)

    def _victim(self) -> int | None:
        f = self.folder
        if self.site == "write":
            out = f.path / "out"
            if out.exists() and any(".pipec-staged-" in name for name in os.listdir(out)):
                return self.driver.pid
            return None
        if self.site in ("stage", "handle"):
            beacons = [line.split() for line in f.lines(f.beacons)]
            mine = [int(pid) for tag, pid in beacons if tag == self.site]
            if len(mine) < self.k:
                return None
            ledger = f.lines(f.ledger)
            actor = int(ledger[-1].split()[0]) if ledger else None
            # The process that ran the latest item (on Dask a worker may also hold the
            # actor: that one is the actor site's, not this one's).
            for pid in reversed(mine):
                if pid != actor:
                    return pid
            return None
        ledger = f.lines(f.ledger)
        if len(ledger) < self.k:
            return None
        return int(ledger[-1].split()[0]) if self.site == "actor" else self.driver.pid


def run_case(base: Path, engine: str, site: str | None, seed: int, expected: dict[str, bytes],
             timeout: float, clean_seconds: float | None = None, rounds: int = ROUNDS) -> Outcome:
    """One run of ``engine`` with ``site`` killed at the point seed ``seed`` draws
    (``site`` None: a fault-free run), judged against ``expected`` (see ``reference``,
    with the same ``rounds``). Never raises for what the run does."""
    reason = not_applicable(engine, site) if site else None
    if reason:
        return Outcome(engine, site, seed, "n/a", detail=reason)
    folder = Folder(base, engine, f"{engine}-{site or 'clean'}-{seed}", rounds)
    start = time.monotonic()
    deadline = start + timeout
    driver = _pipec(folder, engine, ["--run-dir", str(folder.run_dir)])
    injector = None
    if site:
        injector = Injector(folder, engine, site, driver, random.Random(f"{engine}/{site}/{seed}"))
        injector.start()
    outcome = Outcome(engine, site or "clean", seed, "correct")
    code = _wait(driver, deadline)
    if injector is not None:
        injector.stop.set()
        injector.join()
    family = injector.family if injector is not None and injector.family else []
    if code is None:
        _kill_group(driver)
        outcome.verdict, outcome.detail = "hung", f"no end within {timeout:g} s"
        return _finish(outcome, folder, start, clean_seconds)
    killed = injector.killed if injector is not None else None
    if site and killed is None:
        outcome.verdict, outcome.detail = "clean", "the run ended before the fault point"
    if site in ("driver", "write") and killed is not None:
        outcome.strays = _survivors(family, STRAY_GRACE)
        resumed = _pipec(folder, engine, ["--resume", str(folder.run_dir)])
        code = _wait(resumed, deadline)
        if code is None:
            _kill_group(resumed)
            outcome.verdict, outcome.detail = "hung", f"the resumed run did not end within {timeout:g} s"
            return _finish(outcome, folder, start, clean_seconds)
    if code == 2 and "finished already" in _last_error(folder):
        code = 0  # the kill landed after the run had committed and finished: judge that
    if code != 0:
        outcome.verdict = "wrong"
        outcome.detail = f"exit {code}: {_last_error(folder)}"
    elif outcome.verdict == "correct":
        outcome.verdict, outcome.detail = _judge(folder, expected)
    if killed:
        outcome.detail = (killed + "; " + outcome.detail).strip("; ")
    return _finish(outcome, folder, start, clean_seconds)


def _finish(outcome: Outcome, folder: Folder, start: float, clean_seconds: float | None) -> Outcome:
    outcome.seconds = time.monotonic() - start - (clean_seconds or 0.0)
    outcome.leftovers = folder.leftovers()
    if outcome.leftovers and outcome.verdict == "correct":
        outcome.verdict = "wrong"
    return outcome


def _judge(folder: Folder, expected: dict[str, bytes]) -> tuple[str, str]:
    got = folder.sinks()
    state = json.loads(got.get("state.json", b"[]"))
    keys = [json.dumps(k) for k in state]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        return "wrong", f"applied twice: {', '.join(twice[:3])}"
    want = expected_keys(folder.engine, folder.rounds)
    if len(keys) != want:
        return "wrong", f"{len(keys)} keys in the final state, not {want}"
    differ = sorted(name for name in set(got) | set(expected) if got.get(name) != expected.get(name))
    if differ:
        return "wrong", f"differs from the fault-free run: {', '.join(differ)}"
    return "correct", ""


def _wait(proc: subprocess.Popen, deadline: float) -> int | None:
    try:
        return proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _kill_group(proc: subprocess.Popen) -> None:
    family = _family(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in family:
        try:
            p.kill()
        except Exception:
            pass
    proc.wait()


def _last_error(folder: Folder) -> str:
    logs = sorted(folder.path.glob("pipec-*.log"))
    text = logs[-1].read_text(errors="replace").strip().splitlines() if logs else []
    errors = [line for line in text if "error" in line.lower()]
    return (errors[0] if errors else text[-1] if text else "no output")[:200]


def sweep(engines, sites, runs: int, seed: int, timeout: float, base: Path, report=print) -> list[Outcome]:
    """``runs`` seeded runs per engine and site, after two fault-free runs per engine
    (their median wall time is what recovery time is measured against)."""
    outcomes = []
    references: dict[str, dict[str, bytes]] = {}
    for engine in engines:
        text = pipeline_text(engine)  # Dask's and Ray's are the same
        expected = references.get(text) or references.setdefault(text, reference(base, engine))
        clean = [run_case(base, engine, None, i, expected, timeout) for i in range(2)]
        for c in clean:
            report(f"{engine:6} clean   {c.verdict:8} {c.seconds:6.1f} s {c.detail}")
            if c.verdict != "correct":
                raise SystemExit(f"a fault-free run on {engine} is not correct: {c.detail}")
        baseline = statistics.median(c.seconds for c in clean)
        for site in sites:
            for i in range(runs):
                o = run_case(base, engine, site, seed + i, expected, timeout, baseline)
                outcomes.append(o)
                report(f"{engine:6} {site:7} {o.verdict:8} {o.seconds:+6.1f} s "
                       f"{'leftovers ' + str(o.leftovers) if o.leftovers else ''}"
                       f"{'strays ' + str(o.strays) if o.strays else ''} {o.detail}")
                if o.verdict == "n/a":
                    break
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    """The sweep as a Markdown table: one row per engine and site."""
    rows = ["| engine | site | runs | correct | wrong | hung | leftovers | strays | median recovery |",
            "|---|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple, list[Outcome]] = {}
    for o in outcomes:
        cells.setdefault((o.engine, o.site), []).append(o)
    for (engine, site), group in cells.items():
        if group[0].verdict == "n/a":
            rows.append(f"| {engine} | {site} | n/a | | | | | | {group[0].detail} |")
            continue
        count = lambda v: sum(o.verdict == v for o in group)  # noqa: E731
        injected = [o for o in group if o.verdict != "clean"]
        recovery = [o.seconds for o in injected if o.verdict == "correct"]
        median = f"{statistics.median(recovery):+.1f} s" if recovery else "-"
        runs = f"{len(injected)}" + (f" (+{count('clean')} ended first)" if count("clean") else "")
        rows.append(f"| {engine} | {site} | {runs} | {count('correct')} | {count('wrong')} | {count('hung')} | "
                    f"{sum(bool(o.leftovers) for o in group)} | {sum(bool(o.strays) for o in group)} | {median} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="seeded runs per engine and site")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--sites", default=",".join(SITES))
    parser.add_argument("--seed", type=int, default=0, help="the first run's seed (then seed+1, ...)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before a run counts as hung")
    parser.add_argument("--json", help="also write every outcome here")
    parser.add_argument("--keep", help="keep the runs' folders here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    engines, sites = args.engines.split(","), args.sites.split(",")
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pipec-faults-"))
    try:
        outcomes = sweep(engines, sites, args.runs, args.seed, args.timeout, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(outcomes))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))


if __name__ == "__main__":
    main()
