"""Storage URLs: the storage layer on the local disk and on a real S3 server (moto's
server mode on loopback), and pipec runs whose sources, sinks, snapshots and run folder
live there."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipec import load
from pipec.backends.runtime import resume as resuming
from pipec.backends.runtime import storage
from tests.conftest import ROOT
from tests.engines import free_port, stop_processes


# ---- the storage layer -----------------------------------------------------------------------


def test_local_paths_and_file_urls_are_the_same_file(tmp_path):
    target = tmp_path / "a" / "b.txt"
    storage.atomic_write(f"file://{target}", "hello")
    assert target.read_text() == "hello"
    assert storage.read_text(str(target)) == "hello"
    assert storage.exists(f"file://{target}") and storage.is_file(target)
    assert storage.listing(tmp_path / "a") == ["b.txt"]  # no temporary is left beside it
    storage.remove(target)
    storage.remove(target)  # removing what is not there is no error
    assert not storage.exists(target)


def test_local_write_keeps_permissions_and_symlinks(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    os.chmod(real, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    storage.atomic_write(link, b"new")
    assert link.is_symlink() and real.read_text() == "new"
    assert real.stat().st_mode & 0o777 == 0o600


def _a_char_device_that_discards_writes() -> str | None:
    """/dev/null, or /dev/zero where an older pipec (or anything else) has already put a
    regular file in /dev/null's place: the test must look at a device, not at the machine's
    history."""
    import stat
    for path in (os.devnull, "/dev/zero"):
        if os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode) and os.access(path, os.W_OK):
            return path
    return None


def test_a_pipe_is_written_into_never_replaced(tmp_path):
    """An atomic write renames a temporary over its target, which for a FIFO would put a
    regular file in its place and the reader would never see the bytes."""
    import stat
    import threading
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    storage.atomic_write(fifo, [b"plan ", b"text"])
    reader.join(10)
    assert got == [b"plan text"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert storage.listing(tmp_path) == ["stream"]  # no temporary left beside it


def test_a_device_is_written_into_never_replaced():
    """`pipec compile x.pipe -o /dev/null` must leave /dev/null a device (run as root, the
    rename of an atomic write replaced it with a regular file)."""
    import stat
    device = _a_char_device_that_discards_writes()
    if device is None:
        pytest.skip("no writable character device on this machine (/dev/null and /dev/zero are not)")
    done = subprocess.run([sys.executable, "-m", "pipec", "compile", "examples/train.pipe", "-o", device],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_naming_helpers():
    assert storage.join("s3://b/runs/", "actors", "ps.snapshot") == "s3://b/runs/actors/ps.snapshot"
    assert storage.join("runs", "x") == os.path.join("runs", "x")
    assert storage.parent("s3://b/out/w.json") == "s3://b/out"
    assert storage.name("s3://b/out/w.json") == "w.json"
    assert storage.protocol_of("GS://b/k") == "gs" and storage.is_local("file:///tmp/x")
    assert storage.absolute("s3://b/k") == "s3://b/k" and os.path.isabs(storage.absolute("rel/x"))


def test_driver_errors_are_oserrors(s3, monkeypatch):
    """botocore's own exceptions (here: no credentials at all) come out as OSError, so
    every caller handles one type."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    from tests.s3 import _forget_filesystems
    _forget_filesystems()
    with pytest.raises(OSError, match="NoCredentialsError"):
        storage.atomic_write(s3.url("k"), b"x")


def test_an_unknown_scheme_says_what_to_use():
    with pytest.raises(storage.StorageUnavailable) as info:
        storage.read_bytes("nosuch://bucket/key")
    assert "unknown storage scheme `nosuch://`" in info.value.message
    assert "s3://" in info.value.hint


def test_the_s3_extra_is_named_when_its_driver_is_missing(monkeypatch):
    import sys
    import importlib
    registry = importlib.import_module("fsspec.registry")  # `fsspec.registry` is a mapping, not the module
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    monkeypatch.delitem(registry._registry, "s3", raising=False)  # nor imported yet
    with pytest.raises(storage.StorageUnavailable) as info:
        storage.exists("s3://bucket/key")
    assert info.value.hint == "pip install 'pipec[s3]'"


