"""Static commands never import user code; the IR survives JSON; the Python API works."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipec import load
from pipec.compiler.ir import IR
from tests.conftest import EXAMPLES, ROOT

TRAP = '''
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("user code ran")
raise RuntimeError("static commands must not import me")

def double(x):
    return 2 * x

class Acc:
    def __init__(self, start=0):
        self.total = start
    def add(self, x):
        self.total += x
'''

PIPE = '''use trap as t

pipeline p(n: int = 4) {
    source xs = range(n) partitions 2
    actor acc = t.Acc(start = 1)
    stage ys = map t.double over xs
    acc.add(count(ys))
    sink out = collect(ys) -> json("out.json")
}
'''


@pytest.mark.parametrize("command", [
    ["check"], ["compile"], ["compile", "--format", "json"], ["graph"], ["graph", "--format", "mermaid"], ["fmt"],
    ["compile", "--backend", "local"],
])
def test_static_commands_do_not_import_user_modules(tmp_path, command):
    (tmp_path / "trap.py").write_text(TRAP)
    (tmp_path / "p.pipe").write_text(PIPE)
    proc = subprocess.run([sys.executable, "-m", "pipec", command[0], "p.pipe", *command[1:]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "IMPORTED").exists()
    assert "Traceback" not in proc.stderr


def test_static_check_still_finds_a_missing_method_without_importing(tmp_path):
    (tmp_path / "trap.py").write_text(TRAP)
    (tmp_path / "p.pipe").write_text(PIPE.replace("acc.add(", "acc.ad("))
    proc = subprocess.run([sys.executable, "-m", "pipec", "check", "p.pipe"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "p.pipe:7:5: error: actor class `Acc` has no method `ad`" in proc.stderr
    assert "did you mean `add`?" in proc.stderr
    assert not (tmp_path / "IMPORTED").exists()


def test_run_does_import_user_code(tmp_path):
    (tmp_path / "mod.py").write_text(TRAP.replace('raise RuntimeError("static commands must not import me")', ""))
    (tmp_path / "p.pipe").write_text(PIPE.replace("trap", "mod"))
    proc = subprocess.run([sys.executable, "-m", "pipec", "run", "p.pipe", "--backend", "local"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == [0, 2, 4, 6]
    assert (tmp_path / "IMPORTED").exists()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.pipe")), ids=lambda p: p.stem)
def test_ir_json_round_trip(path):
    pipeline = load(path)
    text = pipeline.ir.dumps()
    again = IR.from_json(json.loads(text))
    assert again == pipeline.ir
    assert again.dumps() == text


def test_ir_edges_distinguish_kinds():
    ir = load(EXAMPLES / "train.pipe").ir
    kinds = {kind for *_, kind in ir.graph.edges(data="kind")}
    assert {"data", "value", "actor", "order"} <= kinds
    # program order between calls on the parameter server
    calls = [n for n, op in ir.items() if op.op == "actor_call"]
    assert [ir.op(n).seq for n in calls] == [0, 1, 2]
    assert ir.graph.has_edge(calls[0], "grads") and ir.graph.has_edge("total", calls[1])


def test_python_api_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    pipeline = load("examples/wordcount.pipe")
    assert pipeline.name == "wordcount"
    assert pipeline.check() == []
    assert pipeline.params({"n": "3"}) == {"path": "examples/data/corpus.txt", "n": 3}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples" / "data").mkdir(parents=True)
    (tmp_path / "examples" / "data" / "corpus.txt").write_text("b a b\nc b a\n")
    result = load(ROOT / "examples" / "wordcount.pipe").run(backend="local", params={"n": 2})
    assert json.loads(Path(result.files["top_words"]).read_text()) == [["b", 3], ["a", 2]]


def test_run_defaults_to_the_embedded_dask_engine_quietly(tmp_path):
    (tmp_path / "mod.py").write_text(TRAP.replace('raise RuntimeError("static commands must not import me")', ""))
    (tmp_path / "p.pipe").write_text(PIPE.replace("trap", "mod"))
    proc = subprocess.run([sys.executable, "-m", "pipec", "run", "p.pipe"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "finished on dask" in proc.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == [0, 2, 4, 6]
    # pipec's own lines: the run header, timestamped progress, the summary
    noise = [line for line in proc.stderr.splitlines()
             if not (line.startswith(("run ", "pipeline `", "  ")) or re.match(r"\d\d:\d\d:\d\d ", line))]
    assert noise == [], noise


def test_a_backend_whose_engine_is_missing_is_a_usage_error(tmp_path):
    """Simulate a machine without Dask: the error names the extra to install, no traceback."""
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.util, sys\n"
        "_real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'distributed' else _real(name, *a)\n")
    (tmp_path / "mod.py").write_text(TRAP.replace('raise RuntimeError("static commands must not import me")', ""))
    (tmp_path / "p.pipe").write_text(PIPE.replace("trap", "mod"))
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    proc = subprocess.run([sys.executable, "-m", "pipec", "run", "p.pipe"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "backend `dask` needs its engine" in proc.stderr and "pipec[dask]" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("module", ["pipec.backends.dask.worker", "pipec.backends.dask.plugins",
                                    "pipec.backends.ray.worker", "pipec.backends.spark.worker"])
def test_engine_workers_import_the_task_bodies_without_the_compiler(module):
    """Every worker process imports its backend's task module before its first task:
    pulling the compiler, networkx and pydantic in with it cost each worker about half a
    second. Only the interpreter and the physical steps may come along."""
    pytest.importorskip({"dask": "distributed", "ray": "ray", "spark": "pyspark"}[module.split(".")[2]])
    probe = (f"import sys, {module}\n"
             "print(sorted(m for m in ('networkx', 'pydantic', 'lark', 'rich', 'pipec.compiler.ir', "
             "'pipec.backends.physical.planner', 'pipec.backends.base') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
