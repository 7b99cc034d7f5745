"""The reference backend's strictness and the exact semantics every backend shares."""

from __future__ import annotations

import json
import pickle
import random
import re
import subprocess
import sys

import pytest

from pipec import load
from pipec.dsl.diagnostics import PipelineRuntimeError
from pipec.backends.runtime import semantics
from pipec.backends.runtime.actors import SKIPPED, ActorHost, ReplayLog
from pipec.backends.runtime.sources import line_index, read_lines, read_lines_part

MOD = '''
import threading, time

def inc(x):
    return x + 1

def pair(x):
    return (x % 3, x)

def add(a, b):
    return a + b

def lock(x):
    return threading.Lock()

def mutate(batch):
    batch.append(99)
    return batch

flaky_calls = {"n": 0}

def flaky(x):
    flaky_calls["n"] += 1
    if flaky_calls["n"] <= 2:
        raise RuntimeError("transient")
    return x

def slow(x):
    time.sleep(5)
    return x

def boom(x):
    raise ValueError(f"bad item {x}")

def first(xs):
    return xs[0]

def items(n):
    return [f"item{i}" for i in range(n)]

def shard(partition, partitions):
    return [(partition, partitions)]

def batch_index(items, partition):
    return [partition] * len(items)

class Counter:
    def __init__(self):
        self.total = 0
    def add(self, x):
        self.total += x
        return self.total
    def value(self):
        return self.total
'''


def run(write_pipe, body: str, params=None, **extra_modules):
    path = write_pipe("use m as m\npipeline p() {\n" + body + "\n}\n", m=MOD, **extra_modules)
    pipeline = load(path)
    pipeline.check()
    return pipeline.run(backend="local", params=params or {})


def test_range_partitions_are_contiguous_blocks(write_pipe):
    result = run(write_pipe, "source xs = range(10) partitions 3\nsink out = collect(xs)")
    assert result.outputs["out"] == list(range(10))
    assert semantics.partition_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]


def test_callable_source_cut_into_blocks_and_sharded_called_per_partition(write_pipe):
    result = run(write_pipe, "source xs = m.items(n = 5) partitions 2\n"
                             "source ys = m.shard() sharded partitions 3\n"
                             "sink a = collect(xs)\nsink b = collect(ys)")
    assert result.outputs["a"] == [f"item{i}" for i in range(5)]
    assert result.outputs["b"] == [(0, 3), (1, 3), (2, 3)]


def test_map_batches_gets_partition_index(write_pipe):
    result = run(write_pipe, "source xs = range(6) partitions 3\n"
                             "stage ps = map_batches m.batch_index over xs\nsink out = collect(ps)")
    assert result.outputs["out"] == [0, 0, 1, 1, 2, 2]


def test_unpicklable_output_fails_naming_the_stage(write_pipe):
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, "source xs = range(4) partitions 2\nstage locks = map m.lock over xs\nsink out = collect(locks)")
    assert "`locks`" in str(err.value) and "cannot be pickled" in str(err.value)


def test_mutating_a_input_is_caught(write_pipe):
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, "source xs = range(4) partitions 2\nstage ys = map_batches m.mutate over xs\n"
                        "sink out = collect(ys)")
    assert "changed its input" in str(err.value)


def test_keyed_results_sorted_and_grouped_in_input_order(write_pipe):
    result = run(write_pipe, "source xs = range(12) partitions 4\nstage pairs = map m.pair over xs\n"
                             "stage sums = reduce_by_key m.add over pairs\n"
                             "stage groups = group_by_key over pairs\n"
                             "sink a = collect(sums)\nsink b = collect(groups)")
    assert result.outputs["a"] == [(0, 18), (1, 22), (2, 26)]
    assert result.outputs["b"] == [(0, [0, 3, 6, 9]), (1, [1, 4, 7, 10]), (2, [2, 5, 8, 11])]


def test_join_distinct_union_and_vars(write_pipe):
    result = run(write_pipe, """
    source xs = range(6) partitions 3
    stage pairs = map m.pair over xs
    stage both = join(pairs, pairs)
    stage uniq = distinct(union(xs, xs))
    var total = 0
    repeat 3 as i {
        total = total + i
    }
    sink a = collect(both)
    sink b = collect(uniq)
    sink c = total
    sink d = count(both)""")
    assert result.outputs["b"] == list(range(6))
    assert result.outputs["c"] == 0 + 1 + 2
    assert result.outputs["d"] == 12
    assert result.outputs["a"][:4] == [(0, (0, 0)), (0, (0, 3)), (0, (3, 0)), (0, (3, 3))]