def test_s3_write_read_list_remove(s3):
    url = s3.url("runs/r1/resume/state.pickle")
    storage.atomic_write(url, b"\x00record")
    assert s3.keys() == ["runs/r1/resume/state.pickle"]  # one PUT of the final key, no temporary
    assert storage.read_bytes(url) == b"\x00record"
    assert storage.exists(url) and storage.exists(s3.url("runs/r1")) and storage.is_file(url)
    assert not storage.is_file(s3.url("runs/r1"))
    assert storage.listing(s3.url("runs/r1/resume")) == ["state.pickle"]
    assert storage.listing(s3.url("nothing/here")) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(s3.url("missing"))
    with storage.open_input(url) as fh:
        assert fh.read() == b"\x00record"


def test_s3_sees_what_another_client_wrote(s3):
    """The layer never answers from a stale listing: a snapshot written by another
    process (here: boto3) is seen at once."""
    folder = s3.url("actors")
    assert storage.listing(folder) == [] and not storage.exists(s3.url("actors/ps.snapshot"))
    s3.put("actors/ps.snapshot", b"state")
    assert storage.exists(s3.url("actors/ps.snapshot"))
    assert storage.listing(folder) == ["ps.snapshot"]


def test_s3_move_and_remove_tree(s3):
    storage.atomic_write(s3.url("out/.w.json.staged"), "{}")
    storage.move(s3.url("out/.w.json.staged"), s3.url("out/w.json"))
    assert s3.keys() == ["out/w.json"] and s3.get("out/w.json") == b"{}"
    storage.atomic_write(s3.url("run/actors/a.snapshot"), b"1")
    storage.atomic_write(s3.url("run/resume/state.pickle"), b"2")
    storage.remove_tree(s3.url("run"))
    storage.remove_tree(s3.url("run"))
    assert s3.keys() == ["out/w.json"]


def test_s3_check_writable_probes_the_bucket(s3):
    storage.check_writable(s3.url("out/w.json"))
    assert s3.keys() == []  # the probe is gone
    with pytest.raises(OSError):
        storage.check_writable(f"s3://{s3.bucket}-missing/out/w.json")


def test_local_check_writable(tmp_path):
    storage.check_writable(tmp_path / "new" / "deeper" / "w.json")
    assert list(tmp_path.iterdir()) == []  # nothing was made
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        storage.check_writable(tmp_path / "file" / "w.json")
    with pytest.raises(IsADirectoryError):
        storage.check_writable(tmp_path)


# ---- pipelines on S3 -------------------------------------------------------------------------

_TALLY = '''
class Tally:
    def __init__(self):
        self.total = 0

    def add(self, n):
        self.total += n
        return self.total

    def value(self):
        return self.total


def size(line):
    return len(line)
'''

_PIPE = '''use m as m

pipeline on_s3(text: str = "in/lines.txt", rows: str = "in/rows.jsonl", out: str = "out") {
    source lines = read_text(text) partitions 2
    source records = read_jsonl(rows) partitions 2
    actor tally = m.Tally() { checkpoint every 2 calls }
    repeat 3 {
        tally.add(count(lines))
    }
    sink sizes = collect(map m.size over lines) -> json(out + "/sizes.json")
    sink copied = collect(records) -> jsonl(out + "/rows.jsonl")
    sink total = tally.value() -> text(out + "/total.txt")
}
'''

_LINES = "alpha\nbeta\ngamma delta\n\nepsilon\n"
_ROWS = '{"id": 1, "x": 0.5}\n{"id": 2, "x": 1.5}\n\n{"id": 3, "x": 2.5}\n'


