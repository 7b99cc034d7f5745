"""Continuing a run whose driver died: one record per completed round of a top-level loop.

A dead driver loses its actors with everything else (Spark hosts them in the driver; on
Ray and elsewhere they belong to the driver's job). At the end of every round of a
top-level loop the driver (:class:`pipec.backends.runtime.driver.Driver`) writes, atomically,
what the rest of the run needs: the top-level values computed so far, the loop
variables, and for each actor the snapshot that holds its state (by sequence number)
plus the calls made since then (method and arguments). ``pipec run --resume RUN``
rebuilds every actor from that snapshot, applies those calls again (their first
application died with the driver, and the snapshot does not hold them), and continues
with the next round: every actor call is applied exactly once to the state the run ends
with.

The calls go into a journal beside the records, each written once: a record stores only
the calls made since the record before it, as one segment file
(``resume/journal/ACTOR.FIRST-LAST.N.pickle``), and names where the actor's calls end, so
a record's size does not grow with the number of calls the run has made (an actor without
snapshots replays every call since the start). Reading a record puts the calls it needs
back from the segments.

Snapshots are also kept under their sequence number because the newest one may already
hold calls of the round that was interrupted; a record always names one that matches
the end of its round.

The run folder may be any location :mod:`storage` reaches (a local folder, ``s3://...``),
so a driver resumed on another machine, or an actor restarted on another node, finds
the records and snapshots without a shared disk.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from pipec.compiler import ir
from pipec.backends.runtime import storage
from pipec.backends.runtime import snapshots
from pipec.backends.runtime.snapshots import versioned

FORMAT = 3
RECORD = "resume/state.pickle"  # relative to the run folder
FINISHED = "resume/finished"
JOURNAL = "resume/journal"
# What a record's actor entry holds calls in: an actor's calls since its snapshot, a
# pool's calls to every member (``pool.each``) since the start.
JOURNALED = ("log", "each")


@dataclass
class CollectionValue:
    """A collection var as a record holds it: its partitions' items."""

    parts: list[list]


@dataclass
class Record:
    """The state of a run at the end of round ``rounds`` of top-level loop ``loop``."""

    pipeline: str
    backend: str  # a record holds the backend's own steps: it resumes on the same backend
    fingerprint: str
    top_index: int  # the loop's position among the pipeline's top-level items
    loop: str
    rounds: int
    done: bool  # the loop will run no more rounds
    env: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    actors: dict[str, dict] = field(default_factory=dict)  # next_seq, snapshot, and log (or each, a pool's)
    loops_done: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT
    capped: list[str] = field(default_factory=list)  # loops that stopped at their cap, `until` never true


