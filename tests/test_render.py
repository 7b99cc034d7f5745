"""`pipec graph` drawings and `pipec compile --format json`: golden files and structure.

Every example in examples/*.pipe has a golden DOT drawing (tests/golden/graph/) and a
golden IR (tests/golden/ir/); a new example is covered as soon as it exists. Refresh them
with ``pytest --update-golden`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import pytest

from pipec.compiler import ir, render
from pipec import load
from pipec.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.pipe"))
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz's `dot` is not installed")

# Helpers for the small pipelines below; static commands never import them.
RTOOLS = '''
class Acc:
    def __init__(self):
        self.n = 0

    def add(self, x):
        self.n += x

    def done(self):
        return self.n > 100

    def get(self):
        return self.n


def inc(x, k):
    return x + k
'''

# Nested repeats (one with an index, one with `until`, one empty) and all five edge kinds:
# data (xs -> ys), value (i -> ys), actor (acc -> calls), order (between calls on acc),
# carry (the rebound `total` back to its var).
LOOPS = '''
use rtools as h

pipeline loops(rounds: int = 3) {
    source xs = range(10) partitions 2
    actor acc = h.Acc() {
        restarts 1
        checkpoint every 2 calls
    }
    var total = 0
    repeat rounds as i {
        repeat 2 until acc.done() {
            stage ys = map h.inc over xs with k = i retries 2 timeout 5 effectful
            total = total + count(ys)
            acc.add(total)
        }
        repeat 0 {
        }
    }
    sink out = acc.get() -> json("out/out.json")
}
'''


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def at_root(monkeypatch):
    """Run from the repository root with relative paths, so outputs hold no absolute path."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def loops_pipe(write_pipe) -> Path:
    return write_pipe(LOOPS, "loops.pipe", rtools=RTOOLS)


def _normalise(text: str) -> str:
    # The IR holds no absolute path (module roots are relative to the .pipe file); fail
    # loudly if one creeps back in rather than hiding it.
    assert str(ROOT) not in text
    return text


# ---- golden files for every example ----------------------------------------------------------


@pytest.mark.parametrize("stem", EXAMPLES)
def test_example_graph_dot_golden(stem, at_root, capsys, golden):
    code, out, err = run_cli(capsys, "graph", f"examples/{stem}.pipe", "--format", "dot")
    assert code == 0, err
    assert str(ROOT) not in out
    golden(f"graph/{stem}.dot", out)


@pytest.mark.parametrize("stem", EXAMPLES)
def test_example_ir_json_golden_and_roundtrip(stem, at_root, capsys, golden):
    code, out, err = run_cli(capsys, "compile", f"examples/{stem}.pipe", "--format", "json")
    assert code == 0, err
    golden(f"ir/{stem}.json", _normalise(out))
    assert ir.IR.from_json(json.loads(out)) == load(f"examples/{stem}.pipe").ir


def test_examples_exist():
    assert EXAMPLES, "no examples/*.pipe found"


# ---- structure of each format ------------------------------------------------------------------

_MERMAID_NODE = re.compile(r'^\s*(\w+)(\[\[|\[\(|\[/|\(\[|\(\(|\{\{|\[)')
_MERMAID_EDGE = re.compile(r'^\s*(\w+)(?:\[.*?\]|\(\(.*?\)\))?\s+(-->|-\.->|==>)(\|"[^"|]*"\|)?\s+(\w+)')


def _mermaid_structure(text: str):
    """Declared node ids, edges (source, arrow, target) and the subgraph each node is in."""
    declared, edges, where, stack = set(), [], {}, []
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("subgraph "):
            stack.append(re.match(r"subgraph (\w+)", stripped).group(1))
            continue
        if stripped == "end":
            stack.pop()
            continue
        edge = _MERMAID_EDGE.match(line)
        if edge:
            source, arrow, _, target = edge.groups()
            # The legend declares its nodes inside its edge line.
            for part in re.findall(r'(\w+)(?:\[|\(\()', stripped):
                declared.add(part)
            edges.append((source, arrow, target))
            continue
        node = _MERMAID_NODE.match(line)
        if node and not stripped.startswith(("classDef", "class ", "linkStyle", "%%")):
            declared.add(node.group(1))
            where[node.group(1)] = list(stack)
    assert not stack, "unbalanced subgraph/end"
    return declared, edges, where


@pytest.mark.parametrize("stem", EXAMPLES)
def test_mermaid_is_well_formed(stem, at_root, capsys):
    code, out, err = run_cli(capsys, "graph", f"examples/{stem}.pipe", "--format", "mermaid")
    assert code == 0, err
    assert out.startswith("flowchart ")
    declared, edges, _ = _mermaid_structure(out)
    assert edges
    for source, _, target in edges:
        assert source in declared and target in declared, (source, target)
    pipeline = load(f"examples/{stem}.pipe")
    assert len([e for e in edges if not e[0].startswith("lg")]) == pipeline.ir.graph.number_of_edges()
    # Every linkStyle index names an edge that exists.
    indices = [int(i) for line in out.splitlines() if line.strip().startswith("linkStyle")
               for i in line.split()[1].split(",")]
    assert sorted(indices) == list(range(len(edges)))


