"""The counting idiom at C speed: `map` to (key, c), then `reduce_by_key` with addition.

semantics.reduce_by_key_partial counts with collections.Counter when the reducer is
addition and every record is a pair with the same int value, and the interpreter skips a
`map` that is exactly ``return x, c``. Both must give exactly what the general fold gives
(values, their types, key order) or, where they do not apply, fall back to it, errors
included. These tests compare the two paths on generated records."""

from __future__ import annotations

import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipec.backends.physical import steps as s
from pipec.backends.runtime import semantics
from pipec.backends.runtime.interpreter import StageFailure, run_chain, run_segment

MOD = "counting_fns"


def add(a: int, b: int) -> int:
    """Addition, with annotations and a docstring: still recognised."""
    return a + b


def general_fold(fn, records):
    """reduce_by_key_partial's general loop, written out: what every fast path must equal."""
    acc: dict = {}
    for key, value in records:
        acc[key] = value if key not in acc else fn(acc[key], value)
    return list(acc.items())


def exact(pairs):
    """Pairs with the types of keys and values, so 1, 1.0 and True do not compare equal."""
    return [(type(k), repr(k), type(v), repr(v)) for k, v in pairs]


def outcome(fn, *args):
    try:
        return "ok", exact(fn(*args))
    except Exception as exc:
        return "error", type(exc)


keys = st.one_of(st.integers(-3, 3), st.booleans(), st.sampled_from([0.0, -0.0, 1.0, 2.5]),
                 st.text("ab", max_size=2), st.tuples(st.integers(0, 2)), st.none())
values = st.one_of(st.just(1), st.just(2), st.integers(-2, 2), st.booleans(), st.just(1.0))
records = st.one_of(st.tuples(keys, values), st.lists(st.integers(0, 2), min_size=2, max_size=2).map(list),
                    st.tuples(keys, values, values), st.text("xy", min_size=2, max_size=2),
                    st.builds(lambda k: ([k], 1), st.integers(0, 2)))


@settings(max_examples=400, deadline=None)
@given(st.lists(records, max_size=12), st.sampled_from([add, operator.add]))
def test_counting_gives_what_the_general_fold_gives(records, fn):
    def opaque(a, b):  # a closure: never recognised, so this is the general loop itself
        return fn(a, b)
    assert outcome(semantics.reduce_by_key_partial, fn, records) == \
        outcome(semantics.reduce_by_key_partial, opaque, records)
    if outcome(general_fold, fn, records)[0] == "ok":
        assert outcome(semantics.reduce_by_key_partial, fn, records) == outcome(general_fold, fn, records)


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, max_size=12), st.sampled_from([1, 2, 7]))
def test_counting_constant_pairs_is_the_fold_of_the_pairs(elements, c):
    assert exact(semantics.count_pairs(elements, c)) == exact(general_fold(add, [(x, c) for x in elements]))


def test_what_counts_as_addition_and_as_a_constant_pair():
    def add_swapped(a, b):
        return b + a

    def add_default(a, b=1):
        return a + b

    def one(word):
        return word, 1

    def one_true(word):
        return word, True

    def one_float(word):
        return word, 1.0

    def one_swapped(word):
        return 1, word

    ONE = 1

    def one_global(word):
        return word, ONE

    assert semantics.is_addition(add) and semantics.is_addition(operator.add)
    assert not any(semantics.is_addition(f) for f in (add_swapped, add_default, max, operator.mul, len))
    assert semantics.constant_pair(one) == 1
    assert all(semantics.constant_pair(f) is None for f in (one_true, one_float, one_swapped, one_global, add, len))


@pytest.fixture
def fns(tmp_path, monkeypatch):
    (tmp_path / f"{MOD}.py").write_text(
        "def words(line):\n    return line.split()\n"
        "def one(word):\n    return word, 1\n"
        "def three(word):\n    return (word, 3)\n"
        "def add(a, b):\n    return a + b\n"
        "def mul(a, b):\n    return a * b\n"
        "def wrap(x):\n    return [x]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import sys
    sys.modules.pop(MOD, None)
    from pipec.backends.runtime.tasks import resolve
    resolve.cache_clear()
    yield
    resolve.cache_clear()


def _chain(pair: str, reducer: str, *first):
    steps = tuple(s.Elementwise(f"s{i}", kind, s.Fn(MOD, name)) for i, (kind, name) in enumerate(first))
    return steps + (s.Elementwise("pairs", "map", s.Fn(MOD, pair)),), s.Split("counts", "reduce_by_key", 3,
                                                                             s.Fn(MOD, reducer))


def _general(steps, terminal, items):
    """The same chain step by step, each its own segment, folded by the general loop."""
    out = items
    for step in steps:
        out = run_segment(s.Segment("x", s.Input("x"), (step,)), 0, out)
    acc = general_fold(lambda a, b: a * b if terminal.fn.attr == "mul" else a + b, out)
    return semantics.shuffle_split(acc, terminal.k, terminal.how)


@pytest.mark.parametrize("pair,reducer", [("one", "add"), ("three", "add"), ("one", "mul")])
def test_a_chain_into_a_count_gives_the_buckets_of_the_general_path(fns, pair, reducer):
    lines = ["a b a", "c a b", "", "b b"]
    steps, split = _chain(pair, reducer, ("flat_map", "words"))
    assert run_chain(steps, split, lines, 0) == _general(steps, split, lines)


def test_unhashable_elements_fail_as_they_always_did(fns):
    steps, split = _chain("one", "add", ("map", "wrap"))
    with pytest.raises(StageFailure) as failed:
        run_chain(steps, split, [1, 2], 0)
    assert failed.value.node == "counts" and "unhashable" in str(failed.value)