def fingerprint(graph: ir.IR, params: dict[str, Any]) -> str:
    """Identifies the pipeline and parameters a run used (not where the file lives)."""
    data = graph.to_json()
    data["pipeline"] = {k: v for k, v in data["pipeline"].items() if k != "path"}
    text = json.dumps([data, sorted(params.items())], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class RecordWriter:
    """Stores the records of one run, off the driver's path: one background thread
    pickles and writes them atomically, the newest first where several wait, while the
    driver goes on with the next round (pipec's values are never mutated, so a record
    handed over holds the state of its own round). A driver that dies mid-write leaves
    the previous record whole."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir  # a local folder or a storage URL
        self._thread: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._waiting: Record | None = None  # the newest record not yet being stored
        self._error: OSError | None = None  # why an earlier record could not be stored
        # The CPU the thread spent on the last record (pickling; storing is I/O, which
        # does not slow the run): what the driver's 5 % budget counts.
        self.seconds = 0.0
        self._journaled: dict[str, int] = {}  # actor -> the last call this writer put in the journal
        self._segments = 0  # numbers this writer's segments: a later one wins over an earlier one
        self._written: dict[str, list[tuple[int, str]]] = {}  # actor -> (last call, name) of its segments

    def write(self, record: Record) -> None:
        """Queue ``record``. A record still waiting behind the one being stored is
        replaced by it: only the newest matters, and a slow store (an object store's
        requests) must not make rounds queue up. Raises the OSError of an earlier record
        that could not be stored."""
        self._raise()
        with self._lock:
            queued, self._waiting = self._waiting is not None, record
        if queued:
            return  # the store queued already takes the newest
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipec-record")
        self._thread.submit(self._drain)

    def close(self) -> None:
        """Wait until the newest record is stored; raises the OSError of one that was not."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        self._raise()

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _drain(self) -> None:
        with self._lock:
            record, self._waiting = self._waiting, None
        if record is None:
            return
        try:
            self._store(record)
        except OSError as exc:
            self._error = exc

    def _store(self, record: Record) -> None:
        start = time.thread_time()
        actors, segments = {}, []
        for actor, state in record.actors.items():
            key = next((k for k in JOURNALED if k in state), None)
            if key is None:
                actors[actor] = state
                continue
            done, log = self._journaled.get(actor, -1), state[key]
            i = len(log)
            while i and log[i - 1][0] > done:  # the calls are in order: the new ones end it
                i -= 1
            new = log[i:]
            if new:
                segments.append((actor, new))
            actors[actor] = {k: v for k, v in state.items() if k != key} | {"journal": key}
        try:
            blobs = [(actor, new, pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL)) for actor, new in segments]
            data = pickle.dumps(replace(record, actors=actors), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return  # a value that cannot be pickled: the previous record stands
        self.seconds = time.thread_time() - start
        # The segments before the record that needs them: a driver killed in between
        # leaves a segment no record names yet, which reading ignores.
        for actor, new, blob in blobs:
            self._segments += 1
            name = f"{actor}.{new[0][0]}-{new[-1][0]}.{time.time_ns()}{self._segments:06d}.pickle"
            storage.atomic_write(storage.join(self.run_dir, JOURNAL, name), blob)
            self._journaled[actor] = new[-1][0]
            self._written.setdefault(actor, []).append((new[-1][0], name))
        storage.atomic_write(storage.join(self.run_dir, RECORD), data)
        for actor, state in record.actors.items():
            if state.get("snapshot") is not None:
                _prune(storage.join(self.run_dir, "actors"), actor, state["snapshot"])
                self._prune_journal(actor, state["snapshot"])

    def _prune_journal(self, actor: str, snapshot: int) -> None:
        """Drop the segments this writer wrote whose calls the snapshot a record names
        holds already (no listing: on an object store that is a request per record; a
        resumed run's older segments go when the run finishes, see :func:`finish`)."""
        kept = []
        for last, name in self._written.get(actor, ()):
            if last <= snapshot:
                storage.remove(storage.join(self.run_dir, JOURNAL, name))
            else:
                kept.append((last, name))
        self._written[actor] = kept


def read(run_dir: str) -> Record | None:
    """The newest record in run folder ``run_dir`` with its actors' calls (see
    :func:`with_calls`), or None (none yet, or an older format)."""
    record = read_record(run_dir)
    return with_calls(run_dir, record) if record is not None else None


def read_record(run_dir: str) -> Record | None:
    """The newest record in run folder ``run_dir`` as stored: its actors' calls still in
    the journal (what a driver checks a record against needs no more), or None."""
    try:
        data = storage.read_bytes(storage.join(run_dir, RECORD))
    except FileNotFoundError:
        return None
    record = pickle.loads(data)
    return record if getattr(record, "format", None) == FORMAT else None


def with_calls(run_dir: str, record: Record) -> Record:
    """``record`` with each actor's calls since its snapshot (a pool's calls to every
    member) read back from the journal; FileNotFoundError when a segment is missing."""
    for actor, state in record.actors.items():
        key = state.pop("journal", None)
        if key is not None:
            state[key] = journaled_calls(run_dir, actor, state["snapshot"], state["next_seq"])
    return record


def journaled_calls(run_dir: str, actor: str, snapshot: int | None, next_seq: int) -> list:
    """Calls ``snapshot + 1 .. next_seq - 1`` of ``actor``, in order, from the journal of
    ``run_dir``. A call in two segments (a resumed run journals again what it replayed;
    a killed one may have left a segment its record never named) is taken from the one
    written last."""
    folder = storage.join(run_dir, JOURNAL)
    segments = []
    for entry in storage.listing(folder):
        span = _segment_span(entry, actor)
        if span is not None and span[1] > (snapshot if snapshot is not None else -1) and span[0] < next_seq:
            segments.append((span[2], entry))
    calls: dict[int, tuple] = {}
    for _, entry in sorted(segments):
        for call in pickle.loads(storage.read_bytes(storage.join(folder, entry))):
            calls[call[0]] = call
    first = snapshot + 1 if snapshot is not None else 0
    missing = [seq for seq in range(first, next_seq) if seq not in calls]
    if missing:
        raise FileNotFoundError(f"the journal of actor `{actor}` lacks calls {missing[0]}..{missing[-1]}")
    return [calls[seq] for seq in range(first, next_seq)]


def _segment_span(entry: str, actor: str) -> tuple[int, int, int] | None:
    """``ACTOR.FIRST-LAST.N.pickle`` -> (FIRST, LAST, N), for ``actor``'s segments."""
    if not entry.startswith(f"{actor}.") or not entry.endswith(".pickle"):
        return None
    middle = entry[len(actor) + 1:-len(".pickle")].split(".")
    if len(middle) != 2 or not middle[1].isdigit():
        return None
    first, _, last = middle[0].partition("-")
    if not (first.isdigit() and last.isdigit()):
        return None
    return int(first), int(last), int(middle[1])


def finish(run_dir: str) -> None:
    """Mark the run finished: nothing is left to resume, so its journal goes too."""
    storage.atomic_write(storage.join(run_dir, FINISHED), b"")
    storage.remove_tree(storage.join(run_dir, JOURNAL))


def finished(run_dir: str) -> bool:
    return storage.exists(storage.join(run_dir, FINISHED))


def clear(run_dir: str) -> None:
    """Forget an earlier run's state in ``run_dir`` (a fresh run reusing the folder must
    not restore its actors from old snapshots)."""
    for sub in ("resume", "actors"):
        storage.remove_tree(storage.join(run_dir, sub))


def restore_snapshot(snapshot: str, seq: int | None) -> None:
    """Make an actor's snapshot file the one a record names (``seq``; None: no snapshot,
    the actor starts from its constructor), so the actor restores from it as it starts."""
    if seq is None:
        storage.remove(snapshot)
    else:
        storage.copy(versioned(snapshot, seq), snapshot)


def _prune(folder: str, actor: str, keep_from: int) -> None:
    """Drop versioned snapshots older than the one the newest record names, and the
    chunks only they named."""
    snapshots.prune(folder, actor, keep_from)
