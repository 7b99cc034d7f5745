"""`pipec check` over many files, folders and standard input, in text, JSON, SARIF and
GitHub formats: the same diagnostics as the checker, with positions, codes and hints."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from pipec import cli, load
from pipec.dsl.diagnostics import SemanticError
from tests.conftest import EXAMPLES, ROOT

GOOD = "pipeline p() {\n    source xs = range(4) partitions 2\n    sink s = collect(xs)\n}\n"
UNDEFINED = "pipeline p() {\n    source points = range(4) partitions 2\n    sink s = collect(pionts)\n}\n"
UNUSED = ("pipeline p() {\n    source xs = range(4) partitions 2\n    stage ys = map m.f over xs\n"
          "    sink s = collect(xs)\n}\n")
SYNTAX = "pipeline p() {\n    stage = 3\n}\n"
M = "def f(x):\n    return x\n"


def run(argv, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_json_lists_every_diagnostic_of_every_file(write_pipe, capsys):
    bad = write_pipe(UNDEFINED, name="bad.pipe")
    warn = write_pipe("use m as m\n" + UNUSED, name="warn.pipe", m=M)
    good = write_pipe(GOOD, name="good.pipe")
    code, out, err = run(["check", "--format", "json", bad, warn, good], capsys)
    assert code == 1 and err == ""
    found = json.loads(out)
    assert found == [
        {"file": str(bad), "line": 3, "column": 22, "end_line": 3, "end_column": 28, "severity": "error",
         "code": "semantic", "message": "undefined name `pionts`", "hint": "did you mean `points`?"},
        {"file": str(warn), "line": 4, "column": 11, "end_line": 4, "end_column": 13, "severity": "warning",
         "code": "lint", "message": found[1]["message"], "hint": found[1]["hint"]},
    ]
    assert "`ys` is computed but never used" in found[1]["message"]


def test_json_matches_the_checker_exactly(write_pipe, capsys):
    """No second checker: the JSON carries what `load(...).check()` raises, field by field."""
    path = write_pipe(UNDEFINED.replace("collect(pionts)", "collect(ys)"), m=M)
    with pytest.raises(SemanticError) as info:
        load(path).check()
    _, out, _ = run(["check", "-f", "json", path], capsys)
    got = json.loads(out)
    assert [(d["line"], d["column"], d["end_line"], d["end_column"], d["message"], d["hint"]) for d in got] == [
        (d.span.line, d.span.column, d.span.end_line, d.span.end_column, d.message, d.hint)
        for d in info.value.diagnostics]


def test_syntax_errors_and_unreadable_files_are_diagnostics_too(write_pipe, tmp_path, capsys):
    syntax = write_pipe(SYNTAX, name="syntax.pipe")
    latin = tmp_path / "latin.pipe"
    latin.write_bytes(b"pipeline p() {\n    sink s = \"caf\xe9\"\n}\n")
    code, out, _ = run(["check", "-f", "json", syntax, latin, tmp_path / "missing.pipe"], capsys)
    assert code == 1
    [syn, enc, missing] = json.loads(out)
    assert (syn["code"], syn["line"], syn["column"]) == ("syntax", 2, 11)
    assert "statement" in syn["hint"]
    assert (enc["code"], enc["line"], enc["column"], enc["message"]) == ("file", 2, 18, "byte 0xe9 is not valid UTF-8")
    assert (missing["code"], missing["line"], missing["message"]) == ("file", None, "no such file")


def test_a_backend_gap_has_the_code_unsupported(write_pipe, capsys):
    path = write_pipe("use m as m\npipeline p() {\n    source xs = range(4) partitions 2\n"
                      "    actor a = m.A()\n    stage ys = map m.push over xs with h = a effectful\n"
                      "    sink s = collect(ys)\n}\n",
                      m="def push(x, h):\n    return x\n\nclass A:\n    def get(self):\n        return 1\n")
    code, out, _ = run(["check", "-f", "json", "--backend", "spark", path], capsys)
    assert code == 1
    assert {d["code"] for d in json.loads(out) if d["severity"] == "error"} == {"unsupported"}


def test_parameter_values_are_checked_per_file(write_pipe, capsys):
    path = write_pipe("pipeline p(n: int = 2) {\n    sink s = n\n}\n")
    code, out, _ = run(["check", "-f", "json", "--param", "n=many", path], capsys)
    [d] = json.loads(out)
    assert code == 1 and d["code"] == "parameter" and d["line"] == 1
    assert d["hint"] == "for example --param n=10"


def test_quiet_leaves_warnings_out_of_every_format(write_pipe, capsys):
    path = write_pipe("use m as m\n" + UNUSED, m=M)
    assert run(["check", "-q", "-f", "json", path], capsys)[1] == "[]\n"
    code, _, err = run(["check", "-q", path], capsys)
    assert code == 0 and err == f"{path}: ok (1 warning)\n"


def test_a_folder_means_every_pipe_file_under_it(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.pipe").write_text(GOOD)
    (tmp_path / "a" / "deeper").mkdir()
    (tmp_path / "a" / "deeper" / "two.pipe").write_text(UNDEFINED)
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "skip.pipe").write_text(SYNTAX)
    (tmp_path / "a" / "notes.txt").write_text("not a pipeline")
    code, _, err = run(["check", tmp_path / "a"], capsys)
    assert code == 1
    assert f"{tmp_path / 'a' / 'one.pipe'}: ok" in err
    assert f"{tmp_path / 'a' / 'deeper' / 'two.pipe'}:3:22: error: undefined name `pionts`" in err
    assert "skip.pipe" not in err
    assert err.rstrip().endswith("checked 2 files: 1 ok, 1 with errors")


def test_the_examples_folder_checks_clean(capsys):
    code, out, _ = run(["check", "-f", "json", EXAMPLES], capsys)
    assert code == 0 and json.loads(out) == []


def test_a_folder_without_pipe_files_is_an_error(tmp_path, capsys):
    code, out, _ = run(["check", "-f", "json", tmp_path], capsys)
    assert code == 1
    [d] = json.loads(out)
    assert d["code"] == "file" and d["message"] == "is a directory holding no .pipe file"


def test_standard_input(capsys, monkeypatch):
    code, _, err = run(["check", "-"], capsys, UNDEFINED.encode(), monkeypatch)
    assert code == 1
    assert err.startswith("<stdin>:3:22: error: undefined name `pionts`\n  |\n3 |     sink s = collect(pionts)\n")


def test_standard_input_named_finds_its_modules(tmp_path, capsys, monkeypatch):
    """--stdin-filename names the text in messages and is where `use` looks for modules."""
    (tmp_path / "m.py").write_text(M)
    text = "use m as m\n" + UNUSED.replace("sink s = collect(xs)", "sink s = collect(ys)")
    code, _, err = run(["check", "--stdin-filename", tmp_path / "p.pipe", "-"], capsys, text.encode(), monkeypatch)
    assert (code, err) == (0, f"{tmp_path / 'p.pipe'}: ok\n")
    monkeypatch.chdir(tmp_path.parent)  # unnamed, the text is looked up from the working folder
    code, _, err = run(["check", "-"], capsys, text.encode(), monkeypatch)
    assert code == 1 and "<stdin>:1:5: error: cannot find module `m`" in err


def test_github_annotations(write_pipe, capsys):
    path = write_pipe(UNDEFINED, name="bad, odd: name.pipe")
    code, out, _ = run(["check", "-f", "github", path], capsys)
    assert code == 1
    escaped = str(path).replace(":", "%3A").replace(",", "%2C")
    assert out == (f"::error file={escaped},line=3,col=22,endLine=3,endColumn=28,title=pipec semantic::"
                   "undefined name `pionts`%0Ahint: did you mean `points`?\n")


def test_sarif_log(write_pipe, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    bad = write_pipe(UNDEFINED, name="bad.pipe")
    warn = write_pipe("use m as m\n" + UNUSED, name="warn.pipe", m=M)
    code, out, _ = run(["check", "-f", "sarif", bad, warn], capsys)
    assert code == 1
    log = json.loads(out)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    [run_] = log["runs"]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "pipec"
    assert [r["id"] for r in driver["rules"]] == ["lint", "semantic"]
    assert all(r["shortDescription"]["text"] for r in driver["rules"])
    assert run_["originalUriBaseIds"]["SRCROOT"]["uri"] == tmp_path.as_uri() + "/"
    error, warning = run_["results"]
    assert (error["ruleId"], error["level"]) == ("semantic", "error")
    assert driver["rules"][error["ruleIndex"]]["id"] == "semantic"
    assert error["message"]["text"] == "undefined name `pionts`\nhint: did you mean `points`?"
    location = error["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "bad.pipe", "uriBaseId": "SRCROOT"}
    assert location["region"] == {"startLine": 3, "startColumn": 22, "endLine": 3, "endColumn": 28}
    assert (warning["ruleId"], warning["level"]) == ("lint", "warning")


def test_text_output_of_one_file_is_unchanged(write_pipe, capsys):
    path = write_pipe(UNDEFINED)
    code, out, err = run(["check", path], capsys)
    assert code == 1 and out == ""
    assert err == (f"{path}:3:22: error: undefined name `pionts`\n  |\n3 |     sink s = collect(pionts)\n"
                   "  |                      ^^^^^^\n  = hint: did you mean `points`?\n")


def test_the_check_path_imports_no_engine_and_no_renderer(tmp_path):
    """The check path is what editors and hooks run on every save: it keeps to the front
    end and the compiler (no engine, no renderer, no progress display)."""
    probe = ("import sys\nfrom pipec.cli import main\ncode = main(['check', '-f', 'json', sys.argv[1]])\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('dask', 'ray', 'pyspark', 'rich', 'numpy', 'pandas', 'pyarrow', 'fsspec') "
             "or m.startswith('pipec.backends'))\nprint(code, heavy)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(EXAMPLES / "train.pipe")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 []"
