"""Continuing a run whose driver died: one record per completed round, versioned snapshots.

The Spark driver hosts the actors, so a dead driver loses them with everything else. At
the end of every round of a top-level loop it writes, atomically, what the rest of the
run needs: the top-level values computed so far, the loop variables, and for each actor
the snapshot that holds its state (by sequence number) plus the calls made since then
(method and arguments). ``pipec run --resume RUN`` rebuilds every actor from that
snapshot, applies those calls again (their first application died with the driver, and
the snapshot does not hold them), and continues with the next round: every actor call is
applied exactly once to the state the run ends with.

Snapshots are also kept under their sequence number because the newest one may already
hold calls of the round that was interrupted; a record always names one that matches
the end of its round.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler import ir
from backends.runtime.actors import ActorHost
from backends.runtime.sinks import atomic_write

FORMAT = 1
RECORD = Path("resume") / "state.pickle"
FINISHED = Path("resume") / "finished"


def versioned(path: str | Path, seq: int) -> Path:
    """``actors/ps.snapshot`` -> ``actors/ps.41.snapshot``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{seq}{path.suffix}")


class VersionedHost(ActorHost):
    """An :class:`ActorHost` that also keeps each snapshot under its sequence number and
    remembers the number of the last one (``saved``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saved: int | None = self.applied if self.restored else None

    def save(self) -> None:
        super().save()
        self.saved = self.applied
        target = versioned(self.snapshot_path, self.applied)
        atomic_write(target, self.snapshot_path.read_bytes())


@dataclass
class CollectionValue:
    """A collection var as a record holds it: its partitions' items."""

    parts: list[list]


@dataclass
class Record:
    """The state of a run at the end of round ``rounds`` of top-level loop ``loop``."""

    pipeline: str
    fingerprint: str
    top_index: int  # the loop's position among the pipeline's top-level items
    loop: str
    rounds: int
    done: bool  # the loop will run no more rounds
    env: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    actors: dict[str, dict] = field(default_factory=dict)  # next_seq, snapshot, log
    loops_done: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT


def fingerprint(graph: ir.IR, params: dict[str, Any]) -> str:
    """Identifies the pipeline and parameters a run used (not where the file lives)."""
    data = graph.to_json()
    data["pipeline"] = {k: v for k, v in data["pipeline"].items() if k != "path"}
    text = json.dumps([data, sorted(params.items())], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def write(run_dir: Path, record: Record) -> bool:
    """Store ``record`` atomically; False (nothing written) if it cannot be pickled."""
    try:
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    atomic_write(run_dir / RECORD, data)
    for actor, state in record.actors.items():
        if state["snapshot"] is not None:
            _prune(run_dir / "actors", actor, state["snapshot"])
    return True


def read(run_dir: Path) -> Record | None:
    path = run_dir / RECORD
    if not path.exists():
        return None
    record = pickle.loads(path.read_bytes())
    return record if getattr(record, "format", None) == FORMAT else None


def finish(run_dir: Path) -> None:
    atomic_write(run_dir / FINISHED, b"")


def finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED).exists()


def clear(run_dir: Path) -> None:
    """Forget an earlier run's state in ``run_dir`` (a fresh run reusing the folder must
    not restore its actors from old snapshots)."""
    for sub in ("resume", "actors"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)


def _prune(folder: Path, actor: str, keep_from: int) -> None:
    """Drop versioned snapshots older than the one the newest record names."""
    for path in folder.glob(f"{actor}.*.snapshot"):
        middle = path.name[len(actor) + 1:-len(".snapshot")]
        if middle.isdigit() and int(middle) < keep_from:
            path.unlink(missing_ok=True)
