"""`.pre-commit-hooks.yaml`: valid by pre-commit's own schema, selecting .pipe files,
and its entries do what a hook must when pre-commit runs them on many files.

``pre-commit try-repo`` against this checkout (it installs pipec into a fresh virtual
environment from PyPI, about a minute) runs with PIPEC_TRY_REPO=1.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("pre_commit")
from pre_commit.clientlib import load_manifest  # noqa: E402

MANIFEST = ROOT / ".pre-commit-hooks.yaml"
MESSY = "pipeline p(){\n  sink s=1}\n"
BROKEN = "pipeline q() {\n    sink s = nope\n}\n"


@pytest.fixture
def hooks():
    return {hook["id"]: hook for hook in load_manifest(str(MANIFEST))}


def test_the_manifest_is_valid_and_offers_fmt_and_check(hooks):
    assert set(hooks) == {"pipec-fmt", "pipec-check"}
    scripts = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^pipec = "pipec.cli:entry"$', scripts, re.MULTILINE)
    for hook in hooks.values():
        assert hook["language"] == "python" and hook["pass_filenames"]
        assert shlex.split(hook["entry"])[0] == "pipec"  # the console script pip installs
        assert re.search(hook["files"], "flows/train.pipe") and not re.search(hook["files"], "flows/train.py")


def test_the_file_types_match_a_pipe_file(hooks, tmp_path):
    from identify.identify import tags_from_path
    path = tmp_path / "train.pipe"
    path.write_text(MESSY)
    for hook in hooks.values():
        assert set(hook["types"]) <= tags_from_path(str(path))


def _run_entry(hook, files, cwd):
    """Run ``hook``'s entry on ``files`` as pre-commit does: entry, args, file names."""
    argv = shlex.split(hook["entry"]) + hook["args"] + [str(f) for f in files]
    argv = [sys.executable, "-m", "pipec"] + argv[1:]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_fmt_hook_rewrites_the_files_it_is_given(hooks, tmp_path):
    (tmp_path / "a.pipe").write_text(MESSY)
    (tmp_path / "b.pipe").write_text("pipeline q() {\n    sink s = 1\n}\n")
    done = _run_entry(hooks["pipec-fmt"], ["a.pipe", "b.pipe"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.pipe").read_text() == "pipeline p() {\n    sink s = 1\n}\n"
    assert "a.pipe: formatted" in done.stderr and "b.pipe" not in done.stderr.replace("2 files", "")


def test_the_check_hook_fails_on_errors_with_their_place(hooks, tmp_path):
    (tmp_path / "a.pipe").write_text(MESSY)
    (tmp_path / "b.pipe").write_text(BROKEN)
    done = _run_entry(hooks["pipec-check"], ["a.pipe", "b.pipe"], tmp_path)
    assert done.returncode == 1
    assert "b.pipe:2:14: error: undefined name `nope`" in done.stderr and "a.pipe: ok" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.environ.get("PIPEC_TRY_REPO") != "1", reason="installs pipec from PyPI: set PIPEC_TRY_REPO=1")
def test_pre_commit_try_repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.pipe").write_text(MESSY)
    (tmp_path / "b.pipe").write_text(BROKEN)
    subprocess.run(git + ["add", "."], cwd=tmp_path, check=True)
    done = subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), "--all-files"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert re.search(r"pipec check\.+Failed", done.stdout) and "b.pipe:2:14: error: undefined name `nope`" in done.stdout
    assert re.search(r"pipec fmt\.+Failed", done.stdout) and "files were modified by this hook" in done.stdout
    assert (tmp_path / "a.pipe").read_text() == "pipeline p() {\n    sink s = 1\n}\n"
