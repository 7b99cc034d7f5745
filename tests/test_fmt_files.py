"""`pipec fmt` over many files and folders, `-` for standard input, `--check`, `--diff`
and `--write`, as pre-commit and CI call it; one file alone still prints its text."""

from __future__ import annotations

import io
import subprocess
import sys

from pipec import cli
from tests.conftest import ROOT

MESSY = "pipeline p(){\n  source xs=range(4) partitions 2\n  sink s=collect(xs)}"
TIDY = "pipeline p() {\n    source xs = range(4) partitions 2\n    sink s = collect(xs)\n}\n"


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def files(tmp_path):
    (tmp_path / "sub").mkdir()
    messy, tidy = tmp_path / "messy.pipe", tmp_path / "sub" / "tidy.pipe"
    messy.write_text(MESSY)
    tidy.write_text(TIDY)
    return messy, tidy


def test_one_file_is_printed_formatted(tmp_path, capsys):
    messy, _ = files(tmp_path)
    assert run(["fmt", messy], capsys) == (0, TIDY, "")
    assert messy.read_text() == MESSY


def test_check_names_the_files_to_reformat(tmp_path, capsys):
    messy, tidy = files(tmp_path)
    code, out, err = run(["fmt", "--check", tmp_path], capsys)
    assert code == 1 and out == ""
    assert err == f"{messy}: would be reformatted\n2 files: 1 would be reformatted\n"
    assert run(["fmt", "--check", tidy], capsys) == (0, "", "")


def test_diff_is_a_unified_diff_that_patch_applies(tmp_path, capsys):
    messy, tidy = files(tmp_path)
    code, out, _ = run(["fmt", "--diff", messy, tidy], capsys)
    assert code == 1
    assert out.startswith(f"--- {messy}\n+++ {messy}\n@@ -1,3 +1,4 @@\n-pipeline p(){{\n")
    assert "\\ No newline at end of file\n" in out  # MESSY has no final newline
    done = subprocess.run(["patch", "-p0", "--quiet"], input=out, text=True, cwd="/", capture_output=True)
    assert done.returncode == 0, done.stderr
    assert messy.read_text() == TIDY


def test_write_rewrites_only_what_changes(tmp_path, capsys):
    messy, tidy = files(tmp_path)
    before = tidy.stat().st_mtime_ns
    code, out, err = run(["fmt", "--write", tmp_path], capsys)
    assert (code, out) == (0, "")
    assert err == f"{messy}: formatted\n2 files: 1 formatted\n"
    assert messy.read_text() == TIDY and tidy.stat().st_mtime_ns == before
    assert run(["fmt", "--check", tmp_path], capsys)[0] == 0


def test_a_broken_file_is_reported_and_the_others_still_formatted(tmp_path, capsys):
    messy, _ = files(tmp_path)
    broken = tmp_path / "broken.pipe"
    broken.write_text("pipeline p() {\n    stage = 3\n}\n")
    code, _, err = run(["fmt", "--write", broken, messy], capsys)
    assert code == 1
    assert f"{broken}:2:11: error: unexpected `=`" in err and "^" in err
    assert messy.read_text() == TIDY


def test_standard_input(tmp_path, capsys, monkeypatch):
    for flags, code, out in [([], 0, TIDY), (["--write"], 0, TIDY), (["--check"], 1, "")]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(MESSY.encode())))
        got = run(["fmt", *flags, "-"], capsys)
        assert got[:2] == (code, out), flags
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(MESSY.encode())))
    code, out, _ = run(["fmt", "--diff", "--stdin-filename", "p.pipe", "-"], capsys)
    assert code == 1 and out.startswith("--- p.pipe\n+++ p.pipe\n")


def test_several_files_without_a_mode_is_a_usage_error(tmp_path, capsys):
    files(tmp_path)
    code, out, err = run(["fmt", tmp_path], capsys)
    assert code == 2 and out == ""
    assert "error: several files are formatted in place or checked, not printed" in err
    assert "hint: add --write" in err


def test_fmt_in_a_subprocess_takes_many_files(tmp_path):
    messy, tidy = files(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pipec", "fmt", "--check", str(messy), str(tidy)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and f"{messy}: would be reformatted" in done.stderr


def test_a_missing_file_is_reported_and_the_others_still_checked(tmp_path, capsys):
    _, tidy = files(tmp_path)
    code, _, err = run(["fmt", "--check", tmp_path / "missing.pipe", tidy], capsys)
    assert code == 1
    assert err.startswith(f"{tmp_path / 'missing.pipe'}: error: no such file\n")
    assert err.endswith("2 files: 0 would be reformatted, 1 with errors\n")