def _dot_clusters(text: str) -> dict[str, list[str]]:
    """Node id -> the clusters enclosing it, outermost first, read from DOT text."""
    where, stack = {}, []
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        opening = re.match(r'subgraph "((?:[^"\\]|\\.)*)" \{$', stripped)
        if opening:
            stack.append(opening.group(1))
        elif stripped == "}":
            if stack:
                stack.pop()
        else:
            node = re.match(r'^"((?:[^"\\]|\\.)*)" \[', stripped)
            if node:
                where[node.group(1)] = [s for s in stack if s.startswith("cluster_")]
    return where


def test_nested_loops_nest_as_clusters(loops_pipe, capsys):
    code, dot, err = run_cli(capsys, "graph", str(loops_pipe))
    assert code == 0, err
    where = _dot_clusters(dot)
    assert where["xs"] == [] and where["total"] == [] and where["out"] == []
    assert where["i"] == ["cluster_loop1"]
    assert where["ys"] == ["cluster_loop1", "cluster_loop2"]
    assert where["loop2/until"] == ["cluster_loop1", "cluster_loop2"]
    assert where["loop3 (empty)"] == ["cluster_loop1", "cluster_loop3"]  # an empty body still shows
    assert 'label="repeat rounds as i"' in dot
    assert 'label="repeat 2 until acc.done()"' in dot
    assert 'label="repeat 0"' in dot

    code, mermaid, err = run_cli(capsys, "graph", str(loops_pipe), "--format", "mermaid")
    assert code == 0, err
    _, _, inside = _mermaid_structure(mermaid)
    ids = {m.group(2): m.group(1) for m in re.finditer(r'^\s*(\w+)\S*?"([^"<]*)', mermaid, re.M)}
    assert inside[ids["ys"]] == ["c0", "c1"]
    assert inside[ids["i"]] == ["c0"]
    assert inside[ids["xs"]] == []

    code, text, err = run_cli(capsys, "graph", str(loops_pipe), "--format", "json")
    clusters = {c["id"]: c for c in json.loads(text)["clusters"]}
    assert clusters["loop2"]["parent"] == "loop1" and clusters["loop1"]["parent"] is None
    assert clusters["loop3"]["parent"] == "loop1"


def test_labels_say_what_each_node_is(loops_pipe, at_root, capsys):
    dot = run_cli(capsys, "graph", "examples/train.pipe")[1]
    assert 'label="grads\\nmap examples.linreg.gradient\\nwith weights\\nretries 3"' in dot
    assert "restarts 3\\ncheckpoint every 5 calls" in dot
    assert 'sink json \\"out/weights.json\\"' in dot
    assert 'shape="component"' in dot and 'shape="parallelogram"' in dot
    infer = run_cli(capsys, "graph", "examples/infer.pipe")[1]
    assert "actor pool examples.model.Scorer\\npool of 2\\nrestarts 2" in infer
    assert "sink jsonl" in infer
    loops = run_cli(capsys, "graph", str(loops_pipe))[1]
    assert "retries 2\\ntimeout 5 s\\neffectful" in loops
    assert "acc.add(total), call #0" in loops


def _dot_edges(text: str) -> list[tuple[str, str, dict[str, str]]]:
    found = []
    for m in re.finditer(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)" \[(.*)\];$', text, re.M):
        attrs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3)))
        found.append((m.group(1), m.group(2), attrs))
    return found


def test_all_edge_kinds_are_styled_apart(loops_pipe, capsys):
    dot = run_cli(capsys, "graph", str(loops_pipe))[1]
    edges = [e for e in _dot_edges(dot) if not e[0].startswith("legend:")]
    looks: dict[str, set[tuple[str, str]]] = {}
    for _, _, attrs in edges:
        looks.setdefault(attrs["class"], set()).add((attrs["style"], attrs["color"]))
    assert set(looks) == set(ir.EDGE_KINDS)
    assert all(len(v) == 1 for v in looks.values()), "one look per kind"
    assert len({next(iter(v)) for v in looks.values()}) == 5, "every kind looks different"
    assert looks["data"] == {("solid", render.EDGE_STYLES["data"][1])}
    assert next(iter(looks["value"]))[0] == "dashed"
    assert next(iter(looks["actor"]))[0] == "bold"
    assert next(iter(looks["order"]))[0] == "dotted"
    carry = [a for _, _, a in edges if a["class"] == "carry"]
    assert carry == [dict(style="dashed", color=render.EDGE_STYLES["carry"][1], label="next round",
                          fontcolor=render.EDGE_STYLES["carry"][1], constraint="false", **{"class": "carry"})]
    # The legend shows every kind used, in a fixed order.
    assert [e[0] for e in _dot_edges(dot) if e[0].startswith("legend:") and "invis" not in e[2].get("style", "")] \
        == [f"legend:{k}" for k in ir.EDGE_KINDS]

    mermaid = run_cli(capsys, "graph", str(loops_pipe), "--format", "mermaid")[1]
    styles = [line.split(" ", 2)[2] for line in (s.strip() for s in mermaid.splitlines())
              if line.startswith("linkStyle")]
    assert len(styles) == 5 and len(set(styles)) == 5
    assert '-.->|"next round"|' in mermaid


