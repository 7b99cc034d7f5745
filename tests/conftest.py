"""Shared test fixtures and options.

``pytest --update-golden`` rewrites the golden files under tests/golden instead of
comparing against them; review the diff before committing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"

# The S3 server fixtures (s3_server, s3): moto on loopback, started only by tests that ask.
pytest_plugins = ["tests.s3"]


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files instead of comparing against them")


@pytest.fixture
def golden(request):
    """``golden(name, text)``: compare ``text`` with tests/golden/NAME (or rewrite it)."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"{name} differs from its golden file; run pytest --update-golden and review"
    return check


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh folder holding a copy of examples/ (sinks write to out/ there)."""
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_pipe(tmp_path):
    """``write_pipe(text, name="p.pipe", **modules)``: a .pipe file plus Python modules."""
    def make(text: str, name: str = "p.pipe", **modules: str) -> Path:
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(source, encoding="utf-8")
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path
    return make


def pytest_sessionfinish(session, exitstatus):
    from tests.engines import shutdown_all
    shutdown_all()