def test_sources_sinks_and_snapshots_on_s3_match_the_local_disk(s3, write_pipe, tmp_path, monkeypatch):
    """One pipeline run twice: on local files, and with its sources, sinks and run folder
    on S3. The S3 run writes the same bytes, keeps its actor's snapshot in the bucket, and
    leaves no temporary behind."""
    path = write_pipe(_PIPE, m=_TALLY)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "lines.txt").write_text(_LINES)
    (tmp_path / "in" / "rows.jsonl").write_text(_ROWS)
    local = load(path).run(backend="local", params={"out": "out"}, run_dir=str(tmp_path / "run"))
    s3.put("in/lines.txt", _LINES)
    s3.put("in/rows.jsonl", _ROWS)
    remote = load(path).run(backend="local", run_dir=s3.url("runs/r1"),
                            params={"text": s3.url("in/lines.txt"), "rows": s3.url("in/rows.jsonl"),
                                    "out": s3.url("out")})
    for name in ("sizes.json", "rows.jsonl", "total.txt"):
        assert s3.get(f"out/{name}") == (tmp_path / "out" / name).read_bytes(), name
    assert remote.files["total"] == s3.url("out/total.txt") and local.files["total"] == "out/total.txt"
    assert s3.keys() == ["in/lines.txt", "in/rows.jsonl", "out/rows.jsonl", "out/sizes.json", "out/total.txt",
                         "runs/r1/actors/tally.1.snapshot", "runs/r1/actors/tally.3.snapshot",
                         "runs/r1/actors/tally.snapshot", "runs/r1/report.html", "runs/r1/resume/finished",
                         "runs/r1/resume/state.pickle", "runs/r1/summary.json"]
    from pipec.backends.runtime.actors import decode_state
    state = decode_state(s3.get("runs/r1/actors/tally.snapshot"))
    assert state[0].total == 15 and state[1] == 3  # every 2 calls: after 3 x add(5) and value()


