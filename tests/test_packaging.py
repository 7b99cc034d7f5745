"""The installed package: one `pipec` namespace that never clashes with a user's own
top-level packages.

A non-editable wheel is built from this checkout and installed into a fresh virtual
environment; a pipeline then runs from a project folder that has its own `compiler/`,
`backends/` and `dsl/` packages (names pipec once installed at the top level).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("grammar", "dsl", "compiler", "backends")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build needs only setuptools, which is here already.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    (found,) = out.glob("pipec-*.whl")
    return found


def test_wheel_holds_every_package_under_pipec_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"pipec"}
    # Every package folder of the checkout is in the wheel (found, not listed).
    for layer in LAYERS:
        for init in (ROOT / layer).rglob("__init__.py"):
            rel = init.relative_to(ROOT).as_posix()
            assert f"pipec/{rel}" in names, rel
    for init in (ROOT / "pipec").rglob("__init__.py"):  # pipec's own subpackages (pipec.lsp)
        assert init.relative_to(ROOT).as_posix() in names, init
    assert "pipec/grammar/pipe.lark" in names
    assert "pipec/grammar/pipe.tmLanguage.json" in names and "pipec/grammar/package.json" in names


def test_installed_wheel_runs_beside_a_projects_own_compiler_backends_dsl(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # The engines and pipec's dependencies come from this interpreter's site-packages;
    # pipec itself only from the wheel (checked below).
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    project = tmp_path / "project"
    for name, body in (("compiler", "DEFAULT = 'mine'\n"), ("backends", "DEFAULT_BACKEND = 'mine'\n"),
                       ("dsl", "")):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(body)
    (project / "steps.py").write_text(
        "from compiler import DEFAULT\n\n"
        "def tag(x):\n    return f'{DEFAULT}-{x}'\n")
    (project / "p.pipe").write_text(
        "use steps as s\n\n"
        "pipeline p(n: int = 3) {\n"
        "    source xs = range(n) partitions 2\n"
        "    stage ys = map s.tag over xs\n"
        "    sink out = collect(ys)\n"
        "}\n")
    script = (
        "import pipec, sys\n"
        "from pathlib import Path\n"
        "assert Path(pipec.__file__).is_relative_to(Path(sys.prefix)), pipec.__file__\n"
        "from pipec import load\n"
        "import backends, compiler\n"
        "assert backends.DEFAULT_BACKEND == 'mine' and compiler.DEFAULT == 'mine'\n"
        "print(load('p.pipe').run(backend='local').outputs['out'])\n")
    # Without PYTHONPATH: a checkout on it (a worktree's tests) would shadow the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(python), "-c", script], cwd=project, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['mine-0', 'mine-1', 'mine-2']"

    # The console script of the wheel, too.
    pipec = env_dir / "bin" / "pipec"
    proc = subprocess.run([str(pipec), "check", "p.pipe"], cwd=project, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