# ---- formats ------------------------------------------------------------------------------------


def test_json_drawing_is_consistent(at_root, capsys):
    code, text, err = run_cli(capsys, "graph", "examples/pagerank.pipe" if "pagerank" in EXAMPLES
                              else f"examples/{EXAMPLES[0]}.pipe", "--format", "json")
    assert code == 0, err
    data = json.loads(text)
    assert set(data) == {"title", "nodes", "edges", "clusters", "legend"}
    ids = {n["id"] for n in data["nodes"]}
    clusters = {c["id"] for c in data["clusters"]}
    assert all(e["source"] in ids and e["target"] in ids for e in data["edges"])
    assert all(n["cluster"] is None or n["cluster"] in clusters for n in data["nodes"])
    assert {e["kind"] for e in data["edges"]} == {entry["kind"] for entry in data["legend"]}


def test_html_is_standalone_and_offline(loops_pipe, capsys, tmp_path):
    out = tmp_path / "graph" / "loops.html"
    code, _, err = run_cli(capsys, "graph", str(loops_pipe), "--format", "html", "-o", str(out))
    assert code == 0, err
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script src" not in page and "https://" not in page  # nothing is fetched
    assert "pipeline loops(rounds: int = 3)" in page
    # Labels are HTML-escaped, so the page holds no stray markup from them.
    assert 'json &quot;out/out.json&quot;' in page


def test_output_is_deterministic(at_root):
    env = dict(os.environ, PYTHONHASHSEED="12345")
    for fmt in ("dot", "mermaid", "json"):
        runs = [subprocess.run([sys.executable, "-m", "pipec", "graph", "examples/train.pipe", "-f", fmt],
                               capture_output=True, text=True, env=dict(env, PYTHONHASHSEED=seed), cwd=ROOT)
                for seed in ("1", "2")]
        assert runs[0].returncode == 0, runs[0].stderr
        assert runs[0].stdout == runs[1].stdout
        assert "0x" not in runs[0].stdout


def test_dot_ids_and_labels_are_escaped():
    drawing = render.Drawing('odd "title"')
    drawing.nodes.append(render.Node('a"b\\c/d@e.f-g', 'line "one"\nback\\slash'))
    drawing.nodes.append(render.Node("plain", "x"))
    drawing.edge('a"b\\c/d@e.f-g', "plain", "value", 'say "hi"')
    dot = render.render(drawing.finish(), "dot")
    assert '"a\\"b\\\\c/d@e.f-g" [label="line \\"one\\"\\nback\\\\slash"' in dot
    assert '"a\\"b\\\\c/d@e.f-g" -> "plain"' in dot
    assert 'label="say \\"hi\\""' in dot
    if HAS_DOT:
        svg = render.to_image(drawing, "svg").decode()
        assert "back\\slash" in svg and "line &quot;one&quot;" in svg


def test_unknown_format_is_a_usage_error():
    from pipec.dsl.diagnostics import UsageError
    with pytest.raises(UsageError):
        render.render(render.Drawing("x"), "pdf")


# ---- images ----------------------------------------------------------------------------------------


@needs_dot
def test_svg_is_xml_naming_the_nodes(at_root, capsys):
    code, out, err = run_cli(capsys, "graph", "examples/train.pipe", "--format", "svg")
    assert code == 0, err
    root = ET.fromstring(out.encode("utf-8"))
    assert root.tag.endswith("svg")
    texts = {t.text for t in root.iter() if t.tag.endswith("text")}
    for name in ("grads", "total", "ps", "batches", "repeat epochs"):
        assert name in texts


