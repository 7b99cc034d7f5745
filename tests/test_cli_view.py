"""Seeing a run: the header, round and stage lines, the kept summary and report, the run
history, Ctrl-C, and the notebook views, on every backend's real engine."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipec import load
from pipec.api import run_plan
from pipec.cli import main
from pipec.progress import Names, RunView
from pipec.runs import RunEvents
from tests.conftest import ROOT
from tests.engines import BACKENDS, engine_options

ENGINE_PACKAGE = {"dask": "dask", "ray": "ray", "spark": "spark"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_is_shown_and_kept(backend, workdir):
    """Plain progress names rounds k/N in the pipeline's words; the run folder keeps a
    summary (rounds, the actor call ledger, sinks with their real sizes, the engine) and
    an offline report; numbered snapshots are pruned once the run succeeded."""
    pipeline = load("examples/train.pipe")
    plan = pipeline.lower(backend, {"rows": 400, "epochs": 3}, **engine_options(backend))
    shown = io.StringIO()
    view = RunView(Names(pipeline.ir, pipeline.source.text), shown, "plain")
    result = run_plan(pipeline, plan, RunEvents(view), run_dir=str(workdir / "runs" / "r1"))
    lines = shown.getvalue().splitlines()
    assert lines[0].startswith("  engine ready")
    rounds = [x for x in lines if "repeat epochs (line 17): round" in x]
    assert [re.search(r"round (\d/\d)", x).group(1) for x in rounds] == ["1/3", "2/3", "3/3"]
    assert all(re.match(r"\d\d:\d\d:\d\d ", x) for x in rounds)
    assert "loop1" not in shown.getvalue()

    folder = workdir / "runs" / "r1"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["backend"] == backend
    assert [(r["index"], r["ok"]) for r in summary["rounds"]] == [(0, True), (1, True), (2, True)]
    applied = [(c["actor"], c["seq"], c["method"]) for c in summary["calls"] if not c["replayed"]]
    assert applied == [("ps", 0, "weights"), ("ps", 1, "apply"), ("ps", 2, "weights"), ("ps", 3, "apply"),
                       ("ps", 4, "weights"), ("ps", 5, "apply"), ("ps", 6, "weights")]
    weights = Path(result.files["weights"])
    assert summary["sinks"] == [{"node": "weights", "name": "sink weights", "path": str(result.files["weights"]),
                                 "bytes": weights.stat().st_size}]
    assert {t["name"] for t in summary["timings"]} >= {"stage grads", "value total", "ps.apply()"}
    assert {"pipec", "python"} <= set(summary["engine"]["versions"])
    if backend in ENGINE_PACKAGE:
        assert ENGINE_PACKAGE[backend] in summary["engine"]["versions"]
    assert summary["engine"]["workers"] >= 1
    assert not [f for f in (folder / "actors").iterdir() if re.match(r".*\.\d+\.snapshot$", f.name)]
    report = (folder / "report.html").read_text()
    assert result.report == str(folder / "report.html")
    assert "<script src" not in report and "https://" not in report
    assert report.count('class="bar"') >= 3 + 3  # three rounds, and a stage in each
    assert result.read("weights") == json.loads(weights.read_text())


def test_cli_run_without_loops_prints_a_line_per_stage_and_keeps_history(workdir, capsys):
    code = main(["run", "examples/wordcount.pipe", "--backend", "local", "-p", "n=3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    header = err.splitlines()
    run_id = re.match(r"run (\w+)  pipeline wordcount on local$", header[0]).group(1)
    assert header[1].startswith("  starting ")
    assert re.search(r"^\d\d:\d\d:\d\d stage words: 4 tasks in ", err, re.M)
    assert f"report: .pipec/runs/{run_id}/report.html" in err

    assert main(["runs", "list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^{run_id} .* finished +wordcount +local ", listing, re.M)
    assert main(["runs", "show", run_id[:6]]) == 0
    shown = capsys.readouterr().out
    assert "finished" in shown and "top_words" in shown and "bytes" in shown
    assert main(["graph", "examples/wordcount.pipe", "--run", run_id, "-o", "timed.html"]) == 0
    timed = Path("timed.html").read_text()
    assert 'data-id="words"' in timed and "data-seconds=" in timed and 'id="by-time"' in timed
    assert main(["-q", "runs", "gc", "--keep", "0"]) == 0
    assert "deleted 1 run" in capsys.readouterr().err
    assert not (workdir / ".pipec" / "runs" / run_id).exists()


def test_ctrl_c_is_one_line_with_the_round_and_how_to_resume(workdir):
    """A real SIGINT to the process group while a Dask run is in its rounds: pipec says
    where it stopped and how to go on; no engine process prints a traceback."""
    if "dask" not in BACKENDS:
        pytest.skip("needs the dask backend")
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipec", "run", "examples/train.pipe", "--backend", "dask",
                             "-p", "epochs=100000", "-p", "rows=400"], stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "round 2/" in line:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    run_id = re.match(r"run (\w+)", seen[0]).group(1)
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    last = rest.strip().splitlines()
    assert len(last) == 1 or all(re.match(r"\d\d:\d\d:\d\d repeat epochs", x) for x in last[:-1]), rest
    assert re.match(rf"interrupted in round \d+/100000 of repeat epochs \(line 17\); continue it with: "
                    rf"pipec run examples/train.pipe --resume {run_id}$", last[-1]), rest
    summary = json.loads((workdir / ".pipec" / "runs" / run_id / "summary.json").read_text())
    assert summary["status"] == "interrupted"


def test_notebook_views_are_short_and_draw(workdir):
    pipeline = load("examples/wordcount.pipe")
    assert len(repr(pipeline)) < 200 and "wordcount" in repr(pipeline)
    bundle = pipeline._repr_mimebundle_()
    svg = bundle["image/svg+xml"]
    assert svg.startswith("<svg") and svg.count('class="node') == len(pipeline.ir.graph)
    result = pipeline.run(backend="local", params={"n": 3})
    assert len(repr(result)) < 200 and "<table>" in result._repr_html_()
    assert result.read("top_words") == json.loads(Path(result.files["top_words"]).read_text())
    with pytest.raises(KeyError, match="top_words"):
        result.read("nope")


def test_cli_conventions(workdir, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("pipec ")
    assert main(["graph", "examples/wordcount.pipe", "-o", "g.html"]) == 0
    assert Path("g.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^local: installed: ", out, re.M)


BAD = '''
def f(x):
    return helper({"x": x, "padding": "p" * 200})
def helper(row):
    return 10 // (row["x"] - 5)
'''


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_function_names_its_element_and_keeps_its_traceback(backend, write_pipe, monkeypatch):
    from pipec.dsl.diagnostics import PipelineRuntimeError
    path = write_pipe("""use bad_elem as b