def test_runs_show_reads_a_run_folder_in_a_bucket(s3, write_pipe, tmp_path, monkeypatch, capsys):
    """`pipec runs show s3://.../RUN` prints the summary kept in the bucket, and the report
    it opens is a local copy of the bucket's."""
    from pipec import runs
    from pipec.cli import main
    path = write_pipe("pipeline p() {\n    source xs = range(4) partitions 2\n    sink s = collect(xs)\n}\n")
    monkeypatch.chdir(tmp_path)
    load(path).run(backend="local", run_dir=s3.url("runs/r2"))
    assert main(["runs", "show", s3.url("runs/r2")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run r2: pipeline p on local, finished") and f"report: {s3.url('runs/r2/report.html')}" in out
    assert runs.local_report(s3.url("runs/r2")).read_bytes() == s3.get("runs/r2/report.html")
    assert main(["runs", "show", s3.url("runs/none")]) == 2
    assert f"no run summary at {s3.url('runs/none')}" in capsys.readouterr().err


def test_a_killed_runs_staged_sinks_on_s3_are_cleaned_by_the_next_run_of_the_folder(s3, write_pipe, tmp_path,
                                                                                   monkeypatch):
    from pipec.backends.runtime.sinks import StagedSinks
    monkeypatch.chdir(tmp_path)
    killed = StagedSinks(s3.url("runs/r"), "deadbeef")
    killed.stage([1, 2], "json", s3.url("out/a.json"), True)  # and then the process died
    assert s3.keys() == ["out/.a.json.pipec-staged-deadbeef.tmp", "runs/r/staged.json"]
    path = write_pipe(f'pipeline p() {{\n    source xs = range(3) partitions 1\n'
                      f'    sink b = collect(xs) -> json("{s3.url("out/b.json")}")\n}}\n')
    load(path).run(backend="local", run_dir=s3.url("runs/r"))
    # what is left: the sink, the run's records and its report (summary.json, report.html)
    assert [k for k in s3.keys() if not k.startswith("runs/r/resume/")] == [
        "out/b.json", "runs/r/report.html", "runs/r/summary.json"]
    assert json.loads(s3.get("out/b.json")) == [0, 1, 2]


def test_storage_options_from_the_api_reach_the_bucket(s3, write_pipe, tmp_path, monkeypatch):
    """Without AWS_ENDPOINT_URL the endpoint comes from ``storage_options`` (fsspec's own
    options for the protocol)."""
    from tests.s3 import _forget_filesystems
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setattr(storage, "_options", {})
    _forget_filesystems()
    monkeypatch.chdir(tmp_path)
    path = write_pipe(f'pipeline p() {{\n    source xs = range(4) partitions 2\n'
                      f'    sink b = collect(xs) -> jsonl("{s3.url("out/b.jsonl")}")\n}}\n')
    load(path).run(backend="local", storage_options={"s3": {"endpoint_url": s3.endpoint}})
    assert s3.get("out/b.jsonl").decode().split() == ["0", "1", "2", "3"]


_PROBE = """
import os

# What would let a worker reach the bucket without the options the driver ships.
ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "AWS_PROFILE")

def probe(row):
    clean = not any(k in os.environ for k in ENVIRONMENT) and not any(k.startswith("FSSPEC_") for k in os.environ)
    return {**row, "pid": os.getpid(), "clean": clean}
"""


@pytest.mark.parametrize("backend", ["dask", "ray", "spark"])
def test_storage_options_given_in_python_reach_every_worker(backend, s3, write_pipe, tmp_path, monkeypatch):
    """The endpoint and credentials given only in Python reach the tasks on every engine:
    with no AWS or fsspec variable in the workers' environment (nor the driver's), each
    task reads its own CSV file from the bucket and writes its Parquet part there, in a
    process that is not the driver's. The secret is nowhere in the plan, the logs, the
    summary or the report, and the driver (and Dask's workers) forget it after the run."""
    import uuid
    import pyarrow.parquet as pq
    from tests.engines import engine_options
    from tests.s3 import _forget_filesystems
    for key in [k for k in os.environ if k.startswith(("AWS_", "FSSPEC_"))]:
        monkeypatch.delenv(key)
    _forget_filesystems()
    monkeypatch.chdir(tmp_path)
    secret = f"pipec-secret-{uuid.uuid4().hex}"
    options = {"s3": {"endpoint_url": s3.endpoint, "key": "testing", "secret": secret,
                      "client_kwargs": {"region_name": "us-east-1"}}}
    s3.put("in/a.csv", "id,x\n1,0.5\n2,1.5\n")
    s3.put("in/b.csv", "id,x\n3,2.5\n4,3.5\n")
    path = write_pipe('use probes as m\n\npipeline p(src: str, dst: str) {\n'
                      '    source rows = read_csv(src) partitions 2\n'
                      '    stage probed = map m.probe over rows\n'
                      '    sink out = probed -> parquet(dst)\n}\n', probes=_PROBE)
    params = {"src": s3.url("in"), "dst": s3.url("out")}
    pipeline = load(path)
    result = pipeline.run(backend=backend, params=params, storage_options=options, **engine_options(backend))
    assert s3.keys("out/") == ["out/_SUCCESS", "out/part-00000.parquet", "out/part-00001.parquet"]
    rows = [r for part in ("part-00000", "part-00001")
            for r in pq.read_table(pa_buffer(s3.get(f"out/{part}.parquet"))).to_pylist()]
    assert [(r["id"], r["x"]) for r in rows] == [(1, 0.5), (2, 1.5), (3, 2.5), (4, 3.5)]
    assert all(r["clean"] for r in rows), "a worker had the S3 environment: the test proves nothing"
    assert os.getpid() not in {r["pid"] for r in rows}  # the tasks ran on the engine's workers
    # the secret went nowhere it could be read back
    kept = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]  # the run folder: logs, summary, report
    kept.append(json.dumps(pipeline.lower(backend, params, **engine_options(backend)).to_json()).encode())
    assert result.report and Path(result.report).exists() and not any(secret.encode() in blob for blob in kept)
    assert storage.shipped() is None and secret not in repr(storage.Options(options))
    if backend == "dask":
        client = engine_options("dask")["client"]
        assert set(client.run(storage.shipped).values()) == {None}


def pa_buffer(data: bytes):
    import pyarrow as pa
    return pa.BufferReader(data)


def test_a_commit_cut_short_is_finished_by_the_next_run_of_the_folder(s3, write_pipe, tmp_path, monkeypatch):
    """A run's three sinks on S3 (a JSON file, a Parquet and a CSV dataset) whose commit
    fails after the first dataset's parts were moved in, before its `_SUCCESS`: nothing
    is undone (the JSON file is new, the datasets' parts are kept), the error says who
    finishes it, and the next run in the run folder does, before anything else."""
    from pipec.backends.runtime import datasets
    from pipec.backends.runtime.sinks import StagedSinks
    from pipec.dsl.diagnostics import PipelineRuntimeError
    monkeypatch.chdir(tmp_path)
    path = write_pipe('use m as m\n\npipeline p() {\n    source xs = range(4) partitions 2\n'
                      '    stage rows = map m.row over xs\n'
                      f'    sink w = collect(xs) -> json("{s3.url("out/w.json")}")\n'
                      f'    sink a = rows -> parquet("{s3.url("out/a")}")\n'
                      f'    sink b = rows -> csv("{s3.url("out/b")}")\n}}\n', m="def row(x):\n    return {'x': x}\n")
    put = datasets._put

    def cut_short(fs, where, data):
        if where.endswith("/_SUCCESS"):
            raise OSError("the connection went away")
        put(fs, where, data)
    monkeypatch.setattr(datasets, "_put", cut_short)
    run = s3.url("runs/r")
    with pytest.raises(PipelineRuntimeError) as info:
        load(path).run(backend="local", run_dir=run)
    assert "cannot write the sinks" in str(info.value) and "finishes it" in info.value.render()
    parts = ["part-00000.parquet", "part-00001.parquet"]
    assert json.loads(s3.get("out/w.json")) == [0, 1, 2, 3]
    assert s3.keys("out/a/") == [f"out/a/{p}" for p in parts]  # moved in; no _SUCCESS, so no reader takes it
    assert any(".b.pipec-staged-" in k for k in s3.keys("out/"))  # kept for the commit to finish
    monkeypatch.setattr(datasets, "_put", put)
    StagedSinks(run, "next").clean_leftovers()  # what the next run in the folder does first
    assert s3.keys("out/") == ["out/a/_SUCCESS", *(f"out/a/{p}" for p in parts), "out/b/_SUCCESS",
                               "out/b/part-00000.csv", "out/b/part-00001.csv", "out/w.json"]
    assert s3.get("out/b/part-00001.csv").decode().split() == ['"x"', "2", "3"]
    assert not storage.exists(storage.join(run, "staged.json"))


def test_resuming_a_run_that_is_not_in_the_bucket_is_a_usage_error(s3, capsys):
    from pipec.cli import main
    code = main(["run", str(ROOT / "examples" / "train.pipe"), "--backend", "dask", "--resume", s3.url("runs/none")])
    assert code == 2 and f"no run at {s3.url('runs/none')}" in capsys.readouterr().err


def test_a_missing_source_and_an_unwritable_sink_fail_before_computing(s3, write_pipe, tmp_path, monkeypatch):
    from pipec.backends.runtime.preflight import PreflightError
    path = write_pipe(_PIPE, m=_TALLY)
    monkeypatch.chdir(tmp_path)
    s3.put("in/lines.txt", _LINES)
    with pytest.raises(PreflightError) as info:
        load(path).run(backend="local", params={"text": s3.url("in/lines.txt"), "rows": s3.url("in/nope.jsonl"),
                                                "out": s3.url("out")})
    text = info.value.render()
    assert f"no such file: {s3.url('in/nope.jsonl')}" in text and "p.pipe:5:" in text and "^" in text
    s3.put("in/rows.jsonl", _ROWS)
    with pytest.raises(PreflightError) as info:
        load(path).run(backend="local", params={"text": s3.url("in/lines.txt"), "rows": s3.url("in/rows.jsonl"),
                                                "out": f"s3://{s3.bucket}-gone/out"})
    text = info.value.render()
    assert f"cannot write s3://{s3.bucket}-gone/out/sizes.json" in text and "p.pipe:10:" in text
    assert "AWS_ENDPOINT_URL" in text
    with pytest.raises(PreflightError) as info:
        load(path).run(backend="local", params={"text": s3.url("in/lines.txt"), "rows": s3.url("in/rows.jsonl"),
                                                "out": "nosuch://x/out"})
    assert "unknown storage scheme `nosuch://` in nosuch://x/out/sizes.json" in info.value.render()
    assert s3.keys() == ["in/lines.txt", "in/rows.jsonl"]  # nothing was written, not even a run folder


# ---- a cluster without a shared disk ---------------------------------------------------------


def _private_launcher(hidden: Path) -> list[str] | None:
    """The command prefix that starts a process in a mount namespace of its own where
    ``hidden`` (the driver's folders) is an empty tmpfs, or None where the machine does
    not allow it (then only the working folder differs)."""
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs pipec-private {shlex.quote(str(hidden))}"],
                           capture_output=True, timeout=30) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        return None
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount -t tmpfs pipec-private {shlex.quote(str(hidden))} && mkdir -p \"$0\" && cd \"$0\" && exec \"$@\""]


