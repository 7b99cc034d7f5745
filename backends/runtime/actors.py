"""Actors that survive failure: sequence-numbered calls, snapshots, replay.

Engines differ (Ray restarts an actor without its state, Dask actors die with their
worker, Spark has none), so pipec closes the gap itself:

* the driver numbers every graph-level call (``seq``) and keeps a :class:`ReplayLog` of
  the calls since the actor's last snapshot;
* the actor lives in an :class:`ActorHost`, which applies a call only if its number is
  above the last applied one, and every ``checkpoint_every`` calls writes a snapshot of
  the object together with that number (atomically);
* after a crash, a new host restores the snapshot and the driver replays its log: calls
  the snapshot already holds are skipped, the rest are applied once, in order.

A periodic snapshot is taken off the call's path: the call's answer leaves at once, and
a thread of the host captures the state as of that call (pickled, with numpy's buffers
out of band and copied into buffers it keeps, so the copy costs no page faults), then
writes it. Nothing reads or changes the state meanwhile: every entry point of the host
(the next call, a call through a handle, ``obj`` itself) first waits for the capture,
which the next call's own work (the driver's round trip, a round's tasks) mostly hides.
Before it applies the next call that is due for a snapshot, the host waits for the
write. So when the driver has the answer of due call ``n``, the snapshot of the due call
before ``n`` is durable, and only that one may be named by a record or let the driver
forget the calls it holds; the log keeps the calls after it (at most
``2 * checkpoint_every - 1``). A host killed mid-write leaves the previous
snapshot whole (the write is atomic) and its temporary is removed by the next host.
A snapshot writes only the chunks of big buffers that changed since the one before (see
:mod:`pipec.backends.runtime.snapshots`, which holds the file format).
"""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipec.backends.runtime import storage
from pipec.backends.runtime.snapshots import (ALIGN, MAGIC, Capture, SnapshotWriter, chunk_folder,  # noqa: F401
                                              decode_state, encode_state, read_snapshot, versioned)
from pipec.backends.runtime.tasks import resolve

SKIPPED = "pipec:skipped"