pipeline p() {
    source xs = range(10) partitions 2
    stage ys = map b.f over xs
    sink out = collect(ys)
}
""", bad_elem=BAD)
    monkeypatch.chdir(path.parent)
    with pytest.raises(PipelineRuntimeError) as failed:
        load(path).run(backend=backend, **engine_options(backend))
    assert "ZeroDivisionError: integer division or modulo by zero (partition 1) at element 0 = 5" in str(failed.value)
    assert 'in helper\n    return 10 // (row["x"] - 5)' in failed.value.user_traceback
    assert "pipec" not in failed.value.user_traceback.split("\n")[1]  # it starts in the user's code
    kept = [json.loads(p.read_text()) for p in (path.parent / ".pipec" / "runs").glob("*/summary.json")]
    assert [s["status"] for s in kept] == ["failed"]
    assert kept[0]["error"].endswith("in `ys`: ZeroDivisionError: integer division or modulo by zero "
                                     "(partition 1) at element 0 = 5")


def test_run_traceback_flag(write_pipe, monkeypatch, capsys):
    path = write_pipe("""use bad_cli as b
pipeline p() {
    source xs = b.rows() partitions 1
    stage ys = map b.g over xs
    sink out = collect(ys)
}
""", bad_cli="def rows():\n    return [{'x': 4}, {'x': 5, 'name': 'long ' * 40}]\n"
             "def g(row):\n    return 1 // (row['x'] - 5)\n")
    monkeypatch.chdir(path.parent)
    assert main(["-q", "run", str(path), "--backend", "local"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rerun with --traceback" in err
    clipped = "{'x': 5, 'name': 'long long "
    shown = re.search(r"\(partition 0\) at element 1 = (.*)$", err.splitlines()[0]).group(1)
    assert shown.startswith(clipped) and shown.endswith("...") and len(shown) == 80  # clipped
    assert main(["-q", "run", str(path), "--backend", "local", "--traceback"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "return 1 // (row['x'] - 5)" in err


def _on_a_terminal(argv: list[str], cwd: Path, **env: str) -> str:
    """What ``pipec ARGV`` shows on a real pseudo-terminal (stdout and stderr)."""
    import pty
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pipec", *argv], stdout=follower, stderr=follower, cwd=cwd,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="120", **env))
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_gets_live_round_bars_and_colour_unless_no_color(workdir):
    argv = ["run", "examples/train.pipe", "--backend", "local", "-p", "epochs=4", "-p", "rows=400"]
    shown = _on_a_terminal(argv, workdir)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    assert re.search(r"repeat epochs \(line 17\)  round [1-4]/4 .* eta", plain)
    assert "\x1b[1mrun " in shown  # the run id in bold
    assert not re.search(r"^\d\d:\d\d:\d\d repeat", plain, re.M)  # live bars, not log lines
    no_color = _on_a_terminal(argv, workdir, NO_COLOR="1")
    assert "\x1b[1m" not in no_color and "\x1b[32m" not in no_color


def test_bash_completion_offers_commands_backends_and_pipe_files(workdir, capsys):
    assert main(["completion", "bash"]) == 0
    Path("pipec.bash").write_text(capsys.readouterr().out)
    probe = """source pipec.bash
COMP_WORDS=(pipec ru); COMP_CWORD=1; _pipec; echo "${COMPREPLY[*]}"
COMP_WORDS=(pipec run --backend ""); COMP_CWORD=3; _pipec; echo "${COMPREPLY[*]}"
COMP_WORDS=(pipec run examples/word); COMP_CWORD=2; _pipec; echo "${COMPREPLY[*]}"
"""
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0].split() == ["run", "runs"]
    assert lines[1].split() == BACKENDS
    assert lines[2].split() == ["examples/wordcount.pipe"]


HIDE_SPARK = '''import importlib.util, sys
_real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in ("pyspark", "py4j") else _real(name, *a)
class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pyspark", "py4j"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Hidden())
'''


def test_check_for_spark_is_static_and_backends_says_it_is_missing(workdir):
    """On a machine without PySpark (simulated): `check --backend spark` still checks."""
    Path("sitecustomize.py").write_text(HIDE_SPARK)
    env = dict(os.environ, PYTHONPATH=f"{workdir}:{ROOT}")
    done = subprocess.run([sys.executable, "-m", "pipec", "check", "examples/train.pipe", "--backend", "spark"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "train.pipe: ok" in done.stderr, done.stderr
    shown = subprocess.run([sys.executable, "-m", "pipec", "backends"], capture_output=True, text=True, env=env)
    assert re.search(r"^spark: not installed: .*pip install 'pipec\[spark\]'", shown.stdout, re.M), shown.stdout