@pytest.fixture
def private_dask_cluster(s3, tmp_path_factory):
    """A `dask scheduler` and two `dask worker` processes (no nanny, so a killed worker
    stays dead) whose working folders are not the driver's: in a private mount namespace
    the test's folders are an empty tmpfs, so a worker can only reach the run folder
    through S3. Yields (address, client, isolated)."""
    from distributed import Client
    hidden = tmp_path_factory.getbasetemp()
    outside = Path(tempfile.mkdtemp(prefix="pipec-workers-"))
    env = {**os.environ, **s3.env, "PYTHONPATH": str(ROOT)}
    log = open(outside / "cluster.log", "w")
    scheduler_file = outside / "scheduler.json"
    procs = [subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], cwd=outside, stdout=log, stderr=log, env=env)]
    launcher = _private_launcher(hidden)
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):
            cwd = outside / f"w{i}"
            cwd.mkdir()
            worker = ["dask", "worker", address, "--nthreads", "1", "--no-dashboard", "--no-nanny",
                      "--memory-limit", "1GiB", "--name", f"w{i}"]
            command = [*launcher, str(hidden / f"w{i}"), *worker] if launcher else worker
            procs.append(subprocess.Popen(command, cwd=cwd, stdout=log, stderr=log, env=env))
        client = Client(address, timeout="30s")
        client.wait_for_workers(2, timeout=60)
        yield address, client, launcher is not None
        client.close()
    finally:
        stop_processes(procs, timeout=10)
        log.close()
        shutil.rmtree(outside, ignore_errors=True)


