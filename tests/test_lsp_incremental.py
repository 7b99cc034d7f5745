"""The language server's incremental parser gives exactly the tree (spans and comments
included) and exactly the syntax errors of a whole parse, edit after edit."""

from __future__ import annotations

import random

import pytest

from benchmarks.check_latency import thousand_lines
from pipec.dsl.diagnostics import PipeSyntaxError
from pipec.dsl.parser import parse
from pipec.dsl.source import SourceFile
from pipec.lsp.incremental import IncrementalParser
from tests.conftest import EXAMPLES


def _whole(text: str):
    try:
        return parse(SourceFile("p.pipe", text)), None
    except PipeSyntaxError as exc:
        return None, exc.render()


def _incremental(parser: IncrementalParser, text: str):
    try:
        return parser.parse(SourceFile("p.pipe", text)), None
    except PipeSyntaxError as exc:
        return None, exc.render()


def _edit(rng: random.Random, text: str, base: str, step: int) -> str:
    i = rng.randrange(len(text))
    start, end = text.rfind("\n", 0, i) + 1, text.find("\n", i) + 1 or len(text)
    kind = rng.choice(["insert", "delete", "new line", "copy line", "drop line", "reset"])
    if kind == "insert":
        return text[:i] + rng.choice(["a", " ", "=", "1", "(", ")", "{", "}", "\n", "#", '"', "x ", "."]) + text[i:]
    if kind == "delete":
        return text[:i] + text[i + 1:]
    if kind == "new line":
        return text[:start] + f"    value extra_{step} = 1  # note\n" + text[start:]
    if kind == "copy line":
        return text[:start] + text[start:end].replace("=", "= 1 +", 1) + text[start:]
    if kind == "drop line":
        return text[:start] + text[end:]
    return base


SOURCES = sorted(EXAMPLES.glob("*.pipe"))


@pytest.mark.parametrize("name", [p.name for p in SOURCES] + ["thousand_lines"])
def test_random_edits_parse_as_a_whole_parse_does(name):
    base = thousand_lines() if name == "thousand_lines" else (EXAMPLES / name).read_text()
    rng = random.Random(name)
    parser = IncrementalParser()
    text, used = base, 0
    # Fewer edits of the 1,000-line file: each whole parse to compare with costs 0.3 s,
    # and the small files already draw every kind of edit 60 times over.
    for step in range(24 if name == "thousand_lines" else 60):
        text = _edit(rng, text, base, step)
        parser.reused = 0
        assert _incremental(parser, text) == _whole(text), f"step {step}"
        used += parser.reused > 0
    assert used > 10  # the incremental path was taken, not only the fallback


def test_an_edit_parses_only_the_statement_it_changed():
    text = thousand_lines()
    parser = IncrementalParser()
    parser.parse(SourceFile("p.pipe", text))
    edited = text.replace("retries 2", "retries 3", 1)
    module = parser.parse(SourceFile("p.pipe", edited))
    statements = len(parse(SourceFile("p.pipe", text)).pipeline.body)
    assert (parser.parsed, parser.reused) == (1, statements - 1)
    assert module == parse(SourceFile("p.pipe", edited))
    # a new line above everything moves every statement: still parsed once, shifted
    moved = edited.replace("    source lines", "    # a new comment\n    source lines", 1)
    assert parser.parse(SourceFile("p.pipe", moved)) == parse(SourceFile("p.pipe", moved))
    assert parser.parsed == 0


def test_a_syntax_error_is_reported_as_the_cli_reports_it():
    text = (EXAMPLES / "train.pipe").read_text()
    parser = IncrementalParser()
    parser.parse(SourceFile("p.pipe", text))
    broken = text.replace("value total = reduce lr.add over grads", "value total = reduce lr.add over grads)")
    assert _incremental(parser, broken) == _whole(broken)
    assert _incremental(parser, broken)[1].startswith("p.pipe:19:47: error: unexpected `)`")
    # and once fixed, the chunks kept from before are used again
    parser.reused = 0
    assert _incremental(parser, text) == _whole(text) and parser.reused > 0


@pytest.mark.parametrize("text", [
    "pipeline p() { value v = 1 }\n",
    "pipeline p() {\n    value v = 1 }  # the end\n# after\n",
    "# only a comment before\nuse a.b as c\npipeline p(n: int = 1) { value v = n\n    sink s = v\n}\n",
    "pipeline p() {\n    value v = 1\n}\npipeline q() {\n}\n",
    "pipeline p() {\n    stage s = map m.f over\n        xs\n    sink t = s\n}\n",
    "pipeline p() {\n    actor a = m.A()\n    x (2)\n}\n",
    "pipeline p() {\n    value v = 1\n",
])
def test_odd_layouts(text):
    parser = IncrementalParser()
    _incremental(parser, "pipeline p() {\n    value v = 1\n    sink s = v\n}\n")
    assert _incremental(parser, text) == _whole(text)
    assert _incremental(parser, text) == _whole(text)
