"""`pipec run --resume`: a run that stopped part-way continues after its last completed
round, on every backend that keeps records, and ends with what a run that never stopped
writes. The run here stops because a stage fails once in round 3 (the driver-killed
variants, with SIGKILL, are in test_ray.py and test_spark.py).

Covered: a collection var carried from round to round (restored from the record's
partitions), an actor with checkpoints (restored from the snapshot the record names, the
calls since replayed exactly once), a top-level value computed before the loop, and a
Parquet dataset sink written after it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipec import load
from pipec.dsl.diagnostics import PipelineRuntimeError, UsageError
from pipec.backends import backend_class
from pipec.backends.runtime import resume
from tests.engines import BACKENDS, engine_options, joining_env

# Every backend that declares the capability is held to a clean run.
RESUMABLE = [b for b in BACKENDS if "resume" in backend_class(b).capabilities]

MODULE = '''
import os

def one(x):
    return x + 1

def step(y, r, marker):
    if r == 3 and not os.path.exists(marker):
        open(marker, "a").close()
        raise RuntimeError("the run stops here once")
    return y * 2 % 1000 + r

def add(a, b):
    return a + b

def row(y):
    return {"y": y}

class Acc:
    def __init__(self):
        self.seen = []
    def add(self, x):
        self.seen.append(x)
        return len(self.seen)
    def history(self):
        return list(self.seen)
'''

PIPELINE = '''use m_resume as m

pipeline p(marker: str, rounds: int = 6) {
    source xs = range(12) partitions 3
    value base = reduce m.add over xs
    var ys = map m.one over xs
    actor acc = m.Acc() { checkpoint every 2 calls }
    repeat rounds as r {
        ys = map m.step over ys with r = r, marker = marker
        acc.add(reduce m.add over ys)
    }
    sink out = collect(ys) -> json("out/ys.json")
    sink calls = acc.history() -> json("out/calls.json")
    sink first = base -> json("out/base.json")
    sink table = map m.row over ys -> parquet("out/ys")
}
'''


def _outputs(root: Path) -> dict[str, bytes]:
    """Every file the sinks wrote (a dataset's parts too), with its bytes."""
    out = root / "out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _write(root: Path) -> Path:
    root.mkdir()
    (root / "m_resume.py").write_text(MODULE)
    path = root / "p.pipe"
    path.write_text(PIPELINE)
    return path


# An engine address nothing listens on, per backend.
UNREACHABLE = {"dask": "tcp://127.0.0.1:9", "ray": "127.0.0.1:9", "spark": "spark://127.0.0.1:9"}


@pytest.mark.parametrize("backend", RESUMABLE)
def test_a_stopped_run_resumes_after_its_last_round_and_ends_as_a_clean_run(backend, tmp_path, monkeypatch):
    clean_root = tmp_path / "clean"
    clean_marker = tmp_path / "clean.marker"
    clean_marker.touch()  # the clean run never stops
    path = _write(clean_root)
    monkeypatch.chdir(clean_root)
    load(path).run(backend="local", params={"marker": str(clean_marker)}, run_dir="run")
    expected = _outputs(clean_root)

    root = tmp_path / backend
    pipeline = load(_write(root))
    monkeypatch.chdir(root)
    params = {"marker": str(tmp_path / f"{backend}.marker")}
    options = engine_options(backend)
    with pytest.raises(PipelineRuntimeError, match="the run stops here once"):
        pipeline.run(backend=backend, params=params, run_dir="run", **options)
    assert not (root / "out").exists()
    resumed = pipeline.run(backend=backend, params=params, run_dir="run", resume=True, **options)
    assert _outputs(root) == expected
    assert list(resumed.rounds.values()) == [6]
    with pytest.raises(UsageError, match="finished already"):
        pipeline.run(backend=backend, params=params, run_dir="run", resume=True, **options)
    if backend in UNREACHABLE:  # refused before any engine is reached: nothing listens there
        with pytest.raises(UsageError, match="finished already"):
            pipeline.run(backend=backend, params=params, run_dir="run", resume=True, address=UNREACHABLE[backend])


def test_a_backend_without_the_capability_refuses_to_resume(tmp_path):
    from pipec.backends.local import LocalBackend

    class NoRecords(LocalBackend):
        name = "no-records"
        capabilities = LocalBackend.capabilities - {"resume"}
    pipeline = load(_write(tmp_path / "p"))
    with pytest.raises(UsageError, match="backend `no-records` cannot resume a run"):
        pipeline.run(backend=NoRecords(), params={"marker": "m"}, run_dir=str(tmp_path / "run"), resume=True)


def test_a_record_resumes_only_on_the_backend_that_wrote_it(tmp_path, monkeypatch):
    root = tmp_path / "run"
    path = _write(root)
    monkeypatch.chdir(root)
    pipeline = load(path)
    params = {"marker": str(tmp_path / "marker")}
    with pytest.raises(PipelineRuntimeError):
        pipeline.run(backend="local", params=params, run_dir="run")
    with pytest.raises(UsageError, match="ran on backend `local`"):
        pipeline.run(backend="dask", params=params, run_dir="run", resume=True, **engine_options("dask"))


ROUND_PIPELINE = '''use m_resume as m

pipeline p(marker: str, rounds: int = 6, tag: str = "acc") {
    source xs = range(12) partitions 3
    var ys = map m.one over xs
    actor acc = m.Acc() { checkpoint every 2 calls }
    repeat rounds as r {
        ys = map m.step over ys with r = r, marker = marker
        acc.add(reduce m.add over ys)
        sink snap = acc.history() -> json("out/{tag}-{r}.json")
        when r % 2 == 1 {
            sink odd = collect(ys) -> jsonl("out/odd-{r}.jsonl")
        }
    }
    sink calls = acc.history() -> json("out/calls.json")
}
'''


@pytest.mark.parametrize("backend", RESUMABLE)
def test_round_files_are_written_once_each_across_a_resume(backend, tmp_path, monkeypatch):
    clean_root = tmp_path / "clean"
    clean_marker = tmp_path / "clean.marker"
    clean_marker.touch()
    path = _write(clean_root)
    path.write_text(ROUND_PIPELINE)
    monkeypatch.chdir(clean_root)
    load(path).run(backend="local", params={"marker": str(clean_marker)}, run_dir="run")
    expected = _outputs(clean_root)
    assert sorted(expected) == ["acc-0.json", "acc-1.json", "acc-2.json", "acc-3.json", "acc-4.json", "acc-5.json",
                                "calls.json", "odd-1.jsonl", "odd-3.jsonl", "odd-5.jsonl"]

    root = tmp_path / backend
    path = _write(root)
    path.write_text(ROUND_PIPELINE)
    pipeline = load(path)
    monkeypatch.chdir(root)
    params = {"marker": str(tmp_path / f"{backend}.marker")}
    options = engine_options(backend)
    with pytest.raises(PipelineRuntimeError, match="the run stops here once"):
        pipeline.run(backend=backend, params=params, run_dir="run", **options)
    # The rounds before the failure committed their files as they went (and nothing else).
    before = {p.name: p.stat() for p in (root / "out").iterdir()}
    assert sorted(before) == ["acc-0.json", "acc-1.json", "acc-2.json", "odd-1.jsonl"]
    resumed = pipeline.run(backend=backend, params=params, run_dir="run", resume=True, **options)
    assert _outputs(root) == expected
    for name, stat in before.items():  # not written again
        now = (root / "out" / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    assert resumed.round_files["snap"] == [f"out/acc-{r}.json" for r in range(6)]
    assert not [p for p in (root / "out").iterdir() if p.name.startswith(".")]  # no hidden leftovers


def test_a_round_file_logged_but_not_moved_is_finished_by_the_resumed_run(tmp_path, monkeypatch):
    from pipec.backends.runtime.sinks import RoundFiles
    run_dir, target = tmp_path / "run", tmp_path / "out" / "eval-3.json"
    target.parent.mkdir()
    dead = RoundFiles(str(run_dir), "dead")
    import pipec.backends.runtime.sinks as sinks

    def killed(*args):  # the driver dies between the log and the move
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(sinks.storage, "move", killed)
        with pytest.raises(KeyboardInterrupt):
            dead.write("eval", {"round": 3}, "json", str(target), False)
    assert not target.exists()
    resumed = RoundFiles(str(run_dir), "resumed")
    assert resumed.recover() == {"eval": [str(target)]}
    assert json.loads(target.read_text()) == {"round": 3}
    assert resumed.write("eval", {"round": 3}, "json", str(target), False) is False  # the round ran again: skipped
    assert [p.name for p in target.parent.iterdir()] == ["eval-3.json"]
    with pytest.raises(FileExistsError):  # another sink (or round) writing the same file is an error
        resumed.write("other", 1, "json", str(target), False)


def test_a_resumed_run_still_reports_a_loop_that_stopped_at_its_cap(tmp_path, monkeypatch):
    root = tmp_path / "capped"
    path = _write(root)
    path.write_text(PIPELINE.replace("repeat rounds as r {", "repeat 2 until acc.add(0) > 100 {\n        value r = 0")
                    .replace("pipeline p(marker: str, rounds: int = 6)", "pipeline p(marker: str)")
                    .replace("    sink table = map m.row over ys -> parquet(\"out/ys\")\n",
                             "    value boom = m.step(0, 3, marker)\n    sink late = boom -> json(\"out/late.json\")\n"))
    monkeypatch.chdir(root)
    monkeypatch.setattr("pipec.backends.runtime.driver.RECORD_BUDGET", 1e9)  # a record after every round
    pipeline, params = load(path), {"marker": str(tmp_path / "marker")}
    with pytest.raises(PipelineRuntimeError, match="the run stops here once"):  # after the loop ended
        pipeline.run(backend="local", params=params, run_dir="run")
    from pipec.backends.runtime import resume
    assert resume.read("run").done  # the resumed run does not run the loop again
    resumed = pipeline.run(backend="local", params=params, run_dir="run", resume=True)
    assert resumed.capped == ["loop1"] and resumed.rounds == {"loop1": 2}


POOL_PIPELINE = '''use m_pool_resume as m

pipeline p(marker: str) {
    source xs = range(6) partitions 3
    actor pool ms = m.Member() x 2
    repeat 5 as r {
        ms.each.push(r)
        stage ys = map_batches ms.tag over (map m.step over xs with r = r, marker = marker)
        sink seen = collect(ys) -> json("out/seen-{r}.json")
    }
    sink state = ms.each.history() -> json("out/state.json")
}
'''

POOL_MODULE = MODULE + '''
class Member:
    def __init__(self):
        self.pushed = []
    def push(self, r):
        self.pushed.append(r)
    def history(self):
        return list(self.pushed)
    def tag(self, items):
        return [(x, len(self.pushed)) for x in items]
'''


@pytest.mark.parametrize("backend", [b for b in RESUMABLE if "pool_each" in backend_class(b).capabilities])
def test_a_resumed_pool_replays_its_recorded_calls_to_every_member(backend, tmp_path, monkeypatch):
    def write(root: Path) -> Path:
        root.mkdir()
        (root / "m_pool_resume.py").write_text(POOL_MODULE)
        (root / "p.pipe").write_text(POOL_PIPELINE)
        return root / "p.pipe"
    clean_marker = tmp_path / "clean.marker"
    clean_marker.touch()
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "clean")
    monkeypatch.chdir(tmp_path / "clean")
    load(path).run(backend="local", params={"marker": str(clean_marker)}, run_dir="run")
    expected = _outputs(tmp_path / "clean")
    assert json.loads(expected["state.json"]) == [[0, 1, 2, 3, 4]] * 2

    root = tmp_path / backend
    pipeline = load(write(root))
    monkeypatch.chdir(root)
    params, options = {"marker": str(tmp_path / f"{backend}.marker")}, engine_options(backend)
    with pytest.raises(PipelineRuntimeError, match="the run stops here once"):
        pipeline.run(backend=backend, params=params, run_dir="run", **options)
    journal = root / "run" / "resume" / "journal"
    assert [p.name.split(".")[0] for p in journal.iterdir()].count("ms") >= 1  # the pool's calls, journaled
    pipeline.run(backend=backend, params=params, run_dir="run", resume=True, **options)
    assert _outputs(root) == expected  # every member got every push once, also those before the record
    assert not journal.exists()  # a finished run has nothing left to resume


JOURNAL_MODULE = MODULE + '''
def step_until(y, r, stop, marker):
    if r == stop and not os.path.exists(marker):
        open(marker, "a").close()
        raise RuntimeError("the run stops here once")
    return y + r
'''

JOURNAL_PIPELINE = '''use m_journal as m

pipeline p(marker: str, stop: int, rounds: int = 40) {
    source xs = range(6) partitions 2
    actor acc = m.Acc()
    repeat rounds as r {
        value total = reduce m.add over (map m.step_until over xs with r = r, stop = stop, marker = marker)
        acc.add([r, total, "a call argument long enough to be seen in a record's size"])
    }
    sink calls = acc.history() -> json("out/calls.json")
}
'''


DATASET_PIPELINE = '''use m_resume as m

pipeline p(marker: str, rounds: int = 6) {
    source xs = range(12) partitions 3
    var ys = map m.one over xs
    repeat rounds as r {
        ys = map m.step over ys with r = r, marker = marker
        sink preds = map m.row over ys -> parquet("out/preds-{r}")
        when r % 2 == 1 {
            sink odd = map m.row over ys -> csv("out/odd-{r}")
        }
    }
    sink last = collect(ys) -> json("out/last.json")
}
'''


def test_records_stay_the_same_size_however_many_calls_an_actor_without_snapshots_has(tmp_path, monkeypatch):
    """An actor without snapshots replays every call since the start on resume: the calls
    go into the run's journal, each written once, and a record names where they end, so
    a record after 30 rounds is as big as one after 3, and resuming replays them all."""
    sizes = {}
    for stop in (3, 30):
        root = tmp_path / f"stop{stop}"
        root.mkdir()
        (root / "m_journal.py").write_text(JOURNAL_MODULE)
        (root / "p.pipe").write_text(JOURNAL_PIPELINE)
        monkeypatch.chdir(root)
        pipeline = load(root / "p.pipe")
        params = {"marker": str(root / "marker"), "stop": stop}
        with pytest.raises(PipelineRuntimeError, match="the run stops here once"):
            pipeline.run(backend="local", params=params, run_dir="run")
        sizes[stop] = (root / "run" / "resume" / "state.pickle").stat().st_size
        record = resume.read(str(root / "run"))
        spans = sorted(tuple(map(int, p.name.split(".")[1].split("-")))
                       for p in (root / "run" / "resume" / "journal").iterdir())
        # Each call written once: the segments follow each other, up to the record's end.
        assert [first for first, _ in spans] == [0] + [last + 1 for _, last in spans[:-1]]
        assert spans[-1][1] == record.actors["acc"]["next_seq"] - 1 == record.rounds - 1
        pipeline.run(backend="local", params=params, run_dir="run", resume=True)
        calls = json.loads((root / "out" / "calls.json").read_text())
        assert [c[0] for c in calls] == list(range(40))  # every call once, in order
    # A journal that lost a segment cannot be replayed: said so, not resumed short (the
    # finished run removed its journal; taking the mark away leaves a run without one).
    assert not (root / "run" / "resume" / "journal").exists()
    (root / "run" / "resume" / "finished").unlink()
    with pytest.raises(UsageError, match="cannot be resumed: the journal of actor `acc` lacks calls 0"):
        pipeline.run(backend="local", params=params, run_dir="run", resume=True)
    assert abs(sizes[30] - sizes[3]) < 16, sizes


def test_a_call_journaled_twice_is_read_from_the_segment_written_last(tmp_path):
    """A resumed run journals again the calls it replayed, and a killed run may leave a
    segment its record never named: reading takes each call from the newest segment
    holding it, only the calls the record needs, and says which are missing."""
    base = dict(pipeline="p", backend="local", fingerprint="f", top_index=0, loop="loop1", done=False)

    def store(rounds: int, log: list) -> None:
        writer = resume.RecordWriter(str(tmp_path))  # a run of its own each time
        writer.write(resume.Record(**base, rounds=rounds,
                                   actors={"acc": {"next_seq": log[-1][0] + 1, "snapshot": None, "log": log}}))
        writer.close()
    store(2, [(0, "add", [0], {}), (1, "add", ["first"], {})])
    store(3, [(0, "add", [0], {}), (1, "add", ["again"], {}), (2, "add", [2], {})])  # resumed
    record_file = tmp_path / "resume" / "state.pickle"
    named = record_file.read_bytes()
    store(4, [(3, "add", [3], {})])
    record_file.write_bytes(named)  # as if killed after the segment, before its record
    record = resume.read(str(tmp_path))
    assert record.actors["acc"]["log"] == [(0, "add", [0], {}), (1, "add", ["again"], {}), (2, "add", [2], {})]
    assert "journal" not in record.actors["acc"]
    for segment in (tmp_path / "resume" / "journal").iterdir():
        if segment.name.startswith("acc.0-"):
            segment.unlink()
    with pytest.raises(FileNotFoundError, match="lacks calls 0..2"):
        resume.read(str(tmp_path))


def _dataset_root(root: Path) -> Path:
    path = _write(root)
    path.write_text(DATASET_PIPELINE)
    return path


def _clean_datasets(tmp_path: Path, monkeypatch) -> dict[str, bytes]:
    marker = tmp_path / "clean.marker"
    marker.touch()
    path = _dataset_root(tmp_path / "clean")
    monkeypatch.chdir(tmp_path / "clean")
    load(path).run(backend="local", params={"marker": str(marker)}, run_dir="run")
    return _outputs(tmp_path / "clean")


def _hidden(root: Path) -> list[str]:
    return [str(p) for p in (root / "out").rglob(".*")]


@pytest.mark.parametrize("backend", RESUMABLE)
def test_round_datasets_are_committed_once_each_across_a_resume(backend, tmp_path, monkeypatch):
    expected = _clean_datasets(tmp_path, monkeypatch)
    assert sorted({name.split("/")[0] for name in expected}) == [
        "last.json", *[f"odd-{r}" for r in (1, 3, 5)], *[f"preds-{r}" for r in range(6)]]
    root = tmp_path / backend
    pipeline = load(_dataset_root(root))
    monkeypatch.chdir(root)
    params, options = {"marker": str(tmp_path / f"{backend}.marker")}, engine_options(backend)
    with pytest.raises(PipelineRuntimeError, match="the run stops here once"):
        pipeline.run(backend=backend, params=params, run_dir="run", **options)
    # Rounds 0 to 2 committed their datasets whole; round 3's tasks failed: nothing of it.
    before = {str(p.relative_to(root / "out")): p.stat() for p in (root / "out").rglob("*") if p.is_file()}
    assert sorted({name.split("/")[0] for name in before}) == ["odd-1", "preds-0", "preds-1", "preds-2"]
    assert all(name in expected for name in before) and not _hidden(root)
    resumed = pipeline.run(backend=backend, params=params, run_dir="run", resume=True, **options)
    assert _outputs(root) == expected
    for name, stat in before.items():  # not written again
        now = (root / "out" / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    assert resumed.round_files["preds"] == [f"out/preds-{r}" for r in range(6)]
    assert not _hidden(root)


KILLER = '''
import os, sys
from pipec import load
from pipec.backends.runtime import datasets

how, marker, resume = sys.argv[1], sys.argv[2], len(sys.argv) > 3
write_part, commit = datasets.write_part, datasets.commit

def dying_write(items, fmt, staging, partition):
    if how == "parts" and not resume and "preds-3" in staging and partition == 1:
        os._exit(9)  # the driver dies while round 3's tasks write its parts: part 0 is there
    return write_part(items, fmt, staging, partition)

def dying_commit(staging, target, names, again=False):
    if how == "commit" and not resume and target.endswith("preds-3"):
        fs, root = datasets.filesystem(target)
        fs.makedirs(root, exist_ok=True)
        fs.mv(staging + "/" + names[0], root + "/" + names[0])
        os._exit(9)  # the driver dies in the middle of round 3's commit: one part moved
    return commit(staging, target, names, again)

datasets.write_part, datasets.commit = dying_write, dying_commit
load("p.pipe").run(backend="local", params={"marker": marker}, run_dir="run", resume=resume)
'''


@pytest.mark.parametrize("how", ["parts", "commit"])
def test_a_round_dataset_cut_short_by_a_killed_driver_is_finished_or_written_again(how, tmp_path, monkeypatch):
    import subprocess
    import sys
    expected = _clean_datasets(tmp_path, monkeypatch)
    root = tmp_path / how
    _dataset_root(root)
    (root / "killer.py").write_text(KILLER)
    monkeypatch.chdir(root)
    marker = tmp_path / "clean.marker"  # no stage failure: the kill stops the run
    env = {**__import__("os").environ, "PYTHONPATH": ":".join(sys.path)}
    run = [sys.executable, "killer.py", how, str(marker)]
    assert subprocess.run(run, env=env, capture_output=True).returncode == 9
    staged = [p.name for p in (root / "out").iterdir() if p.name.startswith(".")]
    if how == "parts":  # round 3's staging folder holds part 0, and its target is not there
        assert [p for p in staged if "preds-3" in p] and not (root / "out" / "preds-3").exists()
    else:  # one part moved in, no _SUCCESS yet
        assert sorted(p.name for p in (root / "out" / "preds-3").iterdir()) == ["part-00000.parquet"]
    before = {str(p.relative_to(root / "out")): p.stat() for p in (root / "out").rglob("*")
              if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root / "out").parts)}
    done = subprocess.run(run + ["--resume"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert _outputs(root) == expected
    assert not _hidden(root)
    for name, stat in before.items():  # what the dead driver committed is not written again
        now = (root / "out" / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name


WHEN_PIPELINE = '''use m_resume as m

pipeline p(marker: str, rounds: int = 6) {
    source xs = range(12) partitions 3
    var ys = map m.one over xs
    var last = -1
    repeat rounds as r {
        stage zs = map m.step over ys with r = r, marker = marker
        when r % 3 != 1 {
            ys = zs
            last = r
        }
        sink seen = [last, collect(ys)] -> json("out/seen-{r}.json")
    }
    sink out = [last, collect(ys)] -> json("out/ys.json")
}
'''


@pytest.mark.parametrize("backend", RESUMABLE)
def test_vars_rebound_in_when_blocks_resume_from_their_recorded_values(backend, tmp_path, monkeypatch):
    marker = tmp_path / "clean.marker"
    marker.touch()
    path = _write(tmp_path / "clean")
    path.write_text(WHEN_PIPELINE)
    monkeypatch.chdir(tmp_path / "clean")
    load(path).run(backend="local", params={"marker": str(marker)}, run_dir="run")
    expected = _outputs(tmp_path / "clean")
    assert [json.loads(expected[f"seen-{r}.json"])[0] for r in range(6)] == [0, 0, 2, 3, 3, 5]

    root = tmp_path / backend
    path = _write(root)
    path.write_text(WHEN_PIPELINE)
    pipeline = load(path)
    monkeypatch.chdir(root)
    monkeypatch.setattr("pipec.backends.runtime.driver.RECORD_BUDGET", 1e9)  # a record after every round
    params, options = {"marker": str(tmp_path / f"{backend}.marker")}, engine_options(backend)
    with pytest.raises(PipelineRuntimeError, match="the run stops here once"):
        pipeline.run(backend=backend, params=params, run_dir="run", **options)
    from pipec.backends.runtime import resume
    record = resume.read("run")
    assert record.rounds == 3 and record.vars["last"] == 2  # the value the `when` of round 2 gave it
    pipeline.run(backend=backend, params=params, run_dir="run", resume=True, **options)
    assert _outputs(root) == expected


def test_a_round_dataset_staged_again_in_its_round_reuses_its_folder(tmp_path):
    from pipec.backends.runtime.sinks import RoundFiles
    files, target = RoundFiles(str(tmp_path / "run"), "one"), str(tmp_path / "out" / "preds-0")
    staging = files.stage_dataset("preds", target)
    assert files.stage_dataset("preds", target) == staging  # a graph submitted again (an actor came back)
    with pytest.raises(FileExistsError):  # another sink writing the same folder in the round
        files.stage_dataset("other", target)
    assert files.commit_dataset("preds", target, []) is True
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["preds-0"]
    assert [p.name for p in (tmp_path / "out" / "preds-0").iterdir()] == ["_SUCCESS"]
    with pytest.raises(FileExistsError):  # a later round writing it again
        files.stage_dataset("preds", target)


KILL_PIPELINE = '''use m_kill as m

pipeline p(rounds: int = 14) {
    source xs = range(12) partitions 3
    repeat rounds as r {
        sink preds = map m.slow_row over xs with r = r -> parquet("out/preds-{r}")
    }
}
'''

KILL_MODULE = '''
import os, time

def slow_row(x, r):
    # rounds long enough to be killed in the middle of one; the runs after the kill
    # (resumed, and the clean one) go at full speed, with the same rows
    time.sleep(float(os.environ.get("KILL_ROW_SECONDS", "0")))
    return {"x": x, "r": r}
'''


@pytest.mark.parametrize("backend", [b for b in RESUMABLE if b in ("dask", "ray")])
def test_a_driver_killed_among_round_datasets_resumes_to_every_dataset_once(backend, tmp_path):
    """The driver and the engine it started die together (SIGKILL to the process group and
    its children) while rounds write their datasets; `pipec run --resume` ends with the
    datasets of a clean run, the ones committed before the kill untouched, and nothing
    half-written or hidden left behind. The resume runs on this session's engine."""
    import os
    import signal
    import subprocess
    import sys
    import time
    psutil = pytest.importorskip("psutil")
    root = tmp_path / backend
    root.mkdir()
    (root / "m_kill.py").write_text(KILL_MODULE)
    (root / "p.pipe").write_text(KILL_PIPELINE)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), *sys.path]), "RAY_ADDRESS": "",
           "DASK_SCHEDULER_ADDRESS": ""}
    run_dir = root / "run"
    command = [sys.executable, "-m", "pipec", "run", "p.pipe", "--backend", backend]
    driver = subprocess.Popen(command + ["--run-dir", str(run_dir)], cwd=root,
                              env={**env, "KILL_ROW_SECONDS": "0.03"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    log = run_dir / "resume" / "round-files.json"
    deadline, family = time.time() + 240, []
    try:
        while time.time() < deadline and driver.poll() is None:
            try:
                if sum(1 for entry in json.loads(log.read_text()).values() if entry[2] is not None) >= 3:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        assert driver.poll() is None, "the run ended before it could be killed"
        time.sleep(0.15)  # into the next round's tasks
        family = psutil.Process(driver.pid).children(recursive=True)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        for proc in family:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        driver.wait()
    out = root / "out"
    whole = [p.name for p in out.iterdir() if (p / "_SUCCESS").exists()]
    # (Most kills land while a round's tasks write into its staging folder, still pending.)
    assert 3 <= len(whole) < 14
    before = {str(f.relative_to(out)): f.stat() for name in whole for f in (out / name).iterdir()}
    # The resume joins this session's engine, as a resume on a cluster would, rather
    # than starting a second one of its own (10 to 20 s of this test in CI).
    resumed = subprocess.run(command + ["--resume", str(run_dir)], cwd=root, env={**env, **joining_env(backend)},
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name, stat in before.items():  # committed before the kill: not written again
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    assert not _hidden(root)
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "m_kill.py").write_text(KILL_MODULE)
    (clean / "p.pipe").write_text(KILL_PIPELINE)
    subprocess.run([sys.executable, "-m", "pipec", "run", "p.pipe", "--backend", "local"], cwd=clean, env=env,
                   check=True, capture_output=True)
    assert _outputs(root) == _outputs(clean)


def test_the_newest_record_replaces_one_still_waiting_and_a_failed_store_is_raised(tmp_path):
    """Records queue behind a slow store no deeper than one: the one waiting is replaced
    by the newest, which is what ends up stored; a store that fails is raised by the
    writer's next call, never lost."""
    base = dict(pipeline="p", backend="local", fingerprint="f", top_index=0, loop="loop1", done=False)
    writer = resume.RecordWriter(str(tmp_path))
    gate = threading.Event()
    store = writer._store
    writer._store = lambda record: (gate.wait(10), store(record))
    for rounds in range(1, 6):  # the first is being stored; 2 to 4 wait in turn and are replaced
        writer.write(resume.Record(**base, rounds=rounds))
    assert writer._waiting is not None and writer._waiting.rounds == 5
    gate.set()
    writer.close()
    assert resume.read(str(tmp_path)).rounds == 5
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    failing = resume.RecordWriter(str(blocked))
    failing.write(resume.Record(**base, rounds=1))
    with pytest.raises(OSError):
        failing.close()