def _actor_worker(client, prefix: str) -> str:
    """The address of the worker that hosts the actor whose key starts with ``prefix``."""
    def held(dask_scheduler=None):
        return {str(ts.key): [w.address for w in dask_scheduler.workers.values() if ts in w.actors]
                for ts in dask_scheduler.tasks.values() if ts.actor}
    for key, holders in client.run_on_scheduler(held).items():
        if key.startswith(prefix) and holders:
            return holders[0]
    raise AssertionError(f"no actor {prefix}")


def _progress_of(run: str, driver: subprocess.Popen):
    """``(rounds, wait_for)`` for a driver process running with run folder ``run``:
    ``rounds()`` is the last round its resume record holds (-1 before the first), and
    ``wait_for(n)`` waits, up to 3 minutes, until that is at least ``n`` while the driver
    still runs, and gives it."""
    def rounds() -> int:
        try:
            return pickle.loads(storage.read_bytes(storage.join(run, resuming.RECORD))).rounds
        except (FileNotFoundError, EOFError, pickle.UnpicklingError):
            return -1

    def wait_for(n: int) -> int:
        deadline = time.time() + 180
        while time.time() < deadline and driver.poll() is None and rounds() < n:
            time.sleep(0.05)
        assert driver.poll() is None, f"the run ended before round {n}: {driver.stderr.read().decode()}"
        return rounds()
    return rounds, wait_for


