"""The editor packaging under grammar/: the TextMate grammar tokenises every example with
a real TextMate engine (babi's, on Oniguruma, the regex engine editors use) without an
invalid scope, knows every keyword of the Lark grammar, and the VS Code manifest starts
`pipec lsp` with the grammar it names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipec.cli import build_parser
from pipec.dsl.parser import _keywords
from tests.conftest import EXAMPLES, ROOT

GRAMMAR_DIR = ROOT / "grammar"
TM = GRAMMAR_DIR / "pipe.tmLanguage.json"
# The roots of TextMate's scope naming conventions; editors' themes colour these.
SCOPE_ROOTS = {"comment", "constant", "entity", "invalid", "keyword", "markup", "meta", "punctuation", "storage",
               "string", "support", "variable"}


def _regexes(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("match", "begin", "end", "while") and isinstance(value, str):
                yield value
            else:
                yield from _regexes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _regexes(item)


def _scopes(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("name", "contentName") and isinstance(value, str):
                yield value
            else:
                yield from _scopes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _scopes(item)


@pytest.fixture(scope="module")
def tokenise(tmp_path_factory):
    """``tokenise(text)``: for each line, (text, innermost scope) of each region."""
    highlight = pytest.importorskip("babi.highlight")
    folder = tmp_path_factory.mktemp("grammars")
    shutil.copy(TM, folder / "source.pipe.json")  # babi finds a grammar by its scope name
    compiler = highlight.Grammars(str(folder)).compiler_for_scope("source.pipe")

    def run(text: str) -> list[list[tuple[str, tuple[str, ...]]]]:
        state, out = compiler.root_state, []
        for i, line in enumerate(text.splitlines(True)):
            state, regions = highlight.highlight_line(compiler, state, line, first_line=i == 0)
            out.append([(line[r.start:r.end], r.scope) for r in regions])
        return out
    return run


def test_every_regex_compiles_with_oniguruma():
    onig = pytest.importorskip("onigurumacffi")
    grammar = json.loads(TM.read_text())
    found = list(_regexes(grammar))
    assert len(found) > 20
    for pattern in found:
        onig.compile(pattern)  # raises on a pattern editors would reject


def test_scope_names_follow_the_textmate_conventions():
    grammar = json.loads(TM.read_text())
    assert grammar["scopeName"] == "source.pipe" and grammar["fileTypes"] == ["pipe"]
    for scope in _scopes(grammar["repository"]):
        assert scope.split(".")[0] in SCOPE_ROOTS and scope.endswith(".pipe"), scope


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.pipe")), ids=lambda p: p.name)
def test_every_example_tokenises_with_every_character_scoped(tokenise, example):
    text = example.read_text()
    for number, regions in enumerate(tokenise(text), 1):
        line = text.splitlines()[number - 1]
        covered = "".join(piece for piece, _ in regions)
        assert covered.rstrip("\n") == line, f"line {number} is not covered by regions"
        for piece, scope in regions:
            assert not any(s.startswith("invalid") for s in scope), (number, piece, scope)
            if piece.strip():
                assert len(scope) > 1, f"line {number}: {piece!r} has no scope but the file's"


def test_every_keyword_of_the_lark_grammar_is_highlighted(tokenise):
    for word in sorted(_keywords()):
        [[(piece, scope)]] = tokenise(word)
        assert piece == word and scope[-1].split(".")[0] in ("keyword", "storage", "constant"), (word, scope)


def test_names_after_a_dot_are_names_even_when_they_are_keywords(tokenise):
    [regions] = tokenise("top(counts, n, by = examples.text.count)")
    scopes = dict((piece, scope[-1]) for piece, scope in regions if piece.strip())
    assert scopes["top"] == "support.function.builtin.pipe"
    assert scopes["count"] == "variable.other.member.pipe"


def test_bad_characters_and_unterminated_strings_are_invalid(tokenise):
    [regions] = tokenise("value v = 1 @ 2\n")
    assert ("@", ("source.pipe", "invalid.illegal.character.pipe")) in regions
    first, second = tokenise('value v = "never closed\nvalue w = 2\n')
    assert any("invalid.illegal.newline.pipe" in scope for _, scope in first)
    assert [scope[-1] for piece, scope in second if piece == "value"] == ["storage.type.pipe"]


def test_the_vscode_manifest_starts_the_language_server():
    manifest = json.loads((GRAMMAR_DIR / "package.json").read_text())
    [language] = manifest["contributes"]["languages"]
    assert language["id"] == "pipe" and language["extensions"] == [".pipe"]
    config = json.loads((GRAMMAR_DIR / language["configuration"]).read_text())
    assert config["comments"]["lineComment"] == "#"
    [grammar] = manifest["contributes"]["grammars"]
    assert grammar["language"] == "pipe"
    assert (GRAMMAR_DIR / grammar["path"]).resolve() == TM.resolve()
    assert grammar["scopeName"] == json.loads(TM.read_text())["scopeName"]
    assert manifest["activationEvents"] == ["onLanguage:pipe"]
    assert "vscode-languageclient" in manifest["dependencies"] and "vscode" in manifest["engines"]
    command = manifest["contributes"]["configuration"]["properties"]["pipec.server.command"]["default"]
    assert command == ["pipec", "lsp"]
    # what the extension runs is a command pipec has (VS Code clients may add --stdio)
    assert build_parser().parse_args(command[1:] + ["--stdio"]).command == "lsp"
    main = GRAMMAR_DIR / manifest["main"]
    assert re.search(r'require\("vscode-languageclient/node"\)', main.read_text())
    assert 'get("server.command"' in main.read_text()


def test_the_extension_script_is_valid_javascript():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    done = subprocess.run([node, "--check", str(GRAMMAR_DIR / "extension.js")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_grammar_files_ship_in_the_package():
    text = (ROOT / "pyproject.toml").read_text()
    shipped = re.search(r'"pipec.grammar" = \[(.*?)\]', text).group(1)
    for name in ("*.lark", "*.tmLanguage.json", "package.json", "language-configuration.json", "extension.js"):
        assert f'"{name}"' in shipped, name
    assert all(Path(GRAMMAR_DIR / n).exists() for n in ("package.json", "language-configuration.json",
                                                          "extension.js", "pipe.tmLanguage.json"))
