"""Fuzz tests: whatever the input, pipec reports it with its own errors and real positions.

Two generators feed the same property. (a) Programs built from the language's
constructs, right and wrong names mixed, so the checker's every path is walked; (b)
mutations of the example files (truncation, byte flips, deleted tokens, duplicated
lines, inserted characters), so the parser sees text no one would write on purpose.

The property: ``load_source`` + ``check()`` either succeed or raise a
:class:`pipec.dsl.diagnostics.PipecError`; every diagnostic with a span points inside the
file (1 <= line <= number of lines, column >= 1) and renders. The formatter, if it
exists yet, obeys the same rule.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipec.api import load_source
from pipec.dsl.diagnostics import CompileError, Diagnostic, PipecError
from pipec.dsl.source import SourceFile

try:
    from pipec.dsl.format import format_source
except ImportError:  # written by someone else; not there yet
    format_source = None

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.pipe"))

# A fixed, database-less profile: the same examples on every run, so CI is repeatable.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# The module the generated programs use, written next to them (see `fuzz_dir`).
FUZZ_MODULE = '''
"""Functions and classes for generated pipelines; importing it is a test failure."""
raise RuntimeError("pipec imported user code during check")

def one(x):
    return x

def two(a, b):
    return a + b

def pair(x):
    return (x, 1)

def many(*args, **kwargs):
    return args

def source(n, seed=0):
    return range(n)

def sharded(partition, partitions, n=10):
    return range(partition, n, partitions)

def with_weights(x, weights):
    return x

class Actor:
    def __init__(self, size=1, rate=0.1):
        self.size = size

    def get(self):
        return self.size

    def put(self, value):
        self.size = value

    def predict(self, batch):
        return batch

    def done(self):
        return True

class Hidden(Unknown):
    def known(self):
        return 1
'''


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "fz.py").write_text(FUZZ_MODULE, encoding="utf-8")
    return folder


# ---- the property -------------------------------------------------------------------------


def _check_span(diag: Diagnostic, source: SourceFile) -> None:
    lines = source.text.count("\n") + 1
    if diag.span is not None:
        assert 1 <= diag.span.line <= lines, (diag, lines)
        assert diag.span.column >= 1, diag
    diag.render(source)


def assert_only_pipec_errors(source: SourceFile) -> None:
    """Load and check ``source``: success or a PipecError, with spans inside the file."""
    try:
        pipeline = load_source(source)
        for diag in pipeline.diagnostics:
            _check_span(diag, source)
        pipeline.check()
        pipeline.params({})
    except CompileError as exc:
        assert exc.diagnostics, "a CompileError without a diagnostic"
        for diag in exc.diagnostics:
            _check_span(diag, source)
        exc.render()
    except PipecError as exc:
        str(exc)
    if format_source is not None:
        try:
            format_source(source)
        except PipecError:
            pass


# ---- (a) programs built from the language's constructs ------------------------------------

NAMES = ["xs", "ys", "zs", "pairs", "total", "v", "w", "a", "pool", "i", "n", "rate", "s", "flag",
         "xss", "undefined", "map", "stage"]
FUNCTIONS = ["fz.one", "fz.two", "fz.pair", "fz.many", "fz.with_weights", "fz.nope", "fz", "nosuch.f",
             "fz.Actor", "examples.text.words", "examples.text.add", "one", "fz.one.two"]
METHODS = ["get", "put", "predict", "done", "nope", "__init__"]

ident = st.sampled_from(NAMES)
func = st.sampled_from(FUNCTIONS)


def literal():
    return st.one_of(
        st.integers(-3, 12).map(str),
        st.sampled_from(["0", "1_000", "2.5", "1e3", "0.0", "99999999999999999999", "1e400"]),
        st.text(string.ascii_letters + ' \\"n', max_size=6).map(lambda s: '"' + s.replace("\\", "\\\\")
                                                                 .replace('"', '\\"') + '"'),
        st.sampled_from(["true", "false", "none", '"2GB"', "'x'"]),
    )


def _atom(text: str) -> str:
    """``text`` where the grammar wants an atom: parenthesised unless it is one token."""
    return text if text.replace(".", "").replace("_", "").isalnum() else f"({text})"


def expression(depth: int = 3):
    leaf = st.one_of(literal(), ident)
    if depth <= 0:
        return leaf
    sub = st.deferred(lambda: expression(depth - 1))
    operand = sub.map(_atom)
    kinds = st.sampled_from(["map", "flat_map", "filter", "map_batches", "map_values"])
    binding = st.tuples(st.sampled_from(["weights", "k", "partition", "server"]), sub).map(
        lambda kv: f"{kv[0]} = {kv[1]}")
    return st.one_of(
        leaf,
        st.tuples(operand, st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "==", "<", "and", "or"]), operand)
        .map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(st.sampled_from(["-", "not ", "+"]), operand).map(lambda t: t[0] + t[1]),
        sub.map(lambda e: f"({e})"),
        st.lists(sub, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.tuples(kinds, st.one_of(func, ident.map(lambda n: n + "." + "predict")), operand,
                  st.lists(binding, max_size=2))
        .map(lambda t: f"{t[0]} {t[1]} over {t[2]}" + (" with " + ", ".join(t[3]) if t[3] else "")),
        st.tuples(st.sampled_from(["reduce", "reduce_by_key"]), func, operand)
        .map(lambda t: f"{t[0]} {t[1]} over {t[2]}"),
        operand.map(lambda e: f"group_by_key over {e}"),
        st.tuples(st.sampled_from(["join", "union", "distinct", "collect", "count", "top", "range", "zip",
                                   "collect_map", "take", "sort_by", "sample", "zip_with_index"]),
                  st.lists(sub, max_size=3))
        .map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(sub, sub).map(lambda t: f"top({t[0]}, {t[1]}, by = fz.one)"),
        st.tuples(sub, st.sampled_from(["fz.one", "fz.pair", "3", "xs"])).map(lambda t: f"sort_by({t[0]}, by = {t[1]})"),
        st.tuples(sub, sub, sub).map(lambda t: f"sample({t[0]}, {t[1]}, seed = {t[2]})"),
        st.tuples(st.one_of(func, st.tuples(ident, st.sampled_from(METHODS)).map(".".join)),
                  st.lists(sub, max_size=2), st.lists(st.tuples(ident, sub), max_size=2))
        .map(lambda t: f"{t[0]}(" + ", ".join([*t[1], *(f'{k} = {v}' for k, v in t[2])]) + ")"),
    )


def stage_options():
    option = st.one_of(
        st.integers(0, 5).map(lambda n: f"retries {n}"),
        st.sampled_from(["timeout 2.5", "timeout 0", "effectful"]),
        st.lists(st.tuples(st.sampled_from(["cpus", "gpus", "memory", "cpu"]), literal()), max_size=3)
        .map(lambda rs: "resources { " + " ".join(f"{k} {v}" for k, v in rs) + " }"),
    )
    return st.lists(option, max_size=2).map(" ".join)


def statement(depth: int = 2):
    expr = expression(2)
    simple = st.one_of(
        st.tuples(ident, st.sampled_from(["range(n)", "range(10)", 'read_text("f.txt")', "read_jsonl(3)",
                                          "fz.source(10)", "fz.sharded(n = 10)", "fz.nope()", "mystery(1)"]),
                  st.sampled_from(["", "sharded "]), st.sampled_from(["4", "n", "0", "rate", "2.5"]), stage_options())
        .map(lambda t: f"source {t[0]} = {t[1]} {t[2]}partitions {t[3]} {t[4]}"),
        st.tuples(ident, expr, stage_options()).map(lambda t: f"stage {t[0]} = {t[1]} {t[2]}"),
        st.tuples(ident, expr).map(lambda t: f"value {t[0]} = {t[1]}"),
        st.tuples(ident, expr).map(lambda t: f"var {t[0]} = {t[1]}"),
        st.tuples(ident, expr).map(lambda t: f"{t[0]} = {t[1]}"),
        st.tuples(st.sampled_from(["", "pool "]), ident, st.sampled_from(["fz.Actor", "fz.Hidden", "fz.one"]),
                  st.sampled_from(["", "size = 2", "rate = rate", "bogus = 1"]), st.sampled_from(["", " x 2", " x 0"]),
                  st.sampled_from(["", "{ restarts 2 }", "{ checkpoint every 5 calls idempotent get }",
                                   "{ checkpoint every 0 calls restarts 1 restarts 2 }", "{ idempotent nope }"]))
        .map(lambda t: f"actor {t[0]}{t[1]} = {t[2]}({t[3]}){t[4]} {t[5]}"),
        st.tuples(ident, st.sampled_from(METHODS), st.lists(expr, max_size=2))
        .map(lambda t: f"{t[0]}.{t[1]}({', '.join(t[2])})"),
        st.tuples(ident, expr, st.sampled_from(["", ' -> json("out/x.json")', ' -> jsonl("o")', " -> csv(1)",
                                                 " -> text(s)"]))
        .map(lambda t: f"sink {t[0]} = {t[1]}{t[2]}"),
        stage_options().map(lambda o: f"defaults {{ {o} }}"),
    )
    if depth <= 0:
        return simple
    body = st.lists(st.deferred(lambda: statement(depth - 1)), max_size=4)
    repeat = st.tuples(st.sampled_from(["3", "n", "rate", "2.5", "s", "-1"]),
                       st.sampled_from(["", " as i", " as n"]),
                       st.sampled_from(["", " until v", " until flag", " until a.done()", " until v < 3", " until 5"]),
                       body).map(lambda t: f"repeat {t[0]}{t[1]}{t[2]} {{\n" + "\n".join(t[3]) + "\n}")
    return st.one_of(simple, repeat)


# Definitions most programs start with, so that later statements get past name lookup.
PRELUDE = ["source xs = range(10) partitions 2", "stage pairs = map fz.pair over xs", "actor a = fz.Actor()",
           "actor pool pool = fz.Actor() x 2", "var v = 0", "value total = count(xs)"]


@st.composite
def programs(draw):
    uses = draw(st.lists(st.sampled_from(["use fz as m", "use examples.text as t", "use nosuch as q",
                                          "use fz as fz2", "use examples.model as fz"]), max_size=2))
    params = draw(st.lists(st.sampled_from(["n: int = 3", "rate: float = 0.5", 's: str = "x"', "flag: bool = true",
                                            "k: list", "n: int = 2.5", "m: float"]),
                           max_size=3, unique=draw(st.booleans())))
    prelude = draw(st.lists(st.sampled_from(PRELUDE), unique=True, max_size=len(PRELUDE)))
    body = draw(st.lists(statement(), max_size=8))
    return "\n".join([*uses, f"pipeline fuzz({', '.join(params)}) {{", *prelude, *body, "}", ""])


@FUZZ
@given(text=programs())
def test_generated_programs_raise_only_pipec_errors(fuzz_dir, text):
    assert_only_pipec_errors(SourceFile(str(fuzz_dir / "fuzz.pipe"), text))


# ---- (b) mutations of the example files ---------------------------------------------------

NOISE = list("{}()[]=,.:\"'#\n -+*/<>!@$%^&|~`\\\t\r0123456789az_") + [
    "\x00", "\x0c", "\u00e9", "\u2028", "\x85", "\U0001F600", "\ufeff"]


@st.composite
def mutated_examples(draw):
    path = draw(st.sampled_from(EXAMPLES))
    text = path.read_text(encoding="utf-8")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "delete", "duplicate", "insert"]))
        if kind == "truncate":
            text = text[:draw(st.integers(0, len(text)))]
        elif kind == "flip":
            data = bytearray(text.encode("utf-8"))
            if data:
                for _ in range(draw(st.integers(1, 4))):
                    data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            text = data.decode("utf-8", errors="replace")
        elif kind == "delete":
            tokens = text.split(" ")
            for _ in range(draw(st.integers(1, 3))):
                if tokens:
                    del tokens[draw(st.integers(0, len(tokens) - 1))]
            text = " ".join(tokens)
        elif kind == "duplicate":
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        else:
            i = draw(st.integers(0, len(text)))
            text = text[:i] + "".join(draw(st.lists(st.sampled_from(NOISE), min_size=1, max_size=6))) + text[i:]
    return path, text


@FUZZ
@given(case=mutated_examples())
def test_mutated_examples_raise_only_pipec_errors(case):
    path, text = case
    assert_only_pipec_errors(SourceFile(str(path), text))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_checks_clean(path):
    """The mutation test is only meaningful if the unmutated files pass."""
    pipeline = load_source(SourceFile(str(path), path.read_text(encoding="utf-8")))
    assert not [d for d in pipeline.check() if d.is_error]