def test_dask_without_a_shared_disk_survives_its_actor_worker_and_its_driver(s3, private_dask_cluster, workdir):
    """examples/train.pipe on a scheduler and two workers that cannot see the driver's
    folders, with the run folder on S3. Mid-run the worker hosting the parameter server
    is killed (SIGKILL by pid): the driver re-creates the actor on the other worker from
    its snapshot in the bucket. Then the driver itself is killed, and `pipec run --resume
    s3://...` continues from the record in the bucket. The weights are exactly those of
    a clean run."""
    address, client, isolated = private_dask_cluster
    if isolated:  # where the driver's files are, the workers see nothing
        seen = client.run(os.path.exists, str(workdir))
        assert len(seen) == 2 and not any(seen.values()), seen
    # tasks read their own lines of a text file in the bucket, never through the driver's disk
    s3.put("in/corpus.txt", (workdir / "examples" / "data" / "corpus.txt").read_bytes())
    wordcount = load(Path("examples/wordcount.pipe"))
    on_cluster = wordcount.run(backend="dask", address=address, params={"path": s3.url("in/corpus.txt")})
    top = Path(on_cluster.files["top_words"]).read_bytes()
    assert top == Path(wordcount.run(backend="local").files["top_words"]).read_bytes()
    params = ["-p", "epochs=100", "-p", "rows=4000"]
    clean = load(Path("examples/train.pipe")).run(backend="local", params={"epochs": 100, "rows": 4000})
    expected = Path(clean.files["weights"]).read_bytes()
    shutil.rmtree(workdir / "out")
    shutil.rmtree(workdir / ".pipec")  # the clean run's own folder
    run = s3.url("runs/train")
    env = {**os.environ, **s3.env, "PYTHONPATH": str(ROOT), "DASK_SCHEDULER_ADDRESS": ""}
    command = [sys.executable, "-m", "pipec", "run", "examples/train.pipe", "--backend", "dask",
               "--address", address, *params]
    driver = subprocess.Popen([*command, "--run-dir", run], cwd=workdir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    rounds, wait_for = _progress_of(run, driver)
    try:
        wait_for(3)
        victim = _actor_worker(client, "ps-actor@")
        os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
        # a record after the kill: the actor came back on the other worker, the run went on
        stopped_at = wait_for(rounds() + 1)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        driver.stderr.close()
    assert 3 <= stopped_at < 100 and not (workdir / "out" / "weights.json").exists()
    snapshots = [k for k in s3.keys("runs/train/actors/") if k.endswith(".snapshot")]
    assert "runs/train/actors/ps.snapshot" in snapshots
    assert not list(workdir.glob(".pipec/runs/*/actors"))  # nothing of the run state on the driver's disk
    resumed = subprocess.run([*command, "--resume", run], cwd=workdir, env=env, capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert (workdir / "out" / "weights.json").read_bytes() == expected
    assert s3.keys("runs/train/resume/") == ["runs/train/resume/finished", "runs/train/resume/state.pickle"]



@pytest.fixture
def private_ray_cluster(s3, tmp_path_factory):
    """A Ray head and a second Ray node (`ray start --block`, one CPU each), both in mount
    namespaces of their own where the test's folders are an empty tmpfs, so their workers
    can only reach the run folder through S3 and the user's modules only as shipped
    py_modules. Ray enables token authentication for clusters it starts; every process
    here shares one generated token. Yields (address, env for processes that join)."""
    import secrets
    hidden = tmp_path_factory.getbasetemp()
    outside = Path(tempfile.mkdtemp(prefix="pipec-test-ray-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, **s3.env, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    launcher = _private_launcher(hidden)
    log = open(outside / "cluster.log", "w")
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    nodes = [("head", ["ray", "start", "--head", "--port", str(port), "--include-dashboard=false",
                       "--temp-dir", str(outside / "ray"), *common]),
             ("node", ["ray", "start", "--address", address, *common])]
    procs = []
    try:
        for name, start in nodes:
            (outside / name).mkdir()
            command = [*launcher, str(hidden / name), *start] if launcher else start
            procs.append(subprocess.Popen(command, cwd=outside / name, stdout=log, stderr=log, env=env,
                                          start_new_session=True))
            if name == "head":  # the second node joins once the head's GCS listens
                _wait_for_port(port, procs[0])
        _wait_for_started(outside / "cluster.log", procs)
        _wait_for_ray(address, env, nodes=2)
        yield address, env, launcher is not None
    finally:
        stop_processes(procs, timeout=15)
        log.close()
        shutil.rmtree(outside, ignore_errors=True)


_JOIN = "import ray, json\nray.init(address={address!r}, log_to_driver=False, logging_level='ERROR')\n"


def _ray_query(address: str, env: dict, code: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh process joined to the cluster (this process already has the
    test session's own Ray) and give what it prints."""
    script = _JOIN.format(address=address) + code
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def _wait_for_port(port: int, proc: subprocess.Popen) -> None:
    """Wait until something listens on loopback ``port`` (a connection attempt costs
    microseconds; `ray status` starts a Python process that imports Ray)."""
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} (the Ray head exited or is slow)")


def _wait_for_started(log: Path, procs: list) -> None:
    """Wait until every `ray start` of ``procs`` has said so in ``log``: polling `ray status`
    instead (a process importing Ray, twice a second) took CPU from the starting nodes."""
    deadline = time.time() + 90
    while time.time() < deadline and all(proc.poll() is None for proc in procs):
        if log.read_text(errors="replace").count("Ray runtime started") >= len(procs):
            return
        time.sleep(0.1)
    raise AssertionError(f"the Ray nodes did not start; see the end of the log:\n{log.read_text()[-2000:]}")


def _wait_for_ray(address: str, env: dict, nodes: int) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        probe = subprocess.run(["ray", "status", "--address", address], env=env, capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.count("node_") >= nodes:
            return
        time.sleep(0.5)
    raise AssertionError(f"the Ray cluster at {address} did not come up with {nodes} nodes")


def test_ray_without_a_shared_disk_survives_its_actors_worker(s3, private_ray_cluster, workdir):
    """examples/train.pipe on a Ray head and a second node that cannot see the driver's
    folders, with the run folder on S3: mid-run the worker process hosting the parameter
    server is killed (SIGKILL by pid); Ray restarts the actor, pipec restores it from its
    snapshot in the bucket and replays the calls since, and the run ends with exactly
    the weights of a clean run. (Resuming a killed driver from the bucket is the Dask
    test's part above; tests/test_behaviour.py resumes one on every engine.)"""
    address, env, isolated = private_ray_cluster
    if isolated:
        seen = _ray_query(address, env, (
            "import os\n"
            "@ray.remote(num_cpus=1)\n"
            f"def sees(): return os.path.exists({str(workdir)!r})\n"
            "print(json.dumps(ray.get([sees.remote() for _ in range(4)])))"))
        assert json.loads(seen) == [False] * 4
    # Finding the actor takes a few seconds (a process joining the cluster), and the kill
    # lands a few rounds in (round 7 when timed); after it, each round costs tens of ms
    # here (records and snapshots go to the bucket), so more rounds only cost time.
    epochs = 120
    clean = load(Path("examples/train.pipe")).run(backend="local", params={"epochs": epochs, "rows": 2000})
    expected = Path(clean.files["weights"]).read_bytes()
    shutil.rmtree(workdir / "out")
    shutil.rmtree(workdir / ".pipec")
    run = s3.url("runs/train")
    driver = subprocess.Popen([sys.executable, "-m", "pipec", "run", "examples/train.pipe", "--backend", "ray",
                               "--address", address, "-p", f"epochs={epochs}", "-p", "rows=2000", "--run-dir", run],
                              cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    rounds, wait_for = _progress_of(run, driver)
    # Finding the actor's process takes a process joined to the cluster: start it with the run.
    finder = subprocess.Popen([sys.executable, "-c", _JOIN.format(address=address) + (
        "import time\n"
        "from ray._private import state\n"
        "for _ in range(600):\n"
        "    alive = [a['Pid'] for a in state.actors().values()\n"
        "             if a['Name'].startswith('pipec.train.ps.') and a['State'] == 'ALIVE']\n"
        "    if alive: break\n"
        "    time.sleep(0.05)\n"
        "print(alive[0] if alive else '')")], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        pid = int(finder.communicate(timeout=120)[0].strip())
        killed_at = wait_for(3)
        os.kill(pid, signal.SIGKILL)
        err = driver.communicate(timeout=240)[1].decode()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, err
    assert killed_at < epochs - 10  # the kill came mid-run, not after the last round
    assert (workdir / "out" / "weights.json").read_bytes() == expected
    summary = json.loads(s3.get("runs/train/summary.json"))  # the actor was lost and restored, not spared
    assert any("actor `ps` lost its process; pipec restored it" in f["message"] for f in summary["faults"]), summary
    assert "runs/train/actors/ps.snapshot" in s3.keys("runs/train/actors/")
    assert not list(workdir.glob(".pipec/runs/*/actors"))  # nothing of the run state on the driver's disk
