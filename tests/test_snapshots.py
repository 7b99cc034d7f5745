"""Actor snapshots written off the call's path stay exactly-once.

A host captures its state as of the call a snapshot is numbered by, writes it in a
thread, and waits for that write before the next call due for a snapshot; the driver
names, and forgets the calls held by, only a snapshot it knows is durable. Here: the
file format (numpy buffers out of band, restored writable), the capture (a change made
by the next call never reaches the snapshot), the replay log's bookkeeping, and real
processes killed while a snapshot is being written (the driver on the local backend,
then resumed; the actor's process on Dask and Ray, recovered inside the run): each ends
with the sinks of a run that was never killed, byte for byte, every call applied once,
and no temporary file left.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipec import load
from pipec.backends.runtime import storage
from pipec.backends.runtime.actors import (ActorHost, ReplayLog, VersionedHost, decode_state, encode_state,
                                           read_snapshot, versioned)
from tests.engines import engine_options

ROOT = Path(__file__).resolve().parent.parent

MODULE = '''
import glob, os, signal, time
import numpy as np

def one(x):
    return x + 1

def step(y, r):
    return y * 3 % 1001 + r

def add(a, b):
    return a + b

def _slow_snapshot_writes(watch, marker, armed):
    """Once ``armed`` and until ``marker`` exists, every file this process writes into the
    folder ``watch`` keeps its temporary on disk for a second before the rename, so the
    kill below lands mid-write however fast the disk is (the file is made before its parts
    are written). Earlier snapshots, and writes elsewhere (the chunks, when the manifest is
    watched), go at full speed."""
    from pipec.backends.runtime import storage
    # this test's marker and folder: an engine's worker process may have run an earlier test's
    storage._slow_until, storage._slow_in, storage._slow_armed = marker, os.path.abspath(watch), armed
    if getattr(storage, "_slowed_for_test", False):
        return
    write = storage._atomic_write_local

    def slowly(path, parts):
        def then_wait():
            yield from parts
            watched = os.path.dirname(os.path.abspath(path)) == storage._slow_in
            if watched and storage._slow_armed and not os.path.exists(storage._slow_until):
                time.sleep(1.0)
        return write(path, then_wait())
    storage._atomic_write_local, storage._slowed_for_test = slowly, True


class Big:
    """A big state (``mb`` MB, changed whole by every call, or with ``whole`` 0 an eighth
    of it, so a snapshot writes two of eight chunks) and the calls it applied."""
    def __init__(self, mb, whole):
        self.table = np.zeros(int(mb * 2**20) // 8)
        self.whole = whole
        self.seen = []

    def add(self, x, watch, kill_at, marker):
        # the snapshot taken after the call before the kill is the one written slowly
        _slow_snapshot_writes(watch, marker, armed=len(self.seen) >= kill_at - 1)
        if len(self.seen) == kill_at and not os.path.exists(marker):
            # Die while a snapshot of this actor is being written (a temporary of its
            # file, or with ``watch`` the chunks' folder of one of its chunks, exists).
            deadline = time.time() + 30
            while not glob.glob(os.path.join(watch, ".*.tmp")):
                if time.time() > deadline:
                    raise RuntimeError("no snapshot was being written")
                time.sleep(0.0002)
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        if self.whole:
            self.table += x
        else:
            n = len(self.table) // 8
            self.table[len(self.seen) % 8 * n:(len(self.seen) % 8 + 1) * n] += x
        self.seen.append(x)
        return len(self.seen)

    def history(self):
        return [self.seen, float(self.table[0]), float(self.table[-1]), float(self.table.sum())]
'''

# Snapshots after calls 1, 3, 5, 7; call 4 kills its process while snapshot 3 is being
# written (its file, or one of the chunks it changed), so snapshot 1 is the newest
# durable one: restored, calls 2 and 3 replayed.
PIPELINE = '''use m_snap as m

pipeline p(watch: str, marker: str, kill_at: int = 4, rounds: int = 8, mb: float = 8.0, whole: int = 1) {
    source xs = range(12) partitions 3
    var ys = map m.one over xs
    actor big = m.Big(mb = mb, whole = whole) {
        restarts 2
        checkpoint every 2 calls
    }
    repeat rounds as r {
        ys = map m.step over ys with r = r
        big.add(reduce m.add over ys, watch, kill_at, marker)
    }
    sink out = collect(ys) -> json("out/ys.json")
    sink calls = big.history() -> json("out/calls.json")
}
'''


class Counter:
    def __init__(self):
        self.table = np.zeros(1000)
        self.calls = []

    def add(self, x):
        self.table += x  # in place: a snapshot that kept a view would see the next call
        self.calls.append(x)
        return len(self.calls)


# ---- the file format and the capture -------------------------------------------------------------


def test_a_snapshot_keeps_numpy_buffers_out_of_band_and_restores_them_writable(tmp_path):
    state = ({"w": np.arange(10_000, dtype=np.float64).reshape(100, 100), "v": np.arange(7, dtype=np.int32),
              "strided": np.arange(20.0)[::2], "name": "ps"}, 41, [1, 2])
    parts = encode_state(state)
    assert sum(isinstance(p, bytearray) for p in parts) == 2  # the contiguous arrays, copied once
    path = tmp_path / "ps.snapshot"
    storage.atomic_write(str(path), parts)
    back = read_snapshot(str(path))
    assert back[1:] == (41, [1, 2]) and back[0]["name"] == "ps"
    for key in ("w", "v", "strided"):
        np.testing.assert_array_equal(back[0][key], state[0][key])
        assert back[0][key].dtype == state[0][key].dtype
    back[0]["w"][0, 0] = -1.0  # the actor changes its restored arrays in place
    assert back[0]["w"].flags.aligned and back[0]["w"].flags.writeable
    # A snapshot pickled whole (before out-of-band buffers) is still read.
    assert decode_state(pickle.dumps(("old", 3))) == ("old", 3)


def test_spare_buffers_are_reused_and_never_alias_the_live_state():
    live = np.ones(1000)
    first = encode_state(live)
    again = encode_state(live, spare=first)
    assert [id(p) for p in again if isinstance(p, bytearray)] == [id(p) for p in first if isinstance(p, bytearray)]
    live += 1
    np.testing.assert_array_equal(decode_state(b"".join(again)), np.ones(1000))


@pytest.fixture
def counter_module(tmp_path, monkeypatch):
    (tmp_path / "snap_counter.py").write_text(
        "import numpy as np\n"
        "class Counter:\n"
        "    def __init__(self):\n"
        "        self.table = np.zeros(100_000)\n"
        "        self.calls = []\n"
        "    def add(self, x):\n"
        "        self.table += x\n"
        "        self.calls.append(x)\n"
        "        return len(self.calls)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "snap_counter"


@pytest.mark.parametrize("host_class", [ActorHost, VersionedHost])
def test_a_background_snapshot_holds_the_state_of_the_call_it_is_numbered_by(host_class, counter_module, tmp_path):
    path = str(tmp_path / "actors" / "c.snapshot")
    host = host_class(counter_module, "Counter", [], {}, 3, path)
    for seq in range(4):  # snapshot after call 2; call 3 changes the table in place at once
        host.call(seq, "add", [seq + 1], {})
    host.close()
    obj, applied = read_snapshot(path)[:2]
    assert applied == 2 and obj.calls == [1, 2, 3] and float(obj.table[0]) == 6.0
    if host_class is VersionedHost:
        assert read_snapshot(versioned(path, 2))[0].calls == [1, 2, 3]
        # the newest is a hard link of the numbered one: written once
        assert os.stat(path).st_ino == os.stat(versioned(path, 2)).st_ino
    restored = host_class(counter_module, "Counter", [], {}, 3, path)
    restored.obj.table += 1  # writable after a restore
    assert restored.applied == 2 and restored.obj.calls == [1, 2, 3]
    assert not glob.glob(str(tmp_path / "actors" / ".*.tmp"))


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 3), st.integers(0, 9999), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**20 - 1)),
                                                          max_size=4))
def test_the_chunks_copied_are_exactly_those_whose_bytes_differ(whole, tail, edits):
    """The compare (libc's memcmp where there is one) finds a one-byte change anywhere,
    the last, short chunk included, and nothing else; the copy is the live buffer after."""
    from pipec.backends.runtime import snapshots
    size = whole * snapshots.CHUNK + tail
    live = bytearray(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    copy = bytearray(live)
    for chunk, offset in edits:
        position = min(chunk * snapshots.CHUNK + offset, size - 1)
        live[position] ^= 0xFF
    expected = [i for i in range(-(-size // snapshots.CHUNK))
                if live[i * snapshots.CHUNK:(i + 1) * snapshots.CHUNK] != copy[i * snapshots.CHUNK:(i + 1) * snapshots.CHUNK]]
    assert snapshots._copy_changed(memoryview(bytes(live)), copy) == expected
    assert copy == live
    assert sys.platform == "win32" or snapshots._memcmp() is not None  # the C compare was the one used


@pytest.fixture
def gated_module(tmp_path, monkeypatch):
    """An actor whose state cannot be pickled until ``GATE`` opens: a capture in progress."""
    (tmp_path / "snap_gated.py").write_text(
        "import threading\n"
        "GATE, PICKLING = threading.Event(), threading.Event()\n"
        "class Gated:\n"
        "    def __init__(self):\n"
        "        self.calls = []\n"
        "    def add(self, x):\n"
        "        self.calls.append(x)\n"
        "        return list(self.calls)\n"
        "    def __getstate__(self):\n"
        "        PICKLING.set()\n"
        "        GATE.wait(10)\n"
        "        return {'calls': list(self.calls)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    return importlib.import_module("snap_gated")


@pytest.mark.parametrize("entry", ["call", "invoke", "obj"])
def test_a_due_call_answers_before_its_capture_and_nothing_touches_the_state_until_it_is_over(
        entry, gated_module, tmp_path):
    """The call due for a snapshot answers while a thread of the host captures the state;
    the next call, a call through a handle, or the object itself waits for the capture,
    so the snapshot holds the state of its own call, never a later one."""
    gated_module.GATE.clear()
    gated_module.PICKLING.clear()
    path = str(tmp_path / "g.snapshot")
    host = ActorHost("snap_gated", "Gated", [], {}, 2, path)
    host.call(0, "add", [1], {})
    assert host.call(1, "add", [2], {}) == [1, 2]  # due: answered with its capture still blocked
    assert gated_module.PICKLING.wait(10)
    done = threading.Event()
    seen = []
    action = {"call": lambda: host.call(2, "add", [3], {}),
              "invoke": lambda: host.invoke(("stage", (0,), 0, "b", 0), "add", (3,), {}),
              "obj": lambda: host.obj.add(3)}[entry]
    worker = threading.Thread(target=lambda: (seen.append(action()), done.set()))
    worker.start()
    assert not done.wait(0.3)  # waiting for the capture, not applied
    assert host._obj.calls == [1, 2]
    gated_module.GATE.set()
    worker.join(10)
    assert seen == [[1, 2, 3]]
    host.close()
    obj, applied = read_snapshot(path)[:2]
    assert applied == 1 and obj.calls == [1, 2]


def test_a_failed_background_write_is_raised_before_the_next_due_call_is_applied(counter_module, tmp_path):
    folder = tmp_path / "actors"
    folder.mkdir()
    host = ActorHost(counter_module, "Counter", [], {}, 2, str(folder / "c.snapshot"))
    folder.rmdir()
    folder.write_text("a file where the snapshot's folder should be")
    host.call(0, "add", [1], {})
    host.call(1, "add", [1], {})  # due: its write fails in the thread
    host.call(2, "add", [1], {})
    with pytest.raises(OSError):
        host.call(3, "add", [1], {})  # due: the earlier failure surfaces first
    assert host.applied == 2 and host.obj.calls == [1, 1, 1]


def test_the_replay_log_names_only_a_snapshot_it_knows_is_durable():
    log = ReplayLog(checkpoint_every=3)
    for _ in range(3):
        log.confirm(log.record("add", [1], {}))
    # Call 2 was due: its snapshot is being written, so nothing is forgotten yet.
    assert log.snapshot is None and log.writing == 2 and [e[0] for e in log.entries] == [0, 1, 2]
    for _ in range(3):
        log.confirm(log.record("add", [1], {}))
    # Call 5 was due: the host waited for snapshot 2 before applying it.
    assert log.snapshot == 2 and log.writing == 5 and [e[0] for e in log.entries] == [3, 4, 5]
    log.confirm(5)  # a call sent again after a restore changes nothing
    assert log.snapshot == 2 and log.writing == 5
    log.flushed()
    assert log.snapshot == 5 and log.entries == [] and log.writing is None
    log.record("add", [1], {})
    log.checkpointed()
    assert log.snapshot == 6 and log.entries == []


# ---- incremental snapshots: only the chunks a call changed ------------------------------------------


@pytest.fixture
def table_module(tmp_path, monkeypatch):
    """An actor holding a 4 MB table (four chunks) of which each call changes one slice."""
    (tmp_path / "snap_table.py").write_text(
        "import numpy as np\n"
        "class Table:\n"
        "    def __init__(self):\n"
        "        self.table = np.zeros(4 * 2**20 // 8)\n"
        "        self.calls = []\n"
        "    def add(self, x, part):\n"
        "        n = len(self.table) // 4\n"
        "        self.table[part * n:(part + 1) * n] += x\n"
        "        self.calls.append(x)\n"
        "        return len(self.calls)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "snap_table"


def _chunks(folder: str) -> set[str]:
    return {e for e in storage.listing(storage.join(folder, "t.chunks")) if not e.startswith(".")}


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_a_snapshot_writes_only_the_chunks_changed_since_the_one_before(where, table_module, tmp_path, request):
    folder = str(tmp_path / "actors") if where == "disk" else request.getfixturevalue("s3").url("run/actors")
    path = storage.join(folder, "t.snapshot")
    host = VersionedHost(table_module, "Table", [], {}, 2, path)
    host.call(0, "add", [1.0, 0], {})
    host.call(1, "add", [2.0, 1], {})  # due: the first snapshot holds every chunk
    host.flush()
    first = _chunks(folder)
    assert len(first) == 4
    host.call(2, "add", [3.0, 2], {})
    host.call(3, "add", [4.0, 2], {})  # due: calls 2 and 3 changed one chunk of four
    host.flush()
    assert len(_chunks(folder) - first) == 1 and first <= _chunks(folder)
    host.close()
    # every numbered snapshot restores the state of its own call, the newest the last
    for seq, table in ((1, [1.0, 2.0, 0.0, 0.0]), (3, [1.0, 2.0, 7.0, 0.0])):
        obj, applied = read_snapshot(versioned(path, seq))[:2]
        n = len(obj.table) // 4
        assert applied == seq and [float(obj.table[i * n]) for i in range(4)] == table
        assert [float(obj.table[(i + 1) * n - 1]) for i in range(4)] == table
    restored = VersionedHost(table_module, "Table", [], {}, 2, path)
    assert restored.applied == 3 and restored.obj.calls == [1.0, 2.0, 3.0, 4.0]
    restored.obj.table += 1  # writable after a restore from chunks
    assert restored.obj.table.flags.aligned


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_chunks_no_snapshot_names_any_more_are_removed(where, table_module, tmp_path, request):
    """The driver prunes numbered snapshots a record may no longer name: their chunks go
    too, so the folder holds at most the chunks of the snapshots kept."""
    from pipec.backends.runtime import snapshots
    folder = str(tmp_path / "actors") if where == "disk" else request.getfixturevalue("s3").url("run/actors")
    path = storage.join(folder, "t.snapshot")
    host = VersionedHost(table_module, "Table", [], {}, 1, path)  # a snapshot after every call
    for seq in range(12):
        host.call(seq, "add", [float(seq), seq % 4], {})
        if seq >= 2:
            host.flush()
            snapshots.prune(folder, "t", seq - 1)  # what a record naming snapshot seq - 1 does
    host.close()
    numbered = sorted(e for e in storage.listing(folder) if e.endswith(".snapshot"))
    assert numbered == ["t.10.snapshot", "t.11.snapshot", "t.snapshot"]
    assert len(_chunks(folder)) == 5  # four chunks of snapshot 11, one that only 10 names
    obj = read_snapshot(versioned(path, 10))[0]
    assert obj.calls == [float(s) for s in range(11)]
    snapshots.prune(folder, "t", None)  # a finished run: only the newest is left
    assert [e for e in storage.listing(folder) if e.endswith(".snapshot")] == ["t.snapshot"]
    assert len(_chunks(folder)) == 4
    assert read_snapshot(path)[0].calls == [float(s) for s in range(12)]


def test_a_snapshot_whose_chunk_is_gone_is_an_error_not_a_fresh_start(table_module, tmp_path):
    from pipec.backends.runtime.snapshots import SnapshotDamaged
    path = str(tmp_path / "actors" / "t.snapshot")
    host = VersionedHost(table_module, "Table", [], {}, 1, path)
    host.call(0, "add", [1.0, 0], {})
    host.close()
    os.unlink(next(iter(glob.glob(str(tmp_path / "actors" / "t.chunks" / "*")))))
    with pytest.raises(SnapshotDamaged):
        VersionedHost(table_module, "Table", [], {}, 1, path)


def test_a_small_state_is_one_file_and_an_older_format_is_still_read(counter_module, tmp_path):
    path = str(tmp_path / "actors" / "c.snapshot")
    host = VersionedHost(counter_module, "Counter", [], {}, 1, path)  # 800 KB: below a chunk
    host.call(0, "add", [1], {})
    host.close()
    assert not os.path.exists(tmp_path / "actors" / "c.chunks")
    # format 1 (every buffer inline, written by pipec before incremental snapshots)
    import struct
    buffer = np.arange(5.0).tobytes()
    views = []
    header = pickle.dumps(np.arange(5.0), protocol=5, buffer_callback=views.append)
    head = b"pipec-snapshot1\n" + struct.pack("<QQQ", len(header), 1, len(buffer))
    pad = b"\0" * (-(len(head) + len(header)) % 64)
    np.testing.assert_array_equal(decode_state(head + header + pad + buffer), np.arange(5.0))


# ---- processes killed while a snapshot is being written ---------------------------------------------


def _write(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "m_snap.py").write_text(MODULE)
    path = root / "p.pipe"
    path.write_text(PIPELINE)
    return path


def _outputs(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "out").glob("*.json"))}


# Where the kill lands: while the snapshot's file is written (every chunk changed), or
# while one chunk of an incremental snapshot is written (the manifest not yet).
SITES = {"file": ("actors", 1), "chunk": ("actors/big.chunks", 0)}


def _params(root: Path, marker: Path, site: str = "file") -> dict:
    watch, whole = SITES[site]
    return {"watch": str(root / "run" / watch), "marker": str(marker), "whole": whole}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The sinks of runs that are never killed (the reference backend), per site."""
    outputs = {}
    for site in SITES:
        root = tmp_path_factory.mktemp(f"clean-{site}")
        path = _write(root)
        marker = root / "marker"
        marker.touch()
        cwd = os.getcwd()
        os.chdir(root)
        try:
            load(path).run(backend="local", params=_params(root, marker, site), run_dir="run")
        finally:
            os.chdir(cwd)
        outputs[site] = _outputs(root)
        seen = json.loads(outputs[site]["calls.json"])[0]
        assert len(seen) == 8 and len(set(seen)) == 8  # every call's argument differs: a repeat would show
    return outputs


def _no_temporaries(run: Path) -> bool:
    return not glob.glob(str(run / "actors" / ".*.tmp")) and not glob.glob(str(run / "actors" / "*" / ".*.tmp"))


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipec", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("site", SITES)
def test_a_driver_killed_while_a_snapshot_is_written_resumes_from_the_one_before(site, clean, tmp_path):
    """The local backend hosts its actor in the driver: the driver dies with a snapshot
    half-written; the last record names an older, whole one, and the resumed run replays
    the calls after it once each."""
    root = tmp_path / "local"
    path = _write(root)
    params = _params(root, tmp_path / "marker", site)
    args = [f"--param={k}={v}" for k, v in params.items()]
    killed = _cli("run", str(path), "--backend", "local", "--run-dir", "run", *args, cwd=root)
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "marker").exists()
    from pipec.backends.runtime import resume
    record = resume.read(str(root / "run"))
    state = record.actors["big"]
    assert state["snapshot"] in (None, 1) and state["snapshot"] != 3  # never the one being written
    assert [e[0] for e in state["log"]] == list(range((state["snapshot"] or -1) + 1, state["next_seq"]))
    resumed = _cli("run", str(path), "--backend", "local", "--run-dir", "run", "--resume", "run", *args, cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert _outputs(root) == clean[site]
    assert _no_temporaries(root / "run")


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("backend", ["dask", "ray"])
def test_an_actor_killed_while_its_snapshot_is_written_comes_back_from_the_one_before(backend, site, clean,
                                                                                       tmp_path, monkeypatch):
    """The actor's process dies with snapshot 3 half-written: the engine's replacement
    restores snapshot 1, the driver replays calls 2 and 3, and call 4 is applied once."""
    root = tmp_path / backend
    path = _write(root)
    monkeypatch.chdir(root)
    marker = tmp_path / "marker"
    result = load(path).run(backend=backend, params=_params(root, marker, site), run_dir="run",
                            **engine_options(backend))
    assert marker.exists()  # the actor was killed mid-write
    assert _outputs(root) == clean[site]
    assert list(result.rounds.values()) == [8]
    assert _no_temporaries(root / "run")