class ActorHost:
    """Hosts one actor object; applies numbered calls exactly once; snapshots itself."""

    def __init__(self, module: str, cls: str, args: list, kwargs: dict,
                 checkpoint_every: int | None = None, snapshot: str | None = None):
        self.checkpoint_every = checkpoint_every
        # a local path or a storage URL (s3://...): a host restarted on another node reads it
        self.snapshot_path = str(snapshot) if snapshot else None
        self.applied = -1  # seq of the last call applied to ``obj``
        # The result of call ``applied``: if the worker dies after a snapshot but before
        # the caller got the result, the call sent again returns it instead of SKIPPED.
        self.last_result: Any = None
        self.restored = False
        # Calls made through handles from inside stages: idempotency key -> answer. A task
        # run again (retried, or re-run after a worker or this actor was lost) sends the
        # same keys, and gets the recorded answers without applying them twice.
        self.keyed: dict[tuple, Any] = {}
        self._latest: dict[str, tuple] = {}  # stage -> the newest round that called it
        self._writer: ThreadPoolExecutor | None = None  # captures and writes snapshots off the call's path
        self._writing: Future | None = None  # the snapshot being written, if any
        self._capturing: threading.Event | None = None  # set once that snapshot's capture is over
        # writes each snapshot with only the chunks of big buffers changed since the last
        self._snapshots = SnapshotWriter(self.snapshot_path) if self.snapshot_path else None
        self._remove_partial_snapshots()
        state = self._stored_state()
        if state is not None:
            self._obj, self.applied = state[0], state[1]
            self.last_result = state[2] if len(state) > 2 else SKIPPED
            if len(state) > 3:
                self.keyed, self._latest = state[3], state[4]
            self.restored = True
        else:
            self._obj = resolve(module, cls)(*args, **kwargs)

    @property
    def obj(self) -> Any:
        """The actor object, once a snapshot being captured has its state."""
        self._captured()
        return self._obj

    def _captured(self) -> None:
        """Wait until the snapshot being captured, if any, holds the state: until then
        nothing may read or change it (see the module's docstring)."""
        capturing = self._capturing
        if capturing is not None:
            capturing.wait()

    def _remove_partial_snapshots(self) -> None:
        """A host killed while it saved left the temporary file of that save (on disk; an
        object store writes in one PUT and leaves none): only one host of this actor lives
        at a time, so any such file is a leftover."""
        if self.snapshot_path is None or not storage.is_local(self.snapshot_path):
            return
        folder, name = storage.parent(self.snapshot_path), storage.name(self.snapshot_path)
        stem = name.rsplit(".", 1)[0]
        for entry in storage.listing(folder):
            if entry.startswith(f".{stem}.") and entry.endswith(".tmp"):
                storage.remove(storage.join(folder, entry))
        chunks = storage.join(folder, chunk_folder(self.snapshot_path))
        for entry in storage.listing(chunks):  # a chunk being written when the host died
            if entry.startswith(".") and entry.endswith(".tmp"):
                storage.remove(storage.join(chunks, entry))

    def _stored_state(self) -> tuple | None:
        """The snapshot's state, or None when there is none (one read: on an object store
        a lookup first would cost a second request)."""
        if self.snapshot_path is None:
            return None
        try:
            return read_snapshot(self.snapshot_path)
        except FileNotFoundError:
            return None

    def call(self, seq: int, method: str, args: list, kwargs: dict) -> Any:
        """Apply call ``seq`` unless it was applied already (then return SKIPPED, or the
        result of the last applied call when ``seq`` is that call). A call due for a
        snapshot first waits for the previous snapshot's write (raising its error, before
        anything is applied), then starts its own (see the module's docstring)."""
        self._captured()
        if seq <= self.applied:
            return self.last_result if seq == self.applied else SKIPPED
        due = bool(self.checkpoint_every and self.snapshot_path is not None and (seq + 1) % self.checkpoint_every == 0)
        if due:
            self.flush()
        result = getattr(self._obj, method)(*args, **kwargs)
        self.applied = seq
        self.last_result = result
        if due:
            self.save_in_background()
        return result

    def invoke(self, key: tuple | None, method: str, args: tuple, kwargs: dict) -> Any:
        """A call from inside a stage, through a handle. ``key`` is its idempotency key,
        ``(stage, round, partition, binding, position)``: a key seen before is answered
        from the table and not applied again. Keys of a stage's earlier rounds are dropped
        when a newer round calls (rounds run one after another, so those tasks are done)."""
        self._captured()
        if key is None:
            return getattr(self._obj, method)(*args, **kwargs)
        if key in self.keyed:
            return self.keyed[key]
        stage, rounds = key[0], key[1]
        latest = self._latest.get(stage)
        if latest is None or rounds > latest:
            if latest is not None:
                self.keyed = {k: v for k, v in self.keyed.items() if k[0] != stage or k[1] >= rounds}
            self._latest[stage] = rounds
        result = getattr(self._obj, method)(*args, **kwargs)
        self.keyed[key] = result
        return result

    def save(self) -> None:
        """A snapshot of the state now, written before this returns."""
        self.flush()
        self.write(self.applied, self.capture())

    def save_in_background(self) -> None:
        """A snapshot of the state now, captured and then written by the host's thread:
        this returns at once, and every entry point waits for the capture (see
        :meth:`_captured`), :meth:`flush` for the write. An error of either is raised by
        the next :meth:`flush`."""
        self.flush()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipec-snapshot")
        capturing = self._capturing = threading.Event()
        self._writing = self._writer.submit(self._capture_and_write, self.applied, capturing)

    def _capture_and_write(self, seq: int, capturing: threading.Event) -> None:
        try:
            captured = self.capture()
        finally:
            capturing.set()  # the state may change again (a failed capture left it as it was)
        self.write(seq, captured)

    def flush(self) -> None:
        """Wait until the snapshot being written, if any, is durable; raises its error."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def write(self, seq: int, captured: Capture) -> None:
        """Store snapshot ``seq`` (a :meth:`capture`) atomically: the chunks it changed,
        then the file that names them."""
        self._snapshots.write(captured, seq)

    def capture(self) -> Capture:
        """The state as of now, copied for a snapshot (see snapshots.SnapshotWriter)."""
        return self._snapshots.capture(self._snapshot_state())

    def _snapshot_state(self) -> tuple:
        # ``_obj``, not ``obj``: a background capture reads it while every entry point waits
        return self._obj, self.applied, self.last_result, self.keyed, self._latest

    def snapshot_bytes(self) -> bytes:
        """The state as of now as one self-contained snapshot file."""
        self._captured()
        return b"".join(encode_state(self._snapshot_state()))

    def checkpoint(self) -> bool:
        """A snapshot now, whatever ``checkpoint_every`` says: the driver asks for one when
        a graph whose stages called this actor through handles has finished, so the state
        those calls built survives a later loss (the driver's replay log holds only
        graph-level calls). False when the actor has nowhere to save."""
        if self.snapshot_path is None:
            return False
        self.save()  # a VersionedHost keeps it under its number too: a record may name it
        return True

    def close(self) -> None:
        """The run is over: the snapshot being written is finished and the thread ends."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def state(self):
        return self.obj


