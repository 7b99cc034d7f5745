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
from pipec.dsl.codes import CODES
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
         "code": "undefined-name", "category": "semantic", "message": "undefined name `pionts`",
         "hint": "did you mean `points`?"},
        {"file": str(warn), "line": 4, "column": 11, "end_line": 4, "end_column": 13, "severity": "warning",
         "code": "unused", "category": "lint", "message": found[1]["message"], "hint": found[1]["hint"]},
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
    assert (syn["code"], syn["category"], syn["line"], syn["column"]) == ("unexpected-token", "syntax", 2, 11)
    assert "statement" in syn["hint"]
    assert (enc["category"], enc["line"], enc["column"], enc["message"]) == ("file", 2, 18,
                                                                             "byte 0xe9 is not valid UTF-8")
    assert (missing["code"], missing["line"], missing["message"]) == ("unreadable-file", None, "no such file")


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
    assert code == 1 and (d["code"], d["category"], d["line"]) == ("bad-parameter-value", "parameter", 1)
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
    assert d["category"] == "file" and d["message"] == "is a directory holding no .pipe file"


def test_standard_input(capsys, monkeypatch):
    code, _, err = run(["check", "-"], capsys, UNDEFINED.encode(), monkeypatch)
    assert code == 1
    assert err.startswith("<stdin>:3:22: error: undefined name `pionts`\n  |\n3 |     sink s = collect(pionts)\n")


def test_standard_input_named_finds_its_modules(tmp_path, capsys, monkeypatch):
    """--stdin-filename names the text in messages and is where `use` looks for modules."""
    # a module name no folder above the test's can hold by chance (the lookup walks upwards)
    (tmp_path / "stdin_probe_module.py").write_text(M)
    text = "use stdin_probe_module as m\n" + UNUSED.replace("sink s = collect(xs)", "sink s = collect(ys)")
    code, _, err = run(["check", "--stdin-filename", tmp_path / "p.pipe", "-"], capsys, text.encode(), monkeypatch)
    assert (code, err) == (0, f"{tmp_path / 'p.pipe'}: ok\n")
    monkeypatch.chdir(tmp_path.parent)  # unnamed, the text is looked up from the working folder
    code, _, err = run(["check", "-"], capsys, text.encode(), monkeypatch)
    assert code == 1 and "<stdin>:1:5: error: cannot find module `stdin_probe_module`" in err


def test_github_annotations(write_pipe, capsys):
    path = write_pipe(UNDEFINED, name="bad, odd: name.pipe")
    code, out, _ = run(["check", "-f", "github", path], capsys)
    assert code == 1
    escaped = str(path).replace(":", "%3A").replace(",", "%2C")
    assert out == (f"::error file={escaped},line=3,col=22,endLine=3,endColumn=28,title=pipec undefined-name::"
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
    assert [(r["id"], r["properties"]["category"]) for r in driver["rules"]] == [
        ("undefined-name", "semantic"), ("unused", "lint")]
    assert driver["rules"][0]["shortDescription"]["text"] == CODES["undefined-name"][1]
    assert run_["originalUriBaseIds"]["SRCROOT"]["uri"] == tmp_path.as_uri() + "/"
    error, warning = run_["results"]
    assert (error["ruleId"], error["level"]) == ("undefined-name", "error")
    assert driver["rules"][error["ruleIndex"]]["id"] == "undefined-name"
    assert error["message"]["text"] == "undefined name `pionts`\nhint: did you mean `points`?"
    location = error["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "bad.pipe", "uriBaseId": "SRCROOT"}
    assert location["region"] == {"startLine": 3, "startColumn": 22, "endLine": 3, "endColumn": 28}
    assert (warning["ruleId"], warning["level"]) == ("unused", "warning")


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


def test_every_check_reports_under_a_registered_code():
    """Each reporting call of the parser and the builder names its check with a code that
    pipec.dsl.codes lists (so JSON, SARIF and the editor can tell checks apart); the
    codes it lists are all in use."""
    import ast as pyast
    from pipec.dsl.codes import CODES
    used: set[str] = set()
    for path in sorted((ROOT / "compiler").glob("*.py")) + [ROOT / "dsl" / "parser.py", ROOT / "pipec" / "api.py"]:
        tree = pyast.parse(path.read_text(encoding="utf-8"))
        for node in pyast.walk(tree):
            if not isinstance(node, pyast.Call):
                continue
            name = node.func.attr if isinstance(node.func, pyast.Attribute) else getattr(node.func, "id", "")
            # the reporter's and the builder's own error/warn/fail pass their caller's code on
            passed_on = any(k.arg == "code" and isinstance(k.value, pyast.Name) for k in node.keywords)
            delegates = path.name in ("build.py", "reporter.py") and passed_on
            if name in ("error", "warn", "fail", "_Refused") and node.args and not delegates:
                code = next((k.value for k in node.keywords if k.arg == "code"), None)
                assert isinstance(code, pyast.Constant), f"{path.name}:{node.lineno}: a check without code="
                used.add(code.value)
            elif name == "Diagnostic" and len(node.args) >= 6 and isinstance(node.args[5], pyast.Constant):
                used.add(node.args[5].value)
    unknown = used - set(CODES)
    assert not unknown, f"codes used but not listed in pipec.dsl.codes: {sorted(unknown)}"
    assert set(CODES) - used <= {"unreadable-file", "unsupported"}, sorted(set(CODES) - used)