@needs_dot
def test_png_needs_output_and_has_magic(at_root, capsys, tmp_path):
    code, out, err = run_cli(capsys, "graph", "examples/wordcount.pipe", "--format", "png")
    assert code == 2 and "needs -o" in err and out == ""
    target = tmp_path / "images" / "wordcount.png"
    code, out, err = run_cli(capsys, "graph", "examples/wordcount.pipe", "--format", "png", "-o", str(target))
    assert code == 0, err
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_missing_dot_is_a_clear_error(fmt, at_root, capsys, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, out, err = run_cli(capsys, "graph", "examples/wordcount.pipe", "--format", fmt,
                             "-o", str(tmp_path / f"g.{fmt}"))
    assert code in (1, 2)
    assert "Graphviz's `dot` is not installed" in err
    assert "apt-get install graphviz" in err and "--format dot|mermaid|html" in err
    assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / f"g.{fmt}").exists()


# ---- backend plans --------------------------------------------------------------------------------


def test_local_plan_draws_the_ir(at_root, capsys):
    code, plan_dot, err = run_cli(capsys, "graph", "examples/train.pipe", "--backend", "local")
    assert code == 0, err
    assert 'digraph "local plan for pipeline train"' in plan_dot
    pipeline_dot = run_cli(capsys, "graph", "examples/train.pipe")[1]
    # Same nodes and edges; only the title differs.
    assert plan_dot.splitlines()[2:] == pipeline_dot.splitlines()[2:]


class _FakePlan:
    """A lowered plan as an engine backend draws it: tasks with `label` and `group`."""

    backend = "fake"

    def __init__(self, pipeline: ir.IR, graph):
        self.ir, self._graph = pipeline, graph

    def graph(self):
        return self._graph


def _lowered(stages: int, tasks: int) -> nx.DiGraph:
    g = nx.DiGraph()
    for s in range(stages):
        for t in range(tasks):
            g.add_node(("stage-%d" % s, t), label=f"stage {s}\ntask {t}", group=f"stage-{s}")
            if s:
                g.add_edge(("stage-%d" % (s - 1), t), ("stage-%d" % s, t))
    g.add_node("finish", label="write")
    for t in range(tasks):
        g.add_edge((f"stage-{stages - 1}", t), "finish", kind="value")
    return g


def test_small_lowered_plan_boxes_tasks_by_group():
    pipeline = load(ROOT / "examples" / "wordcount.pipe").ir
    drawing = render.plan_drawing(_FakePlan(pipeline, _lowered(3, 4)))
    assert drawing.title == "fake plan for pipeline wordcount"
    assert len(drawing.nodes) == 13 and len(drawing.edges) == 8 + 4
    assert [c.label for c in drawing.clusters] == ["stage-0", "stage-1", "stage-2"]
    node = next(n for n in drawing.nodes if n.id == "('stage-1', 2)")
    assert node.label == "stage 1\ntask 2" and node.cluster == "group stage-1"
    assert {e.kind for e in drawing.edges} == {"data", "value"}
    for fmt in ("dot", "mermaid", "json", "html"):
        assert render.render(drawing, fmt)


def test_big_lowered_plan_collapses_to_one_node_per_group():
    pipeline = load(ROOT / "examples" / "wordcount.pipe").ir
    drawing = render.plan_drawing(_FakePlan(pipeline, _lowered(4, 100)))
    assert [n.label for n in drawing.nodes] == [f"stage-{s}\n100 tasks" for s in range(4)] + ["write"]
    assert [(e.source, e.target, e.label) for e in drawing.edges] == [
        ("group stage-0", "group stage-1", "100 edges"), ("group stage-1", "group stage-2", "100 edges"),
        ("group stage-2", "group stage-3", "100 edges"), ("group stage-3", "finish", "100 edges")]
    edges = [e for e in _dot_edges(render.render(drawing, "dot")) if not e[0].startswith("legend:")]
    assert len(edges) == 4


def test_plan_graph_of_ir_operations_in_a_plain_digraph():
    pipeline = load(ROOT / "examples" / "wordcount.pipe").ir
    plain = nx.DiGraph(pipeline.graph)  # no edge keys, as an engine backend might hand it over
    drawing = render.plan_drawing(_FakePlan(pipeline, plain))
    expected = render.pipeline_drawing(pipeline)
    assert [n.label for n in drawing.nodes] == [n.label for n in expected.nodes]
    assert [(e.source, e.target, e.kind) for e in drawing.edges] == \
        [(e.source, e.target, e.kind) for e in expected.edges]


def test_a_var_rebound_in_a_when_block_is_drawn_inside_it_with_its_carry(tmp_path, capsys):
    path = tmp_path / "w.pipe"
    path.write_text("pipeline w() {\n    var best = 0\n    repeat 3 as i {\n        when i > 0 {\n"
                    "            best = i\n        }\n    }\n    sink out = best\n}\n")
    code, dot, err = run_cli(capsys, "graph", str(path))
    assert code == 0, err
    assert _dot_clusters(dot)["best@when1"] == ["cluster_loop1", "cluster_when1"]
    assert "best from here on, when when1 runs" in dot
    assert any(a == "best@when1" and b == "best" for a, b, _ in _dot_edges(dot))  # the carry edge
