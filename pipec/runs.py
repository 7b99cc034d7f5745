"""Run folders and their history: what a run did, kept as ``summary.json`` and
``report.html`` in its folder, and `pipec runs list | show | gc` over them.

:class:`RunEvents` is the Progress every `pipec run` and ``Pipeline.run`` hands the
driver: it records the driver's hooks (rounds, stages and their tasks, actor calls,
sinks, the engine) with times, and forwards each one to the display, if any. Recording
goes through the shared driver, so it is the same on every backend.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipec.backends.base import NoProgress, notify

RUNS = Path(".pipec") / "runs"
SUMMARY, REPORT = "summary.json", "report.html"
# A numbered actor snapshot (`actors/ps.41.snapshot`): what a resume may need, pruned
# once the run has succeeded.
_NUMBERED = re.compile(r"^(?P<actor>.+)\.(?P<seq>\d+)\.snapshot$")


class RunEvents:
    """What a run did, as its driver reported it; forwards every hook to ``view``.

    Times are seconds since this object was made (the run's start)."""

    def __init__(self, view: Any = None):
        self.view = view
        self.t0 = time.perf_counter()
        self.started_at = time.time()
        self.run_id: str | None = None
        self.run_dir: str | None = None
        self.backend: str | None = None
        self.engine: dict[str, Any] = {}
        self.rounds: list[dict] = []  # loop, index, count, start, end, ok
        self.stages: list[dict] = []  # name, loop, round, start, end, tasks, done, ticks
        self.calls: list[dict] = []  # actor, seq, method, replayed, at
        self.sinks: dict[str, str] = {}
        self.faults: list[dict] = []  # at, round, message
        self.status = "running"
        self.error: str | None = None
        self._open: dict[str, dict] = {}  # stage name -> its span now

    def now(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def enabled(self) -> bool:
        """Whether someone watches task by task (Spark polls its jobs only then)."""
        return bool(getattr(self.view, "enabled", False))

    @property
    def current_round(self) -> dict | None:
        """The round running now (or the last one begun)."""
        return self.rounds[-1] if self.rounds else None

    # ---- the Progress protocol and the driver's run hooks

    def run_started(self, run_id: str, run_dir: str, backend: str) -> None:
        self.run_id, self.run_dir, self.backend = run_id, run_dir, backend
        notify(self.view, "run_started", run_id, run_dir, backend)

    def engine_ready(self, info: dict) -> None:
        self.engine = dict(info, ready_at=round(self.now(), 4))
        notify(self.view, "engine_ready", info)

    def round(self, loop: str, index: int, count: int) -> None:
        self.rounds.append({"loop": loop, "index": index, "count": count, "start": self.now(), "end": None,
                            "ok": None})
        notify(self.view, "round", loop, index, count)

    def round_end(self, loop: str, index: int, count: int, ok: bool) -> None:
        now = self.now()
        for r in reversed(self.rounds):
            if r["loop"] == loop and r["index"] == index and r["end"] is None:
                r["end"], r["ok"] = now, ok
                break
        for span in self._open.values():
            if span["end"] is None:
                span["end"] = now  # an engine that reports no task ends: the round's end bounds it
        self._open.clear()
        notify(self.view, "round_end", loop, index, count, ok)

    def stage(self, name: str, tasks: int) -> None:
        now = self.now()
        previous = self._open.get(name)
        if previous is not None and previous["end"] is None:
            previous["end"] = now
        r = self._innermost_round()
        span = {"name": name, "loop": r["loop"] if r else None, "round": r["index"] if r else None,
                "start": now, "end": None, "tasks": tasks, "done": 0, "ticks": []}
        self.stages.append(span)
        self._open[name] = span
        notify(self.view, "stage", name, tasks)

    def advance(self, name: str, done: int = 1) -> None:
        span = self._open.get(name)
        if span is not None:
            now = self.now()
            span["done"] += done
            span["ticks"].append(now)
            span["end"] = now
        notify(self.view, "advance", name, done)

    def actor_call(self, actor: str, seq: int, method: str, replayed: bool) -> None:
        r = self._innermost_round()
        self.calls.append({"actor": actor, "seq": seq, "method": method, "replayed": replayed, "at": self.now(),
                           "round": r["index"] if r else None})
        notify(self.view, "actor_call", actor, seq, method, replayed)

    def fault(self, message: str) -> None:
        r = self._innermost_round()
        self.faults.append({"at": self.now(), "round": r["index"] if r else None, "message": message})
        notify(self.view, "fault", message)

    def sink_written(self, node: str, path: str) -> None:
        self.sinks[node] = path
        notify(self.view, "sink_written", node, path)

    def _innermost_round(self) -> dict | None:
        for r in reversed(self.rounds):
            if r["end"] is None:
                return r
        return None

    # ---- after the run

    def finish(self, status: str, error: str | None = None) -> None:
        """The run ended: ``finished``, ``failed`` or ``interrupted``; open spans close now."""
        now = self.now()
        self.status, self.error = status, error
        for span in self.stages:
            if span["end"] is None:
                span["end"] = now
        for r in self.rounds:
            if r["end"] is None:
                r["end"], r["ok"] = now, False


class QuietRunEvents(RunEvents, NoProgress):
    """RunEvents for a run nobody watches: being a NoProgress lets an engine skip its
    per-task reports (Dask and Ray then wait for a graph's ends only), so recording a
    run costs nothing per task; stages are still recorded, bounded by their rounds."""


# ---- run folders -------------------------------------------------------------------------------


def summary_of(events: RunEvents, pipeline, result=None) -> dict:
    """The JSON-ready summary of a run: what ran where, its rounds, stages, calls, sinks
    (with sizes) and timings, under the pipeline's own names."""
    from pipec.progress import Names
    names = Names(pipeline.ir)
    files = dict(result.files) if result is not None else dict(events.sinks)
    sinks = []
    for node, path in files.items():
        sinks.append({"node": node, "name": names.node(node), "path": path, "bytes": _size(path)})
    timings = result.timings if result is not None else {}
    engine = dict(events.engine)
    engine["versions"] = {**_own_versions(), **engine.get("versions", {})}
    return {
        "run": events.run_id, "pipeline": pipeline.name, "file": str(pipeline.source.path),
        "backend": events.backend, "status": events.status, "error": events.error,
        "started_at": events.started_at, "seconds": round(result.seconds if result is not None else events.now(), 4),
        "engine": engine,
        "loops": {loop: names.loop(loop) for loop in pipeline.ir.info.loops},
        "rounds": [dict(r, start=_r(r["start"]), end=_r(r["end"])) for r in events.rounds],
        "stages": [dict(s, label=names.node(s["name"]), start=_r(s["start"]), end=_r(s["end"]),
                        ticks=[_r(t) for t in s["ticks"]]) for s in events.stages],
        "calls": events.calls,
        "sinks": sinks,
        "timings": [{"node": k, "name": names.node(k), "seconds": round(v, 4)}
                    for k, v in sorted(timings.items(), key=lambda kv: -kv[1]) if names.does_work(k)],
        "capped": [names.loop(loop) for loop in (result.capped if result is not None else [])],
        "faults": [dict(f, at=_r(f["at"])) for f in events.faults],
    }


def _own_versions() -> dict[str, str]:
    """pipec's and Python's versions, beside the engine's."""
    import platform
    from importlib.metadata import PackageNotFoundError, version
    try:
        mine = version("pipec")
    except PackageNotFoundError:
        mine = "unknown"
    return {"pipec": mine, "python": platform.python_version()}


def _r(t: float | None) -> float | None:
    return None if t is None else round(t, 4)


def _size(path: str) -> int | None:
    """Bytes of a file, or of every file under a dataset folder; None when unknown."""
    p = Path(path)
    try:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except OSError:
        return None


def keep(events: RunEvents, pipeline, result=None) -> Path | None:
    """Write ``summary.json`` and ``report.html`` into the run's folder; once a run
    succeeded, prune its numbered snapshots (nothing is left to resume). Returns the
    report's path (None when the run never got a folder)."""
    if events.run_dir is None:
        return None
    from pipec.backends.runtime import storage
    from pipec.report import report_html
    summary = summary_of(events, pipeline, result)
    try:  # through the storage layer: the run folder may be a URL (s3://...)
        storage.atomic_write(storage.join(events.run_dir, SUMMARY),
                             json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
        storage.atomic_write(storage.join(events.run_dir, REPORT), report_html(summary, pipeline))
    except OSError:
        return None  # a report is a convenience: a read-only run folder does not fail the run
    if not storage.is_local(events.run_dir):
        return None  # a report in a bucket: nothing local to open
    folder = Path(storage.local_path(events.run_dir))
    if events.status == "finished":
        prune_snapshots(folder)
    return folder / REPORT


def prune_snapshots(folder: Path) -> int:
    """Delete the numbered actor snapshots of a finished run, and the chunks only they
    named; returns how many snapshots went."""
    from pipec.backends.runtime import snapshots
    actors = folder / "actors"
    if not actors.is_dir():
        return 0
    names = {m.group("actor") for f in actors.glob("*.snapshot") if (m := _NUMBERED.match(f.name))}
    return sum(snapshots.prune(str(actors), actor, None) for actor in sorted(names))


@dataclass
class RunInfo:
    """One run folder as `pipec runs list` shows it."""

    id: str
    folder: Path
    summary: dict | None

    @property
    def status(self) -> str:
        if self.summary is not None:
            return self.summary.get("status", "?")
        if (self.folder / "resume" / "finished").exists():
            return "finished"
        return "unknown"

    @property
    def started_at(self) -> float:
        if self.summary is not None and self.summary.get("started_at"):
            return float(self.summary["started_at"])
        return self.folder.stat().st_mtime


def all_runs(root: Path = RUNS) -> list[RunInfo]:
    """Every run folder under ``root``, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if folder.is_dir():
            summary = None
            try:
                summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            out.append(RunInfo(folder.name, folder, summary))
    return sorted(out, key=lambda r: r.started_at)


def find(run: str, root: Path = RUNS) -> RunInfo | None:
    """The run ``run``: its folder, its id, or a unique prefix of its id."""
    if Path(run).is_dir() and (Path(run) / SUMMARY).exists():
        folder = Path(run)
        return next((r for r in all_runs(folder.parent) if r.folder == folder), None)
    matches = [r for r in all_runs(root) if r.id == run] or [r for r in all_runs(root) if r.id.startswith(run)]
    return matches[0] if len(matches) == 1 else None


def summary_at(run_dir: str) -> dict | None:
    """The ``summary.json`` of run folder ``run_dir`` (a path or a storage URL such as
    ``s3://bucket/runs/train``); None when it has none (yet)."""
    from pipec.backends.runtime import storage
    try:
        return json.loads(storage.read_bytes(storage.join(run_dir, SUMMARY)))
    except (OSError, ValueError):
        return None


def local_report(run_dir: str) -> Path:
    """The ``report.html`` of run folder ``run_dir`` as a file a browser can open: the
    file itself, or for a folder on storage a copy fetched into a temporary file."""
    from pipec.backends.runtime import storage
    if storage.is_local(run_dir):
        return Path(storage.local_path(run_dir)) / REPORT
    import tempfile
    data = storage.read_bytes(storage.join(run_dir, REPORT))
    with tempfile.NamedTemporaryFile("wb", prefix="pipec-report-", suffix=".html", delete=False) as fh:
        fh.write(data)
    return Path(fh.name)


def gc(root: Path = RUNS, keep_last: int = 10, dry: bool = False) -> list[RunInfo]:
    """Delete all but the newest ``keep_last`` run folders (``dry``: only say which);
    returns the runs deleted, oldest first."""
    runs = all_runs(root)
    old = runs[:max(0, len(runs) - keep_last)]
    gone = []
    for r in old:
        if not dry:
            shutil.rmtree(r.folder, ignore_errors=True)
        gone.append(r)
    return gone
