"""Storage URLs: the storage layer on the local disk and on a real S3 server (moto's
server mode on loopback), and pipec runs whose sources, sinks, snapshots and run folder
live there."""

from __future__ import annotations

import os

import pytest

from pipec.backends.runtime import storage


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
    from pipec import load
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
                         "runs/r1/actors/tally.snapshot", "runs/r1/resume/finished", "runs/r1/resume/state.pickle"]
    import pickle
    state = pickle.loads(s3.get("runs/r1/actors/tally.snapshot"))
    assert state[0].total == 15 and state[1] == 3  # every 2 calls: after 3 x add(5) and value()


def test_a_missing_source_and_an_unwritable_sink_fail_before_computing(s3, write_pipe, tmp_path, monkeypatch):
    from pipec import load
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