@dataclass
class ReplayLog:
    """The driver's record of calls not yet covered by a snapshot."""

    checkpoint_every: int | None
    entries: list[tuple[int, str, list, dict]] = field(default_factory=list)
    next_seq: int = 0
    # The number of the newest snapshot known to be durable (it holds calls 0 ..
    # snapshot), None before the first: a resume record names it, and replays the
    # entries after it.
    snapshot: int | None = None
    # The newest periodic snapshot the host has started writing and may still be
    # writing: never named by a record, and its calls stay in the log.
    writing: int | None = None

    def record(self, method: str, args: list, kwargs: dict) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.entries.append((seq, method, args, kwargs))
        return seq

    def confirm(self, seq: int) -> None:
        """Call ``seq`` returned. When it was due for a snapshot, the host finished writing
        the one before it (it waits for that write before applying ``seq``), so that one
        is durable and the entries it covers are dropped; ``seq``'s own is being written."""
        if self.checkpoint_every and (seq + 1) % self.checkpoint_every == 0:
            if self.writing is not None and self.writing < seq:
                self._durable(self.writing)
            if self.writing is None or seq > self.writing:
                self.writing = seq

    def checkpointed(self) -> None:
        """The actor saved a snapshot holding every call made so far, and waited for it
        (the driver asks for one after a graph whose stages called it through handles):
        those calls are in no log, so a record must name this snapshot, numbered by the
        last call applied."""
        self.writing = None
        self._durable(self.next_seq - 1)

    def flushed(self) -> None:
        """The host finished every snapshot it had started (see ActorHost.flush)."""
        if self.writing is not None:
            self._durable(self.writing)
            self.writing = None

    def _durable(self, seq: int) -> None:
        self.snapshot = seq
        self.entries = [e for e in self.entries if e[0] > seq]

    def since(self, applied: int) -> list[tuple[int, str, list, dict]]:
        return [e for e in self.entries if e[0] > applied]


class VersionedHost(ActorHost):
    """An :class:`ActorHost` that also keeps each snapshot under its sequence number, for
    backends that can resume a run: the newest snapshot may already hold calls of the
    round the driver died in, so a resumed run restores the one its record names."""

    def write(self, seq: int, captured: Capture) -> None:
        # numbered first, then the newest as a copy of it (see SnapshotWriter.write)
        self._snapshots.write(captured, seq, versioned(self.snapshot_path, seq))


def last_snapshot(checkpoint_every: int | None, next_seq: int) -> int | None:
    """The sequence number of the newest snapshot once calls ``0 .. next_seq - 1`` are
    applied (a host saves after call ``seq`` when ``(seq + 1) % checkpoint_every == 0``),
    or None when there is none yet."""
    if not checkpoint_every or next_seq < checkpoint_every:
        return None
    return next_seq // checkpoint_every * checkpoint_every - 1


class EachCalls:
    """A pool member's share of the calls made to every member (``pool.each.m(...)``):
    applied in order, each once. The driver numbers them per pool and keeps them all in a
    file of the run folder (pools have no snapshots, so a member's state is its
    constructor plus these calls); a member built, or rebuilt after its process died,
    replays that file first, so a call made while it was down reaches it too."""

    def __init__(self, obj: Any, path: str | None):
        self.applied = -1
        self.last: Any = SKIPPED
        if path is not None:
            for seq, method, args, kwargs in read_each_log(path):
                self.call(obj, seq, method, args, kwargs)

    def call(self, obj: Any, seq: int, method: str, args: list, kwargs: dict) -> Any:
        """Apply call ``seq`` unless this member applied it already (then its answer, when
        it was the last, else SKIPPED)."""
        if seq <= self.applied:
            return self.last if seq == self.applied else SKIPPED
        result = getattr(obj, method)(*args, **kwargs)
        self.applied, self.last = seq, result
        return result


def read_each_log(path: str) -> list[tuple[int, str, list, dict]]:
    """The calls to every member of a pool so far, from the run folder (none: [])."""
    try:
        return pickle.loads(storage.read_bytes(path))
    except FileNotFoundError:
        return []


def write_each_log(path: str, entries: list) -> None:
    storage.atomic_write(path, pickle.dumps(list(entries), protocol=pickle.HIGHEST_PROTOCOL))
