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


def test_check_and_the_language_server_path_import_neither_networkx_nor_pydantic(tmp_path):
    """`pipec check` may take at most 0.25 s (issue 14): importing networkx and pydantic
    and defining the IR's models with pydantic cost more than that alone. The IR keeps
    its edges in dicts until its networkx graph is asked for, and the ops are models of
    pipec.compiler.model. The Python API still hands out a networkx MultiDiGraph."""
    probe = ("import sys, runpy\n"
             f"sys.argv = ['pipec', 'check', {str(EXAMPLES / 'train.pipe')!r}]\n"
             "try:\n    runpy.run_module('pipec', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             "from pipec.lsp.document import Document\n"
             f"Document('p.pipe').update(open({str(EXAMPLES / 'train.pipe')!r}).read())\n"
             "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'networkx', 'pydantic', 'pydantic_core'}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "0 []", done.stdout
    import networkx as nx
    pipeline = load(EXAMPLES / "train.pipe")
    assert isinstance(pipeline.ir.graph, nx.MultiDiGraph)
    assert pipeline.ir.graph.nodes["grads"]["op"] is pipeline.ir.op("grads")


def test_run_imports_no_networkx(tmp_path):
    """Only drawing a plan needs networkx (about 70 ms to import, a few per cent of a short
    run): `pipec run` plans, runs and summarises with the IR's own edge dicts."""
    probe = ("import sys, runpy\n"
             f"sys.argv = ['pipec', 'run', {str(EXAMPLES / 'train.pipe')!r}, '--backend', 'local', '-q',\n"
             "            '-p', 'epochs=2', '-p', 'rows=2000', '--run-dir', 'run']\n"
             "try:\n    runpy.run_module('pipec', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, 'networkx' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "0 False", done.stdout + done.stderr


def test_ir_ops_validate_themselves_when_built():
    from pipec.compiler import ir
    from pipec.compiler.model import ValidationError

    fn = ir.FnRef(module="m", attr="f")
    stage = ir.Elementwise(kind="map", fn=fn, input={"node": "xs"}, bindings={"k": {"type": "lit", "value": 2}},
                           options={"retries": 2, "timeout": 5})
    assert stage.input == ir.NodeRef(node="xs") and stage.bindings["k"] == ir.Lit(value=2)
    assert stage.options.timeout == 5.0 and isinstance(stage.options.timeout, float)  # lax, as pydantic
    bad = [dict(kind="mapp"),  # not one of the Literal's words
           dict(kind="map", pool=ir.NodeRef(node="p")),  # its model validator: fn or pool, not both
           dict(kind="map", input="xs"),  # a string is not a NodeRef
           dict(kind="map", shape="x"),  # no such field
           dict(kind="map", options={"retries": -1})]  # Field(0, ge=0)
    for fields in bad:
        with pytest.raises(ValidationError):
            ir.Elementwise(**{"fn": fn, "input": ir.NodeRef(node="xs"), **fields})
    with pytest.raises(ValidationError, match="required"):
        ir.ActorCall(actor=ir.NodeRef(node="a"), method="m")  # seq has no default
    with pytest.raises(ValidationError, match="frozen"):
        fn.attr = "g"
    with pytest.raises(ValidationError, match="`op` should be one of"):
        ir.IR.from_json({"version": ir.IR_VERSION, "pipeline": {"name": "p", "path": "p.pipe", "params": []},
                         "nodes": [{"id": "x", "op": "nope"}], "edges": []})
    # what the API and the backends use: copies, dumps, equality, hashing, pickling
    import pickle
    again = pickle.loads(pickle.dumps(stage))
    assert again == stage and again is not stage and hash(fn) == hash(ir.FnRef(module="m", attr="f"))
    assert stage.model_copy(update={"kind": "filter"}).kind == "filter" and stage.kind == "map"
    assert list(stage.model_dump(mode="json"))[:5] == ["op", "span", "loop", "name", "kind"]
    assert ir.Lit(value=(1, float("inf"))).model_dump(mode="json") == {"type": "lit", "value": [1, None]}
    assert repr(fn) == "FnRef(module='m', attr='f')"
