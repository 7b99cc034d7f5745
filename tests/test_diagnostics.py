"""Bad input, and what pipec says about it.

Each case is a small `.pipe` file (plus the Python modules it names) and the one
diagnostic it must produce: error class, exact line and column, the key words of the
message and of the hint. Then: several errors reported in one run, parameters given
through the API and the command line, the command line's exit codes for files that are
missing, not UTF-8, huge, or nested without end, and usage errors. Bad input never shows
a Python traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from pipec import cli
from pipec import load
from pipec.dsl.diagnostics import CompileError, Diagnostic, PipeSyntaxError, SemanticError
from pipec.dsl.source import SourceFile

from tests.conftest import ROOT

# The module most cases use. `check` reads it as source and never imports it.
M = '''
def f(x, k=1):
    return x

def add(a, b):
    return a + b

def pair(x):
    return (x, 1)

def source(n):
    return range(n)

class Decorated:
    @staticmethod
    def make(seed):
        return seed

    @some.decorator
    def anything(self):
        return 1

class Server:
    def __init__(self, size=1):
        self.size = size

    def weights(self):
        return self.size

    def apply(self, total):
        self.size = total

    def done(self):
        return True
'''

# Importing this module fails, and leaves a trace if it ever happens.
BOOM = '''
import pathlib
pathlib.Path(__file__).with_name("boom-was-imported").write_text("yes")
raise RuntimeError("boom: imported during check")

class Model:
    def predict(self, batch):
        return batch
'''

HEAD = "use m as m\npipeline p(epochs: int = 3, name: str = \"x\") {\n"


@dataclass
class Case:
    id: str
    text: str  # the whole file, or the pipeline body (then HEAD is put before it)
    error: type
    line: int
    column: int
    message: str
    hint: str | None = None
    modules: dict[str, str] = field(default_factory=dict)
    whole: bool = False  # `text` is the whole file


def body(text: str) -> str:
    return HEAD + text + "}\n"


CASES = [
    # ---- syntax ------------------------------------------------------------------------
    Case("missing_over", "    source xs = range(10) partitions 2\n    stage ys = map m.f xs\n",
         PipeSyntaxError, 4, 24, "unexpected `xs`; expected `over`"),
    Case("missing_close_brace", HEAD + "    source xs = range(10) partitions 2\n    sink s = collect(xs)\n",
         PipeSyntaxError, 4, 25, "unexpected end of file", "the `{` at line 2, column 46 is never closed",
         whole=True),
    Case("missing_close_paren", "    source xs = range(10) partitions 2\n    sink s = collect(xs\n",
         PipeSyntaxError, 5, 1, "unexpected `}`", None),
    Case("unterminated_string", '    source xs = read_text("data.txt) partitions 2\n',
         PipeSyntaxError, 3, 27, "unterminated string", 'close the string with "'),
    Case("stray_character", "    source xs = range(10) partitions 2 @\n",
         PipeSyntaxError, 3, 40, "unexpected character `@`"),
    Case("assign_instead_of_compare",
         "    var v = 0\n    repeat epochs until v = 3 {\n        v = v + 1\n    }\n    sink s = v\n",
         PipeSyntaxError, 4, 27, "unexpected `=`", "use `==` to compare"),
    Case("positional_after_keyword", "    value v = m.f(k = 1, 2)\n",
         PipeSyntaxError, 3, 26, "a positional argument after a keyword argument", "put it before `k = ...`"),
    Case("keyword_without_name", "    stage = map m.f over xs\n",
         PipeSyntaxError, 3, 11, "unexpected `=`; expected a name", "give it a name (`stage n = ...`)"),
    Case("rebind_of_a_var_named_like_a_statement", "    value = 2\n",
         PipeSyntaxError, 3, 11, "unexpected `=`; expected a name", "give the var a name other than `value`"),
    Case("keyword_as_reference", "    source xs = range(10) partitions 2\n    sink s = collect(map)\n",
         PipeSyntaxError, 4, 25, "expected a name", "`map` is a keyword, not a name"),
    Case("keyword_read_as_name", "    value v = repeat 3 { }\n",
         PipeSyntaxError, 3, 22, "unexpected `3`", "`repeat` was read as a name here"),
    Case("statement_that_is_no_statement", "    source xs = range(10) partitions 2\n    42\n",
         PipeSyntaxError, 4, 5, "unexpected `42`", "a statement starts with `source`"),
    Case("empty_file", "", PipeSyntaxError, 1, 1, "the file is empty", "one `pipeline name(...) { ... }`",
         whole=True),
    Case("only_comments", "# a pipeline\n# comes later\n", PipeSyntaxError, 2, 14,
         "the file holds only comments", "one `pipeline name(...) { ... }`", whole=True),
    Case("garbage_control_bytes", "\x00\x01\x02 pipeline", PipeSyntaxError, 1, 1, "unexpected character `\\x00`",
         whole=True),
    Case("no_pipeline_keyword", "use m as m\np() {}\n", PipeSyntaxError, 2, 1, "unexpected `p`", whole=True),
    Case("integer_literal_too_long", "    value v = 1" + "0" * 5000 + "\n",
         PipeSyntaxError, 3, 15, "integer literal is too long (5001 digits)"),
    Case("nested_too_deeply", "    value v = " + "(" * 300 + "1" + ")" * 300 + "\n",
         PipeSyntaxError, 3, 114, "nested too deeply (more than 200 levels)", "split the expression"),

    # ---- names and definitions ---------------------------------------------------------
    Case("undefined_name", "    source xs = range(10) partitions 2\n    stage ys = map m.f over xss\n",
         SemanticError, 4, 29, "undefined name `xss`", "did you mean `xs`?"),
    Case("undefined_short_name_one_letter_off",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f over xz\n",
         SemanticError, 4, 29, "undefined name `xz`", "did you mean `xs`?"),
    Case("duplicate_definition",
         "    source xs = range(10) partitions 2\n    stage xs = map m.f over xs\n",
         SemanticError, 4, 11, "`xs` is already defined", "the first definition is at line 3"),
    Case("duplicate_parameter", "use m as m\npipeline p(n: int = 1, n: int = 2) {\n}\n",
         SemanticError, 2, 24, "parameter `n` is declared twice", "line 2, column 12", whole=True),
    Case("keyword_as_definition",
         "    source xs = range(10) partitions 2\n    stage map = map m.f over xs\n    sink s = collect(xs)\n",
         SemanticError, 4, 11, "`map` is a keyword and cannot be a name", "`map_`"),
    Case("use_before_definition",
         "    source xs = range(10) partitions 2\n    stage a = map m.f over b\n    stage b = map m.f over xs\n",
         SemanticError, 4, 28, "`b` is used before it is defined", "it is defined at line 5"),
    Case("cycle",
         "    source xs = range(10) partitions 2\n    stage a = map m.f over b\n    stage b = map m.f over a\n",
         SemanticError, 4, 28, "cycle: `b` depends on itself", "break the cycle with a `var`"),
    Case("not_visible_after_repeat",
         "    repeat 2 {\n        value t = 1\n    }\n    sink s = t\n",
         SemanticError, 6, 14, "`t` is not visible here", "declare a `var` before the loop"),
    Case("unknown_parameter_type", "use m as m\npipeline p(n: integer = 1) {\n}\n",
         SemanticError, 2, 15, "unknown parameter type `integer`", "did you mean `int`?", whole=True),
    Case("parameter_default_of_wrong_type", "use m as m\npipeline p(n: int = \"ten\") {\n}\n",
         SemanticError, 2, 21, "default 'ten' is not an int", whole=True),

    # ---- collections and values --------------------------------------------------------
    Case("value_where_collection_needed",
         "    source xs = range(10) partitions 2\n    value total = count(xs)\n    stage ys = map m.f over total\n",
         SemanticError, 5, 29, "expected a collection, found a value", "`map` needs a collection"),
    Case("collection_where_value_needed",
         "    source xs = range(10) partitions 2\n    value v = map m.f over xs\n",
         SemanticError, 4, 15, "expected a value, found a collection", "use `stage v = ...`"),
    Case("collection_as_broadcast",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f over xs with k = xs\n",
         SemanticError, 4, 41, "expected a value, found a collection", "cannot be broadcast"),
    Case("stage_only_renames", "    source xs = range(10) partitions 2\n    stage ys = xs\n",
         SemanticError, 4, 16, "stage `ys` only renames another collection", "must apply an operation"),
    Case("join_not_keyed",
         "    source xs = range(10) partitions 2\n    stage j = join(xs, xs)\n",
         SemanticError, 4, 20, "the first input of `join` is not keyed", "(key, value) records"),
    Case("reduce_by_key_not_keyed",
         "    source xs = range(10) partitions 2\n    stage r = reduce_by_key m.add over xs\n",
         SemanticError, 4, 40, "`reduce_by_key` needs (key, value) records", "m.to_pair"),
    Case("constant_too_large", "    value v = 10 ** 10 ** 6\n",
         SemanticError, 3, 15, "cannot compute `**` here: the result would have more than 3000 digits"),
    Case("constant_division_by_zero", "    value v = 1 / 0\n",
         SemanticError, 3, 15, "cannot compute `/` here: division by zero"),
    Case("source_path_not_a_string", "    source xs = read_text(3) partitions 2\n",
         SemanticError, 3, 27, "expected a str, got an int"),
    Case("function_needs_more_arguments",
         "    source xs = range(10) partitions 2\n    stage ys = map m.add over xs\n",
         SemanticError, 4, 20, "`add` is called with 1 argument and needs `b` too", "`with b = ...`"),
    Case("call_missing_an_argument", "    value v = m.add(1)\n",
         SemanticError, 3, 15, "`add` needs argument `b`", "pass it as `b = ...`"),
    Case("statement_call_not_an_actor", "    m.f(1)\n",
         SemanticError, 3, 5, "only an actor call can stand alone", "give the result a name"),

    # ---- actors ------------------------------------------------------------------------
    Case("method_on_a_value",
         "    source xs = range(10) partitions 2\n    value t = count(xs)\n    value u = t.weights()\n",
         SemanticError, 5, 15, "`t` is a value, not an actor; it has no methods", "actor name = Class(...)"),
    Case("actor_method_missing", "    actor ps = m.Server()\n    value w = ps.weight()\n",
         SemanticError, 4, 15, "actor class `Server` has no method `weight`", "did you mean `weights`?"),
    Case("actor_constructor_keyword", "    actor ps = m.Server(sise = 2)\n",
         SemanticError, 3, 25, "`Server` has no parameter `sise`", "did you mean `size`?"),
    Case("pool_at_graph_level", "    actor pool ps = m.Server() x 2\n    value w = ps.weights()\n",
         SemanticError, 4, 15, "`ps` is an actor pool; its members serve stages", "map_batches ps.weights"),
    Case("single_actor_serving_a_stage",
         "    source xs = range(10) partitions 2\n    actor ps = m.Server()\n"
         "    stage ys = map_batches ps.weights over xs\n",
         SemanticError, 5, 28, "`ps` is a single actor; a stage is served by an actor pool", "actor pool ps"),
    Case("pool_as_handle",
         "    source xs = range(10) partitions 2\n    actor pool ps = m.Server() x 2\n"
         "    stage ys = map m.f over xs with k = ps\n",
         SemanticError, 5, 41, "an actor pool cannot be passed as a handle", "pass a single actor"),
    Case("pool_size_zero", "    actor pool ps = m.Server() x 0\n",
         SemanticError, 3, 34, "the pool size needs a positive integer, not 0"),

    # ---- dotted paths ------------------------------------------------------------------
    Case("alias_used_alone", "    source xs = range(10) partitions 2\n    stage ys = map m over xs\n",
         SemanticError, 4, 20, "`m` is a module alias; name a function in it", "e.g. `m.name`"),
    Case("unknown_module", "    source xs = range(10) partitions 2\n    stage ys = map nosuch.f over xs\n",
         SemanticError, 4, 20, "cannot find module `nosuch`", "looked for nosuch.py"),
    Case("unknown_function", "    source xs = range(10) partitions 2\n    stage ys = map m.ff over xs\n",
         SemanticError, 4, 20, "module `m` has no function `ff`", "did you mean `f`?"),
    Case("unknown_module_close_to_an_alias",
         "    source xs = range(10) partitions 2\n    stage ys = map mm.f over xs\n",
         SemanticError, 4, 20, "cannot find module `mm`", "did you mean `m`?"),
    Case("function_used_as_module",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f.g over xs\n",
         SemanticError, 4, 20, "cannot find module `m.f`", "`f` is defined in module `m`; it is not a module"),
    Case("function_without_its_module",
         "    source xs = range(10) partitions 2\n    stage ys = map f over xs\n",
         SemanticError, 4, 20, "`f` is not a function", "did you mean `m.f`?"),
    Case("module_with_python_syntax_error", "use broken as b\npipeline p() {\n}\n",
         SemanticError, 1, 5, "module `broken` has a Python syntax error", "broken.py:1",
         modules={"broken": "def f(:\n    pass\n"}, whole=True),
    Case("unknown_source", "    source xs = rnge(10) partitions 2\n",
         SemanticError, 3, 17, "unknown source `rnge`", "did you mean `range`?"),

    # ---- loops and rebinding -----------------------------------------------------------
    Case("repeat_float_count", "    repeat 2.5 {\n    }\n",
         SemanticError, 3, 12, "`repeat` needs a non-negative integer count, not 2.5"),
    Case("repeat_str_parameter", "    repeat name {\n    }\n",
         SemanticError, 3, 12, "`repeat` needs an integer count, and this is a str", "declare the parameter as `int`"),
    Case("rebind_not_a_var", "    value v = 1\n    repeat 2 {\n        v = v + 1\n    }\n",
         SemanticError, 5, 9, "`v` is a value, not a `var`, and cannot be rebound", "var v = ..."),
    Case("var_named_like_a_statement", "    var value = 1\n    sink s = value\n",
         SemanticError, 3, 9, "a var cannot be called `value`", "`value_`"),
    Case("rebind_outside_loop", "    var v = 1\n    v = 2\n",
         SemanticError, 4, 5, "`v` is rebound outside a `repeat`"),
    Case("until_not_boolean", "    var v = 0\n    repeat 3 until 5 {\n        v = v + 1\n    }\n    sink s = v\n",
         SemanticError, 4, 20, "`until` needs a boolean, and this is an int", "compare it"),
    Case("sink_inside_repeat",
         "    source xs = range(10) partitions 2\n    repeat 2 {\n        sink s = collect(xs)\n    }\n",
         SemanticError, 5, 9, "a sink inside `repeat` writes a file each round, and this one has no file",
         "declare a `var` before the loop"),
    Case("round_sink_path_without_index",
         '    source xs = range(10) partitions 2\n    repeat 2 as i {\n        sink s = collect(xs) -> json("s.json")\n'
         '    }\n', SemanticError, 5, 38, "its path does not name the round", "e.g. `{i}`"),
    Case("round_sink_loop_without_index",
         '    source xs = range(10) partitions 2\n    repeat 2 {\n        sink s = collect(xs) -> json("s.json")\n'
         '    }\n', SemanticError, 5, 38, "its path does not name the round", "`repeat ... as i` (line 4)"),
    Case("path_field_names_nothing",
         '    source xs = range(10) partitions 2\n    repeat 2 as i {\n        sink s = collect(xs) -> json("s-{j}.json")\n'
         '    }\n', SemanticError, 5, 41, "`{j}` in the sink path names nothing", "a round index"),
    Case("path_field_unclosed",
         '    source xs = range(10) partitions 2\n    sink s = collect(xs) -> json("s-{i.json")\n',
         SemanticError, 4, 37, "an unclosed `{` in the sink path", "write `{{`"),
    Case("round_dataset_sink_path",
         '    source xs = range(10) partitions 2\n    repeat 2 as i {\n        sink s = xs -> parquet("s")\n'
         '    }\n', SemanticError, 5, 32, "a sink inside `repeat` writes a file per round, and its path does not "
         "name the round", "e.g. `{i}`"),
    Case("each_on_single_actor",
         "    actor ps = m.Server()\n    ps.each.weights()\n", SemanticError, 4, 5,
         "`ps` is a single actor; `.each.` calls every member of a pool", "declare `actor pool ps"),
    Case("when_outside_loop",
         "    source xs = range(10) partitions 2\n    when true {\n        value c = count(xs)\n    }\n",
         SemanticError, 4, 5, "`when` runs its body in some rounds of a loop; here there is no loop",
         "put it inside `repeat`"),
    Case("when_not_boolean",
         "    source xs = range(10) partitions 2\n    repeat 2 as i {\n        when i + 1 {\n"
         '            sink s = collect(xs) -> json("s-{i}.json")\n        }\n    }\n',
         SemanticError, 5, 14, "`when` needs a boolean, and this is an int", "compare it"),
    Case("rebind_in_when_and_in_the_loop",
         "    var v = 0\n    repeat 2 as i {\n        when i == 0 {\n            v = v + 1\n        }\n        v = v * 2\n"
         "    }\n    sink s = v\n", SemanticError, 8, 9, "`v` is rebound twice in one round (first at line 6)",
         "rebind it once"),
    Case("rebind_in_two_whens",
         "    var v = 0\n    repeat 2 as i {\n        when i == 0 {\n            v = v + 1\n        }\n"
         "        when i > 0 {\n            v = 2\n        }\n    }\n    sink s = v\n", SemanticError, 9, 13,
         "`v` is rebound twice in one round (first at line 6)", "rebind it once"),
    Case("rebind_in_when_of_a_var_declared_in_the_loop",
         "    repeat 2 as i {\n        var v = i\n        when i == 0 {\n            v = v + 1\n        }\n"
         '        sink s = v -> json("s-{i}.json")\n    }\n', SemanticError, 6, 13,
         "`v` is rebound in the block that declares it", "declare the var before the `repeat`"),

    # ---- options -----------------------------------------------------------------------
    Case("duplicate_option",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f over xs retries 2 retries 3\n",
         SemanticError, 4, 42, "`retries` is given twice", "first at line 4"),
    Case("unknown_resource",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f over xs resources { cpu 1 }\n",
         SemanticError, 4, 44, "unknown resource `cpu`", "did you mean `cpus`?"),
    Case("bad_memory",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f over xs resources { memory \"lots\" }\n",
         SemanticError, 4, 51, "cannot read memory size \"lots\"", "\"512MiB\""),
    Case("memory_with_long_blanks",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f over xs resources { memory \"1"
         + " " * 100_000 + "x\" }\n",
         SemanticError, 4, 51, "cannot read memory size \"1" + " " * 35 + "..."),
    Case("infinite_memory",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f over xs resources { memory 1e999 }\n",
         SemanticError, 4, 51, "cannot read memory size 1e999"),
    Case("partitions_zero", "    source xs = range(10) partitions 0\n",
         SemanticError, 3, 38, "`partitions` needs a positive integer, not 0"),
    Case("partitions_parameter_default_zero",
         "use m as m\npipeline p(k: int = 0) {\n    source xs = range(10) partitions k\n}\n",
         SemanticError, 3, 38, "`partitions` needs at least 1, and the default of `k` is 0", "line 2",
         whole=True),
    Case("timeout_zero",
         "    source xs = range(10) partitions 2\n    stage ys = map m.f over xs timeout 0\n",
         SemanticError, 4, 40, "`timeout` needs a positive number of seconds"),
    Case("unknown_sink_format",
         "    source xs = range(10) partitions 2\n    sink s = collect(xs) -> jsn(\"out.json\")\n",
         SemanticError, 4, 29, "unknown sink format `jsn`", "did you mean `json`?"),
    # ---- ordering, sampling and indexing ---------------------------------------------------
    Case("collect_map_of_unkeyed",
         "    source xs = range(10) partitions 2\n    value d = collect_map(xs)\n",
         SemanticError, 4, 27, "`collect_map` needs (key, value) records", "make pairs first"),
    Case("sample_fraction_above_one",
         "    source xs = range(10) partitions 2\n    stage s = sample(xs, 1.5, seed = 1)\n",
         SemanticError, 4, 26, "`sample` keeps a fraction between 0 and 1, not 1.5", "one item in ten"),
    Case("sample_seed_not_an_int",
         "    source xs = range(10) partitions 2\n    stage s = sample(xs, 0.5, seed = name)\n",
         SemanticError, 4, 38, "expected an int, got a str"),
    Case("take_negative",
         "    source xs = range(10) partitions 2\n    value t = take(xs, -1)\n",
         SemanticError, 4, 24, "`take`'s count needs at least 0, not -1"),
    Case("take_of_a_value",
         "    value t = take(epochs, 2)\n",
         SemanticError, 3, 20, "expected a collection, found a value", "`take` needs a collection"),
    Case("sort_by_a_literal",
         "    source xs = range(10) partitions 2\n    stage s = sort_by(xs, by = 3)\n",
         SemanticError, 4, 32, "`by` takes a function"),
    Case("sort_by_unknown_keyword",
         "    source xs = range(10) partitions 2\n    stage s = sort_by(xs, key = m.f)\n",
         SemanticError, 4, 27, "`sort_by` has no keyword `key`"),
    Case("zip_with_index_two_arguments",
         "    source xs = range(10) partitions 2\n    stage z = zip_with_index(xs, xs)\n",
         SemanticError, 4, 15, "`zip_with_index` takes 1 argument, got 2"),
]


def _write(write_pipe, case: Case):
    text = case.text if case.whole else body(case.text)
    return write_pipe(text, m=M, **case.modules)


def _first_error(path) -> tuple[type, Diagnostic]:
    with pytest.raises(CompileError) as info:
        load(path).check()
    return type(info.value), info.value.errors[0]


def test_there_are_at_least_forty_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(write_pipe, case):
    path = _write(write_pipe, case)
    error_class, diag = _first_error(path)
    assert error_class is case.error
    assert (diag.span.line, diag.span.column) == (case.line, case.column), diag.render()
    assert case.message in diag.message
    if case.hint is not None:
        assert diag.hint is not None and case.hint in diag.hint, diag.hint
    # The rendered form: file:line:col, the source line, a caret, the hint.
    text = diag.render(SourceFile.read(path))
    first, *rest = text.split("\n")
    assert first.endswith(f":{case.line}:{case.column}: error: {diag.message}")
    assert any(set(line.split("|", 1)[-1].strip()) == {"^"} for line in rest)
    if case.hint is not None:
        assert text.rstrip().split("\n")[-1].startswith("  = hint: ")


# ---- several errors in one run --------------------------------------------------------------


def test_independent_errors_are_all_reported_in_order(write_pipe):
    path = write_pipe(body(
        "    source xs = range(10) partitions 2\n"
        "    stage ys = map m.f over xss\n"       # line 4: undefined name
        "    actor ps = m.Server()\n"
        "    value w = ps.weight()\n"             # line 6: no such method
        "    stage zs = map m.f over xs retries 1 retries 2\n"  # line 7: option twice
        "    sink s = collect(xs)\n"), m=M)
    with pytest.raises(SemanticError) as info:
        load(path).check()
    errors = info.value.errors
    assert [(d.span.line, d.span.column) for d in errors] == [(4, 29), (6, 15), (7, 42)]
    assert "undefined name `xss`" in errors[0].message
    assert "no method `weight`" in errors[1].message
    assert "`retries` is given twice" in errors[2].message


def test_an_error_does_not_cascade_into_its_uses(write_pipe):
    """A stage that failed is still defined: its uses are not reported again."""
    path = write_pipe(body(
        "    source xs = range(10) partitions 2\n"
        "    stage ys = map m.nope over xs\n"
        "    stage zs = map m.f over ys\n"
        "    sink s = collect(zs)\n"), m=M)
    with pytest.raises(SemanticError) as info:
        load(path).check()
    assert [(d.span.line, d.message) for d in info.value.errors] == [(4, "module `m` has no function `nope`")]


def test_a_missing_module_is_reported_once(write_pipe):
    path = write_pipe("use nosuch as q\npipeline p() {\n    source xs = range(10) partitions 2\n"
                      "    stage ys = map q.f over xs\n    stage zs = map q.g over ys\n"
                      "    sink s = collect(zs)\n}\n")
    with pytest.raises(SemanticError) as info:
        load(path).check()
    assert [(d.span.line, d.span.column) for d in info.value.errors] == [(1, 5)]


# ---- user modules are read, never imported -----------------------------------------------


def test_a_module_that_raises_on_import_is_checked_without_importing_it(write_pipe, tmp_path):
    path = write_pipe("use boom as b\npipeline p() {\n    source xs = range(10) partitions 2\n"
                      "    actor pool models = b.Model() x 2\n"
                      "    stage ys = map_batches models.predict over xs\n"
                      "    sink s = collect(ys)\n}\n", boom=BOOM)
    assert load(path).check() == []
    assert "boom" not in sys.modules
    assert not (tmp_path / "boom-was-imported").exists()


def test_a_missing_method_is_found_without_importing_the_module(write_pipe, tmp_path):
    path = write_pipe("use boom as b\npipeline p() {\n    source xs = range(10) partitions 2\n"
                      "    actor pool models = b.Model() x 2\n"
                      "    stage ys = map_batches models.predikt over xs\n"
                      "    sink s = collect(ys)\n}\n", boom=BOOM)
    error_class, diag = _first_error(path)
    assert error_class is SemanticError
    assert (diag.span.line, diag.span.column) == (5, 28)
    assert "no method `predikt`" in diag.message and diag.hint == "did you mean `predict`?"
    assert "boom" not in sys.modules
    assert not (tmp_path / "boom-was-imported").exists()


@pytest.mark.parametrize("source", [
    "x = " + "+".join(["1"] * 100_000) + "\n",  # Python's parser gives up (RecursionError)
    "def f(x):\n    return x\x00\n",  # a NUL byte
], ids=["too_deep_for_python", "nul_byte"])
def test_a_module_python_cannot_read_is_an_error_not_a_crash(write_pipe, source):
    path = write_pipe("use odd as o\npipeline p() {\n    source xs = range(10) partitions 2\n"
                      "    stage ys = map o.f over xs\n    sink s = collect(ys)\n}\n", odd=source)
    error_class, diag = _first_error(path)
    assert (error_class, diag.span.line, diag.span.column) == (SemanticError, 1, 5)
    assert "module `odd` has a Python syntax error" in diag.message


def test_a_deep_class_hierarchy_is_read(write_pipe):
    classes = "class C0:\n    def get(self):\n        return 1\n" + "".join(
        f"class C{i}(C{i - 1}):\n    pass\n" for i in range(1, 3000))
    path = write_pipe("use deep as d\npipeline p() {\n    actor a = d.C2999()\n    value v = a.gett()\n"
                      "    sink s = v\n}\n", deep=classes)
    _, diag = _first_error(path)
    assert (diag.span.line, diag.span.column, diag.hint) == (4, 15, "did you mean `get`?")


def test_decorated_methods_are_not_second_guessed(write_pipe):
    """A staticmethod takes no `self`; another decorator may change the signature."""
    path = write_pipe(body("    actor d = m.Decorated()\n    value a = d.make(1)\n    value b = d.anything(1, 2)\n"
                           "    sink s = [a, b]\n"), m=M)
    assert [w.message for w in load(path).check()] == []


# ---- warnings ------------------------------------------------------------------------------


def test_an_unused_stage_is_a_warning_and_check_succeeds(write_pipe, capsys):
    path = write_pipe(body("    source xs = range(10) partitions 2\n    stage ys = map m.f over xs\n"
                           "    sink s = collect(xs)\n"), m=M)
    warnings = load(path).check()
    assert [(d.severity, d.span.line, d.span.column) for d in warnings] == [("warning", 4, 11)]
    assert "`ys` is computed but never used" in warnings[0].message
    assert cli.main(["check", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{path}:4:11: warning: `ys` is computed but never used" in err
    assert f"{path}: ok (1 warning)" in err


def test_an_unused_alias_is_a_warning(write_pipe):
    path = write_pipe("use m as m\npipeline p() {\n    source xs = range(10) partitions 2\n"
                      "    sink s = collect(xs)\n}\n", m=M)
    [warning] = load(path).check()
    assert (warning.span.line, warning.span.column, warning.message) == (1, 1, "module alias `m` is never used")


# ---- parameters ----------------------------------------------------------------------------

PARAMS = ("use m as m\n"
          "pipeline p(epochs: int = 3, rate: float = 0.5, k: int = 2, flag: bool = false, path: str) {\n"
          "    source xs = range(10) partitions k\n"
          "    var v = 0\n"
          "    repeat epochs until flag {\n"
          "        v = v + rate\n"
          "    }\n"
          "    sink s = collect(xs)\n"
          "    sink t = v\n"
          "    sink u = path\n"
          "}\n")


@pytest.mark.parametrize("given, line, column, message, hint", [
    ({"epochs": "abc", "path": "x"}, 2, 12, "parameter `epochs` is an int, and 'abc' is not", "--param epochs=10"),
    ({"epochs": 2.5, "path": "x"}, 2, 12, "parameter `epochs` is an int, and 2.5 is not", "--param epochs=10"),
    ({"rate": "fast", "path": "x"}, 2, 29, "parameter `rate` is a float, and 'fast' is not", "--param rate=0.5"),
    ({"flag": "maybe", "path": "x"}, 2, 60, "parameter `flag` is a bool, and 'maybe' is not", "--param flag=true"),
    ({"epoch": "3", "path": "x"}, 2, 10, "unknown parameter `epoch`", "did you mean `epochs`?"),
    ({}, 2, 80, "parameter `path` has no default and was not given", "--param path=text"),
    ({"k": "0", "path": "x"}, 3, 38, "parameter `k` is 0, and `partitions` needs at least 1", "--param k=1"),
    ({"epochs": "-1", "path": "x"}, 5, 12, "parameter `epochs` is -1, and `repeat` needs at least 0",
     "--param epochs=0"),
], ids=["int_from_text", "int_from_float", "float", "bool", "unknown", "missing", "partitions_zero",
        "negative_repeat"])
def test_bad_parameter_values(write_pipe, given, line, column, message, hint):
    pipeline = load(write_pipe(PARAMS, m=M))
    with pytest.raises(SemanticError) as info:
        pipeline.params(given)
    [diag] = info.value.errors
    assert (diag.span.line, diag.span.column) == (line, column)
    assert message in diag.message and hint in diag.hint


def test_good_parameter_values_are_converted(write_pipe):
    pipeline = load(write_pipe(PARAMS, m=M))
    assert pipeline.params({"epochs": "1_0", "rate": "2", "flag": "yes", "path": "p"}) == {
        "epochs": 10, "rate": 2.0, "k": 2, "flag": True, "path": "p"}


def test_a_mistyped_parameter_on_the_command_line(write_pipe, capsys):
    path = write_pipe(PARAMS, m=M)
    assert cli.main(["check", str(path), "--param", "epochs=abc", "--param", "path=x"]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2:12: error: parameter `epochs` is an int, and 'abc' is not" in err
    assert "= hint: for example --param epochs=10" in err
    assert "Traceback" not in err


# ---- the command line: files that cannot be read, huge or absurd input ---------------------


def _cli(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_missing_file(tmp_path, capsys):
    code, _, err = _cli(["check", tmp_path / "nope.pipe"], capsys)
    assert code == 1
    assert err.startswith(f"{tmp_path / 'nope.pipe'}: error: no such file")


def test_a_directory(tmp_path, capsys):
    code, _, err = _cli(["check", tmp_path], capsys)
    assert code == 1
    assert err.startswith(f"{tmp_path}: error: is a directory")


def test_not_utf8_gives_the_position_of_the_bad_byte(tmp_path, capsys):
    path = tmp_path / "p.pipe"
    path.write_bytes('pipeline p() {\n    value v = "é\xff"\n}\n'.encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    code, _, err = _cli(["check", path], capsys)
    assert code == 1
    # column 17 counts characters: `é` is one character of two bytes
    assert err.startswith(f"{path}:2:17: error: byte 0xff is not valid UTF-8")
    assert "= hint: .pipe files are UTF-8 text" in err


def test_a_utf8_byte_order_mark_is_accepted(tmp_path, capsys):
    path = tmp_path / "p.pipe"
    path.write_bytes(b"\xef\xbb\xbfpipeline p() {\n    sink s = 1\n}\n")
    assert _cli(["check", path], capsys)[0] == 0


def test_a_five_megabyte_file_finishes(write_pipe, capsys):
    """5 MB of generated statements: checked in one piece, no recursion, no traceback."""
    pad = "x" * 120
    lines = [f'    stage generated_{i:06d} = map m.f over xs with k = "{pad}"  # generated, row {i}'
             for i in range(25_000)]
    text = HEAD + "    source xs = range(10) partitions 2\n" + "\n".join(lines) + "\n    sink s = collect(xs)\n}\n"
    assert len(text) > 5_000_000
    path = write_pipe(text, m=M)
    code, _, err = _cli(["check", "--quiet", path], capsys)
    assert code == 0
    assert err.strip() == f"{path}: ok (25000 warnings)"


def test_a_five_megabyte_file_with_an_error_at_the_end(write_pipe, capsys):
    lines = [f"    stage s{i} = map m.f over xs" for i in range(2000)]
    filler = "# " + "-" * 98 + "\n"
    text = HEAD + "    source xs = range(10) partitions 2\n" + "\n".join(lines) + "\n" + filler * 50_000 + \
        "    sink s = collect(xss)\n}\n"
    assert len(text) > 5_000_000
    code, _, err = _cli(["check", write_pipe(text, m=M)], capsys)
    assert code == 1
    assert f":{3 + 2000 + 50_000 + 1}:22: error: undefined name `xss`" in err


@pytest.mark.parametrize("text, column", [
    ("pipeline p() {\n    value v = " + "(" * 10_000 + "1" + ")" * 10_000 + "\n}\n", 9814),
    ("pipeline p() {\n    value v = " + "[" * 10_000 + "]" * 10_000 + "\n}\n", 9814),
    ("pipeline p() {\n" + "repeat 1 {" * 10_000 + "}" * 10_000 + "\n}\n", 97991),
], ids=["parentheses", "brackets", "braces"])
def test_ten_thousand_levels_of_nesting(write_pipe, capsys, text, column):
    code, _, err = _cli(["check", write_pipe(text)], capsys)
    assert code == 1
    first = err.split("\n")[0]
    assert first.endswith(f":2:{column}: error: nested too deeply (more than 200 levels)"), first


def _deep(n: int) -> list[str]:
    """Pipeline bodies nesting ``n`` levels in each way the builder recurses."""
    join = "join(" * n + "pairs" + ", pairs)" * n
    maps = (n + 1) // 2  # each `map ... over (...)` is two levels: the operation and its parentheses
    flow = "map m.pair over (" * (maps - 1) + "map m.pair over xs" + ")" * (maps - 1)
    flow = flow if 2 * maps - 1 == n else f"({flow})"
    calls = "m.f(" * n + "1" + ")" * n
    loops, parens = n // 2, n - n // 2 - 1  # the loops, then `v + (((1)))` inside them
    loops = "repeat 1 {\n" * loops + "v = v + " + "(" * parens + "1" + ")" * parens + "\n" + "}\n" * loops
    return [
        f"    stage j = {join}\n    sink s = collect(j)\n",
        f"    stage f = {flow}\n    sink s = collect(f)\n",
        f"    value c = {calls}\n    sink s = c\n",
        f"    value u = {'-' * n}1\n    sink s = u\n",
        f"    value l = {'[' * n}{']' * n}\n    sink s = l\n",
        f"    value t = {' + '.join(['1'] * (n + 1))}\n    sink s = t\n",
        f"    var v = 0\n{loops}    sink s = v\n",
    ]


@pytest.mark.parametrize("index", range(7), ids=["join", "dataflow", "calls", "unary", "lists", "sum", "loops"])
def test_the_deepest_nesting_allowed_is_checked_without_recursion_error(write_pipe, index):
    """200 levels pass the parser; the checker, which recurses, must cope with them all."""
    prelude = "    source xs = range(10) partitions 2\n    stage pairs = map m.pair over xs\n"
    path = write_pipe(body(prelude + _deep(200)[index]), m=M)
    load(path).check()
    too_deep = write_pipe(body(prelude + _deep(201)[index]), name="deeper.pipe", m=M)
    with pytest.raises(PipeSyntaxError, match="nested too deeply"):
        load(too_deep)


def test_ten_thousand_unmatched_braces(write_pipe, capsys):
    code, _, err = _cli(["check", write_pipe("pipeline p() " + "{" * 10_000 + "}" * 10_000)], capsys)
    assert code == 1
    assert ":1:15: error: unexpected `{`" in err


def test_unterminated_string_at_end_of_file(write_pipe, capsys):
    code, _, err = _cli(["check", write_pipe('pipeline p() {\n    value v = "never closed')], capsys)
    assert code == 1
    assert ":2:15: error: unterminated string" in err


@pytest.mark.parametrize("argv, message", [
    (["frobnicate", "p.pipe"], "invalid choice: 'frobnicate'"),
    (["check", "{path}", "--backend", "nosuch"], "unknown backend `nosuch`"),
    (["check", "{path}", "--param", "epochs"], "--param expects name=value, got 'epochs'"),
    (["check", "{path}", "--param", "=3"], "--param name '' is not a valid name"),
    (["check"], "the following arguments are required: file"),
], ids=["unknown_subcommand", "unknown_backend", "param_without_equals", "param_without_name", "no_file"])
def test_usage_errors_exit_2(write_pipe, capsys, argv, message):
    path = write_pipe(body("    sink s = epochs\n"), m=M)
    try:
        code = cli.main([a.format(path=path) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


# ---- the real command, in a subprocess ------------------------------------------------------


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipec", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**{k: v for k, v in os.environ.items() if k != "PIPEC_DEBUG"},
                               "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("make, code, expected", [
    (lambda d: d / "missing.pipe", 1, "missing.pipe: error: no such file"),
    (lambda d: d, 1, "error: is a directory"),
    (lambda d: _file(d, b"pipeline p() {\n  \xff\n}\n"), 1, "p.pipe:2:3: error: byte 0xff is not valid UTF-8"),
    (lambda d: _file(d, b'pipeline p() {\n  value v = "abc'), 1, "p.pipe:2:13: error: unterminated string"),
    (lambda d: _file(d, b"pipeline p() {\n  sink s = 1\n}\n"), 0, "p.pipe: ok"),
], ids=["missing", "directory", "not_utf8", "unterminated", "ok"])
def test_cli_subprocess(tmp_path, make, code, expected):
    done = _run("check", make(tmp_path), cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_cli_subprocess_many_comments_then_end_of_file(tmp_path):
    """The end-of-file message looks at the comments: in linear time (a regex once took hours)."""
    text = ("# # # # # # # # # # # # # # # # # # # #\n" * 3000 + "pipeline p() {\n").encode()
    done = _run("check", _file(tmp_path, text), cwd=tmp_path)
    assert done.returncode == 1
    assert "p.pipe:3001:15: error: unexpected end of file" in done.stderr


def test_cli_subprocess_usage_error(tmp_path):
    done = _run("check", _file(tmp_path, b"pipeline p() {\n}\n"), "--param", "oops", cwd=tmp_path)
    assert done.returncode == 2
    assert "error: --param expects name=value" in done.stderr
    assert "Traceback" not in done.stderr


def _file(folder, data: bytes):
    path = folder / "p.pipe"
    path.write_bytes(data)
    return path
