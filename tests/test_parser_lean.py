"""The lean LALR loop (:mod:`pipec.dsl.lalr`) must give exactly what Lark's own loop gives:
the same AST (spans and comments included) for valid text, and for invalid text the
same diagnostics (it hands such text to Lark's loop). Compared on every example, on
generated programs, and on mutations of the examples."""

from __future__ import annotations

import random
import re

import pytest

from benchmarks.compile_speed import generate
from pipec.dsl import lalr
from pipec.dsl import parser as pipe_parser
from pipec.dsl.diagnostics import PipeSyntaxError
from pipec.dsl.lalr import Fallback
from pipec.dsl.source import SourceFile
from tests.conftest import EXAMPLES, ROOT

FILES = sorted(EXAMPLES.glob("*.pipe")) + sorted((ROOT / "benchmarks").glob("*.pipe"))


@pytest.fixture(autouse=True, params=["general", "written out"])
def reducers(request, monkeypatch):
    """Every test runs twice: with the general reducers (small texts) and with the ones
    written out per rule (texts of lalr.WRITE_OUT_AT characters or more)."""
    if request.param == "written out":
        monkeypatch.setattr(lalr, "WRITE_OUT_AT", 0)
    return request.param


def _outcome(text: str):
    """What parse gives for ``text``: the module, or the diagnostics it raised."""
    try:
        return pipe_parser.parse(SourceFile("t.pipe", text))
    except PipeSyntaxError as exc:
        return [(d.severity, d.message, d.span, d.hint, d.code) for d in exc.diagnostics]


def _lark_outcome(text: str, monkeypatch):
    def refuse():
        def parse(_text):
            raise Fallback
        return parse
    with monkeypatch.context() as m:
        m.setattr(pipe_parser, "_lean", refuse)
        return _outcome(text)


def _lean_takes(text: str) -> bool:
    """Does the lean loop parse ``text`` itself (no fallback)?"""
    pipe_parser._parsing.found, pipe_parser._parsing.text, pipe_parser._parsing.depth = [], text, {}
    try:
        pipe_parser._lean()(text)
    except Fallback:
        return False
    except Exception:  # a callback's own refusal: Lark's loop raises it too
        return True
    finally:
        pipe_parser._parsing.found, pipe_parser._parsing.depth = [], {}
    return True


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_the_lean_loop_parses_every_example_as_lark_does(path, monkeypatch):
    text = path.read_text()
    assert _lean_takes(text), "valid text must not fall back to Lark's loop"
    lean = _outcome(text)
    assert lean == _lark_outcome(text, monkeypatch)
    assert lean.comments == _lark_outcome(text, monkeypatch).comments


def test_the_lean_loop_parses_a_generated_pipeline_as_lark_does(monkeypatch):
    text = generate(600)  # more than WRITE_OUT_AT characters
    text = text.replace("    actor acc", "    # a comment\n    actor acc", 1)
    assert _lean_takes(text)
    assert _outcome(text) == _lark_outcome(text, monkeypatch)


def _mutations(text: str, rng: random.Random, count: int):
    tokens = [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]
    for _ in range(count):
        how = rng.randrange(5)
        if how == 0:
            yield text[:rng.randrange(len(text))]
        elif how == 1 and tokens:
            a, b = rng.choice(tokens)
            yield text[:a] + text[b:]
        elif how == 2:
            i = rng.randrange(len(text))
            yield text[:i] + rng.choice("(){}[]=,.+-*/%<>!#\"'x1 \n\t_é;:@") + text[i:]
        elif how == 3:
            lines = text.split("\n")
            i = rng.randrange(len(lines))
            yield "\n".join(lines[:i + 1] + lines[i:])
        else:  # a keyword bound as a name, or one in a place a name goes
            word = rng.choice(["retries", "timeout", "x", "with", "pool", "effectful", "stage", "map", "over"])
            i = rng.randrange(len(text))
            yield text[:i] + f" {word} = " + text[i:]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_mutated_examples_give_what_lark_gives(path, monkeypatch):
    text = path.read_text()
    rng = random.Random(path.stem)
    for mutated in _mutations(text, rng, 40):
        assert _outcome(mutated) == _lark_outcome(mutated, monkeypatch), mutated


def test_a_lark_whose_tables_the_loop_cannot_read_parses_with_lark_s_own_loop(monkeypatch):
    """A newer Lark that keeps its tables elsewhere must not break parsing: the lean loop
    is then not built, and every file is parsed, with the same result, by Lark's loop."""
    text = (EXAMPLES / "train.pipe").read_text(encoding="utf-8")
    expected = _outcome(text)

    def incompatible(*_args):
        raise AttributeError("'ParsingFrontend' object has no attribute 'lexer'")
    monkeypatch.setattr(pipe_parser, "driver", incompatible)
    pipe_parser._lean.cache_clear()
    try:
        assert pipe_parser._lean() is None
        assert _outcome(text) == expected
        assert _outcome("pipeline p() {\n    value x = \n}\n") == _lark_outcome("pipeline p() {\n    value x = \n}\n",
                                                                           monkeypatch)
    finally:
        pipe_parser._lean.cache_clear()
