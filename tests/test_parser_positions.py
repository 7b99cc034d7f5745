"""The parser builds the AST while Lark parses (no parse tree): its positions must be the
ones Lark's own tree would carry (``propagate_positions``), for every node kind."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import pytest
from lark import Lark, Token, Tree

from pipec.dsl import ast
from pipec.dsl import parser as pipe_parser
from pipec.dsl.source import Span
from pipec.grammar import grammar_text
from tests.conftest import EXAMPLES, ROOT

FILES = sorted(EXAMPLES.glob("*.pipe")) + sorted((ROOT / "benchmarks").glob("*.pipe"))


@pytest.fixture(scope="module")
def tree_parser() -> Lark:
    """Lark as it comes: a parse tree whose nodes carry their positions."""
    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True, postlex=pipe_parser._KeywordOrName())


def _tree_spans(tree: Tree) -> set[tuple[int, int]]:
    """(start, end) offset of every subtree and token."""
    out = set()
    for sub in tree.iter_subtrees():
        if not sub.meta.empty:
            out.add((sub.meta.start_pos, sub.meta.end_pos))
        out |= {(c.start_pos, c.end_pos) for c in sub.children if isinstance(c, Token)}
    return out


def _ast_spans(node) -> list[Span]:
    found = []
    if isinstance(node, Span):
        return [node]
    if isinstance(node, tuple):
        for item in node:
            found += _ast_spans(item)
    elif is_dataclass(node):
        for f in fields(node):
            found += _ast_spans(getattr(node, f.name))
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_ast_span_is_a_position_lark_gives(tree_parser, path):
    text = path.read_text()
    pipe_parser._parsing.text = text
    expected = _tree_spans(tree_parser.parse(text))
    module = pipe_parser.parse_text(text, str(path))
    spans = _ast_spans((module.uses, module.pipeline))
    assert spans
    wrong = [s for s in spans if (s.start, s.end) not in expected]
    assert not wrong, wrong[:5]
    # and each statement's span is exactly its subtree's, keyword and trailing options included
    statements = [t for t in tree_parser.parse(text).iter_subtrees_topdown() if t.data.endswith("_stmt")]
    starts = sorted((t.meta.start_pos, t.meta.end_pos, t.meta.line, t.meta.column) for t in statements)
    body = []
    stack = list(module.pipeline.body)
    while stack:
        stmt = stack.pop()
        body.append((stmt.span.start, stmt.span.end, stmt.span.line, stmt.span.column))
        if isinstance(stmt, (ast.Repeat, ast.When)):  # blocks: their statements too
            stack.extend(stmt.body)
    assert sorted(body) == starts