def test_until_stops_early_and_collection_var_carries(write_pipe):
    result = run(write_pipe, """
    source xs = range(4) partitions 2
    var ys = map m.inc over xs
    repeat 10 until count(ys) > 0 and m.first(collect(ys)) >= 3 {
        ys = map m.inc over ys
    }
    sink out = collect(ys)""")
    # ys starts at [1..4]; each round adds one; stops once the first item reaches 3.
    assert result.outputs["out"] == [3, 4, 5, 6]
    assert result.rounds["loop1"] == 2 and result.capped == []


def test_a_loop_stopping_at_its_cap_says_so(write_pipe, tmp_path):
    path = write_pipe("""
use m_cap as m
pipeline p() {
    source xs = range(4) partitions 2
    var ys = map m.inc over xs
    repeat 3 until m.first(collect(ys)) >= 100 {
        ys = map m.inc over ys
    }
    sink out = collect(ys)
}""", m_cap="def inc(x):\n    return x + 1\ndef first(xs):\n    return xs[0]\n")
    out = subprocess.run([sys.executable, "-m", "pipec", "run", str(path), "--backend", "local"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r"warning: repeat 3 until m\.first\(collect\(ys\)\) >= 100 \(line \d+\) stopped at its cap "
                     r"of 3 rounds; its `until` condition never became true", out.stderr), out.stderr
    assert load(path).run(backend="local").capped == ["loop1"]


def test_actor_calls_in_program_order(write_pipe):
    result = run(write_pipe, """
    actor c = m.Counter()
    repeat 4 as i {
        c.add(i)
    }
    sink total = c.value()""")
    assert result.outputs["total"] == 6


def test_sinks_are_written_atomically_and_only_whole(write_pipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "out" / "x.json"
    target.parent.mkdir()
    target.write_text("old")
    with pytest.raises(PipelineRuntimeError) as err:
        # A value JSON cannot hold: the old file must survive untouched, no temp left.
        run(write_pipe, "source xs = range(2) partitions 1\nstage ys = map m.inc over xs\n"
                        "sink x = m.lock(collect(ys)) -> json(\"out/x.json\")")
    assert "cannot write json" in str(err.value)
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_json_sink_writes_numpy_as_plain_json():
    np = pytest.importorskip("numpy")
    text = semantics.render_sink({"b": np.arange(3), "a": np.float64(1.5), "c": (np.int64(2),)}, "json", False)
    assert json.loads(text) == {"a": 1.5, "b": [0, 1, 2], "c": [2]}
    assert text.index('"a"') < text.index('"b"')  # keys sorted


PINNED_HASH = 12434854893140991437


def test_stable_hash_is_process_independent_and_equal_for_equal_keys():
    assert semantics.stable_hash("word") == semantics.stable_hash("word")
    assert semantics.stable_hash(1) == semantics.stable_hash(1.0) == semantics.stable_hash(True)
    assert semantics.stable_hash(("a", 1)) != semantics.stable_hash(("a", 2))
    # Pinned: a change here silently changes every backend's partitioning.
    assert semantics.stable_hash("pipec") == PINNED_HASH


def test_a_remembered_stable_hash_is_the_one_computed_afresh():
    """int and str keys' hashes are remembered per process; a key equal to a remembered
    one but of another type (1.0, True, Decimal(1)) still gets its own encoding's hash."""
    from decimal import Decimal
    fresh = [(key, semantics.stable_hash(key)) for key in (Decimal(1), 1.0, True, "1", b"1")]  # equal keys: no dict
    semantics._HASHED.clear()
    assert semantics.stable_hash(1) == semantics.stable_hash(1) and 1 in semantics._HASHED
    assert semantics.stable_hash("1") == dict(fresh[3:])["1"] and "1" in semantics._HASHED
    for key, hashed in fresh:  # looked up after 1 and "1" are remembered
        assert semantics.stable_hash(key) == hashed
    assert Decimal(1) == 1 and semantics.stable_hash(Decimal(1)) != semantics.stable_hash(1)
    assert semantics.stable_hash("pipec") == PINNED_HASH == semantics.stable_hash("pipec")
    long_key, huge = "k" * (semantics.HASHED_STR_UPTO + 1), 1 << 70  # hashed, not kept
    assert semantics.stable_hash(long_key) == semantics.stable_hash(long_key) and long_key not in semantics._HASHED
    assert semantics.stable_hash(huge) != semantics.stable_hash(huge + 1) and huge not in semantics._HASHED


def test_combine_partials_order_is_fixed_by_index():
    calls = []

    def cat(a, b):
        calls.append((a, b))
        return a + b
    parts = [str(i) for i in range(10)]
    assert semantics.combine_partials(cat, parts) == "0123456789"
    # Groups of FAN_IN=8 first, then the level above: ((0..7), (8, 9)).
    assert calls[-1] == ("01234567", "89")


def test_actor_host_snapshot_and_replay_apply_each_call_once(tmp_path):
    snap = tmp_path / "c.snapshot"
    mod = tmp_path / "counter_mod.py"
    mod.write_text(MOD)
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        log = ReplayLog(checkpoint_every=3)
        host = ActorHost("counter_mod", "Counter", [], {}, 3, str(snap))
        for x in range(5):  # calls 0..4; snapshot after call 2
            seq = log.record("add", [x], {})
            host.call(seq, "add", [x], {})
            log.confirm(seq)
        assert host.obj.total == 10
        # Snapshot 2 is written in the background: until it is known durable the log keeps
        # every call (a record names no snapshot yet) ...
        assert [e[0] for e in log.entries] == [0, 1, 2, 3, 4] and log.snapshot is None
        host.flush()  # ... and once the host has finished it, the calls it holds go
        log.flushed()
        assert [e[0] for e in log.entries] == [3, 4] and log.snapshot == 2
        # The process dies: a new host restores the snapshot (calls 0..2 applied) ...
        restored = ActorHost("counter_mod", "Counter", [], {}, 3, str(snap))
        assert restored.restored and restored.applied == 2 and restored.obj.total == 3
        # ... a stale re-send of an old call is not applied again ...
        assert restored.call(1, "add", [1], {}) == SKIPPED
        # ... and the driver replays the rest in order.
        for seq, method, args, kwargs in log.since(restored.applied):
            restored.call(seq, method, args, kwargs)
        assert restored.obj.total == 10
    finally:
        sys.path.remove(str(tmp_path))


def test_pickle_roundtrip_of_empty_marker():
    assert pickle.loads(pickle.dumps(semantics.EMPTY)) is semantics.EMPTY


def test_text_partitions_read_only_their_bytes_and_match_text_mode(tmp_path):
    rng = random.Random(5)
    samples = ["", "\n", "a", "a\n", "\n\n\n", "é\nü\n\nx", "a\r\nb\r\n", "a\rb\rc\n", "\ufeffbom\nx",
               "x\n" * 70000 + "tail"]
    samples += ["".join(rng.choice("ab é\n\n") for _ in range(rng.randint(0, 3000))) for _ in range(30)]
    path = tmp_path / "f.txt"
    for text in samples:
        path.write_bytes(text.encode("utf-8"))
        with open(path, encoding="utf-8") as fh:  # what text mode gives, line by line
            lines = [line.rstrip("\n") for line in fh]
        assert read_lines(str(path)) == lines, repr(text[:30])
        index = line_index(str(path))
        assert (index is None) == ("\r" in text)
        for k in (1, 2, 5):
            assert [read_lines_part(str(path), i, k, index) for i in range(k)] == semantics.split(lines, k), repr(text[:30])


def test_positions_samples_and_sorts_do_not_depend_on_the_partition_count(write_pipe):
    """The same data cut into 1, 3 or 7 partitions: every ordering builtin gives the same
    values, a keyed input's positions included (they follow its collection order, not
    its hash buckets)."""
    path = write_pipe("""use m_parts as m
pipeline p(k: int = 1) {
    source xs = range(40) partitions k
    stage sums = reduce_by_key m.add over (map m.pair over xs)
    sink a = collect(sample(xs, 0.3, seed = 5))
    sink b = collect(zip_with_index(sums))
    sink c = collect(sample(sums, 0.5, seed = 2))
    sink d = collect(sort_by(xs, by = m.mod))
    sink e = [take(sums, 3), take(xs, 3), collect_map(sums)]
}
""", m_parts="def add(a, b):\n    return a + b\n\ndef pair(x):\n    return (x % 7, x)\n\n"
             "def mod(x):\n    return x % 4\n")
    runs = [load(path).run(backend="local", params={"k": k}).outputs for k in (1, 3, 7)]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0]["b"] == [(kv, i) for i, kv in enumerate(sorted(runs[0]["e"][2].items()))]
    assert runs[0]["d"][:3] == [0, 4, 8] and len(runs[0]["d"]) == 40
