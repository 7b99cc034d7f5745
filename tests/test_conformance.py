"""One conformance suite, run against every backend: the same sinks, byte for byte.

Each case is a small pipeline exercising one operator, actor form, loop, parameter or
sink. The local backend is the reference; every other backend must write exactly the
bytes it writes. A backend that lacks a feature must say so at compile time
(UnsupportedOnBackend naming the feature and the backend): the gaps are the features a
case uses that the backend's declared capabilities lack, so a gap that closes makes
the case run, and pass or fail on its bytes.

Every registered backend runs the suite (tests/engines.py discovers them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipec import load
from pipec.dsl.diagnostics import UnsupportedOnBackend
from pipec.backends import backend_class
from pipec.backends.runtime.preflight import PreflightError
from pipec.compiler.capabilities import FEATURES, features_used
from tests.engines import BACKENDS, engine_options

MODULE = '''
import math
import os

def inc(x):
    return x + 1

def square(x):
    return x * x

def even(x):
    return x % 2 == 0

def words(line):
    return line.split()

def pair(x):
    return (x % 5, x)

def word_pair(w):
    return (w, 1)

def mod_one(x):
    return (x % 3, 1)

def add(a, b):
    return a + b

def fadd(a, b):
    return a + b

def third(x):
    return x / 3.0

def label(v):
    return f"v{v}"

def batch_sum(items, partition):
    return [(partition, sum(items), len(items))]

def first(pair):
    return pair[0]

def line_stats(lines, partition):
    return [(partition, len(lines), lines[0] if lines else None, lines[-1] if lines else None)]

def scale(x, factor):
    return x * factor

def halve(x):
    return x / 2

def total_of(xs):
    return sum(xs)

def make(n, offset=0):
    return [i + offset for i in range(n)]

def shard(partition, partitions, per=3):
    return [partition * 100 + i for i in range(per)]

def neg(pair):
    return -pair[1]

def push(x, server):
    server.add(x)
    return x

class Counter:
    def __init__(self, start=0):
        self.total = start
        self.calls = []
    def add(self, x):
        self.total += x
        self.calls.append(x)
        return self.total
    def value(self):
        return self.total
    def history(self):
        return list(self.calls)
    def done(self, limit):
        return self.total >= limit

class Doubler:
    def __init__(self, k=2):
        self.k = k
    def set_k(self, k):
        old, self.k = self.k, k
        return [old, k]
    def run(self, items):
        return [x * self.k for x in items]

def pd_scale(df):
    return df.assign(x=df["x"] * 3, big=df["x"] > 2)

def arrow_add(table):
    import pyarrow.compute as pc
    return table.append_column("y", pc.multiply(table["x"], 2))

def np_sum(cols):
    return {"id": cols["id"], "s": cols["x"] + cols["y"]}

def row_key(row):
    return [row["id"], row["tag"]]

MIXED = [None, "b", 3, 2.5, "a", float("nan"), (1, 2), 3.0, True, -1]

def mixed(x):
    return (MIXED[x % len(MIXED)], x)

def second(pair):
    return pair[1]

def neg_int(x):
    return -x

def join_sum(record):
    key, (a, b) = record
    return (key, a + b)

def layout(items, partition):
    return [(partition, list(items))]

def label_pair(x):
    return (f"k{x}", x)

def as_row(x, i=0):
    return {"x": x, "i": i, "tag": f"t{x % 3}"}

def small_row(row):
    return row["x"] < 4

def mod7(x):
    return x % 7

def late(x):
    return x > 45

def lose_process(marker, driver):
    """The first time: end this process as a crash would, unless it is the test's own
    (``driver``), where it only notes that it ran there."""
    if os.path.exists(marker) or os.path.exists(marker + ".driver"):
        return
    if os.getpid() == driver:
        open(marker + ".driver", "w").close()
        return
    open(marker, "w").close()
    os._exit(1)

class Fragile(Counter):
    """A Counter whose process is lost in the middle of call number ``at``."""
    def __init__(self, marker, driver, at):
        super().__init__()
        self.marker, self.driver, self.at, self.n = marker, driver, at, 0
    def add(self, x):
        self.n += 1
        if self.n == self.at:
            lose_process(self.marker, self.driver)
        return super().add(x)

class FragileDoubler(Doubler):
    """A Doubler whose process is lost in the middle of partition 2."""
    def __init__(self, marker, driver):
        super().__init__()
        self.marker, self.driver = marker, driver
    def run(self, items, partition):
        if partition == 2:
            lose_process(self.marker, self.driver)
        return super().run(items)
'''


def _parquet(columns: dict, row_group_size: int | None = None) -> bytes:
    """A Parquet file's bytes (for the cases' input folders)."""
    import io
    import pyarrow as pa
    import pyarrow.parquet as pq
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out, row_group_size=row_group_size)
    return out.getvalue()


# Several 64 KiB chunks, lines of every length (some empty, some not ASCII): the Dask and
# Ray tasks each read only their own lines of it, at byte offsets of their own.
BIG_TEXT = "".join(("é" * (i % 7) + f"line {i}" * (i % 13)) + "\n" for i in range(9000)) + "no newline at the end"


@dataclass
class Case:
    body: str
    params: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    # backend -> why the case says nothing there that the other cases do not already
    not_on: dict = field(default_factory=dict)


CASES: dict[str, Case] = {
    "range_map_filter": Case("""
        source xs = range(n) partitions 4
        stage ys = filter m.even over (map m.square over xs)
        sink out = collect(ys) -> json("out/out.json")""", {"n": 23}),
    "flat_map_text": Case("""
        source lines = read_text("data.txt") partitions 3
        stage ws = flat_map m.words over lines
        sink out = ws -> text("out/out.txt")""", files={"data.txt": "a b c\nd e\n\nf g h i\nj\n"}),
    "read_text_partitions_across_chunks": Case("""
        source lines = read_text("big.txt") partitions 7
        stage stats = map_batches m.line_stats over lines
        sink out = collect(stats) -> json("out/out.json")""", files={"big.txt": BIG_TEXT}),
    "parquet_folder_batches_to_datasets": Case("""
        source rows = read_parquet("data", columns = ["id", "x", "tag"])
        stage scaled = map_batches m.pd_scale over rows as pandas
        stage shaped = map_batches m.arrow_add over scaled as arrow
        stage sums = map_batches m.np_sum over shaped as numpy
        sink ds = shaped -> parquet("out/ds")
        sink cs = sums -> csv("out/cs")
        sink keys = collect(map m.row_key over rows) -> json("out/keys.json")""", files={
        "data/a.parquet": _parquet({"id": [0, 1, 2], "x": [0.5, 1.5, 2.5], "tag": ["a", "b", None], "w": [1, 2, 3]}),
        "data/sub/b.parquet": _parquet({"id": list(range(3, 10)), "x": [i / 4 for i in range(3, 10)],
                                        "tag": [f"t{i}" for i in range(3, 10)], "w": list(range(7))}, 3),
        "data/_SUCCESS": "", "data/.hidden.parquet": "not read"}),
    "csv_text_jsonl_folders_regrouped": Case("""
        source t = read_csv("tables", delimiter = ";") partitions 2
        source raw = read_csv("raw.csv", header = false, columns = ["f0", "f2"])
        source lines = read_text("logs/*.txt")
        source js = read_jsonl("js") partitions 3
        stage stats = map_batches m.line_stats over lines
        sink tj = collect(t) -> json("out/t.json")
        sink tp = t -> parquet("out/tp")
        sink rc = raw -> csv("out/rc")
        sink sj = collect(stats) -> json("out/stats.json")
        sink jj = collect(js) -> json("out/js.json")""", files={
        "tables/1.csv": "id;name;score\n1;ann;0.5\n2;bob;1.25\n",
        "tables/2.csv": "id;name;score\n3;cy;2\n",
        "tables/3.csv": "id;name;score\n4;dee;-1.5\n5;eve;3\n",
        "raw.csv": "1,x,10\n2,y,20\n",
        "logs/a.txt": "one\ntwo\n", "logs/b.txt": "three\n", "logs/c.log": "not matched\n",
        "js/1.jsonl": '{"a": 1}\n\n[2, 3]\n', "js/2.jsonl": '"four"\n'}),
    "read_jsonl": Case("""
        source rows = read_jsonl("rows.jsonl") partitions 2
        stage firsts = map m.first over rows
        sink out = firsts -> jsonl("out/out.jsonl")""",
        files={"rows.jsonl": '[1, "a"]\n[2, "b"]\n\n[3, "c"]\n'}),
    "callable_and_sharded_sources": Case("""
        source xs = m.make(n = 10, offset = 5) partitions 3
        source ys = m.shard(per = 2) sharded partitions 4
        sink a = collect(xs) -> json("out/a.json")
        sink b = collect(ys) -> json("out/b.json")"""),
    "map_batches_partition_index": Case("""
        source xs = range(17) partitions 5
        stage sums = map_batches m.batch_sum over xs
        sink out = collect(sums) -> json("out/out.json")"""),
    "float_reduce_is_bit_identical": Case("""
        source xs = range(1000) partitions 13
        value total = reduce m.fadd over (map m.third over xs)
        sink out = total -> json("out/out.json")"""),
    "reduce_by_key_and_group": Case("""
        source xs = range(40) partitions 6
        stage pairs = map m.pair over xs
        stage sums = reduce_by_key m.add over pairs
        stage groups = group_by_key over pairs
        stage counts = reduce_by_key m.add over (map m.mod_one over xs)
        sink a = collect(sums) -> json("out/a.json")
        sink b = groups -> jsonl("out/b.jsonl")
        sink c = collect(counts) -> json("out/c.json")"""),
    "join_distinct_union_map_values": Case("""
        source xs = range(12) partitions 3
        source ys = range(6) partitions 2
        stage left = map m.pair over xs
        stage right = map_values m.label over (map m.pair over ys)
        stage joined = join(left, right)
        stage uniq = distinct(union(xs, ys, xs))
        sink a = collect(joined) -> json("out/a.json")
        sink b = collect(uniq) -> json("out/b.json")"""),
    # One pass over ys feeds the fold, the count and the shuffle's split, and keeps ys
    # for the sink; sums is kept and feeds the top (see tests/test_scans.py).
    "shared_scan_feeds_every_reader": Case("""
        source xs = range(60) partitions 4
        stage ys = filter m.even over (map m.inc over xs)
        value total = reduce m.add over ys
        stage sums = reduce_by_key m.add over (map m.pair over ys)
        stage squares = map m.square over ys
        sink a = [total, count(ys), count(squares)] -> json("out/a.json")
        sink b = top(sums, 2, by = m.neg) -> json("out/b.json")
        sink c = collect(sums) -> json("out/c.json")
        sink d = ys -> jsonl("out/d.jsonl")
        sink e = collect(squares) -> json("out/e.json")"""),
    # links is made before the loop: its join split is made once and read by every round
    # (tests/test_scans.py); grown's partitions grow, so its join splits again from round 2.
    "join_in_a_loop_splits_the_invariant_side_once": Case("""
        source xs = range(20) partitions 4
        source few = range(6) partitions 2
        stage links = map m.pair over xs
        var ranks = map_values m.inc over (reduce_by_key m.add over links)
        var grown = map m.pair over few
        repeat 3 as r {
            ranks = reduce_by_key m.add over (map m.join_sum over join(links, ranks))
            grown = union(grown, map_values m.inc over (map m.join_sum over join(grown, links)))
        }
        sink a = collect(ranks) -> json("out/a.json")
        sink b = collect(grown) -> json("out/b.json")"""),
    # More partitions than a shuffle has merge tasks (planner.MERGE_WIDTH, 16): the
    # merges run in groups of partitions, one or two a task here, and every partition,
    # every part file and every position must be the ungrouped ones.
    "wide_shuffles_merge_in_groups": Case("""
        source xs = range(600) partitions 20
        stage pairs = map m.pair over xs
        stage sums = reduce_by_key m.add over pairs
        stage groups = group_by_key over pairs
        stage uniq = distinct(map m.mod7 over xs)
        stage joined = join(pairs, sums)
        stage again = reduce_by_key m.add over (map m.join_sum over joined)
        sink a = collect(sums) -> json("out/a.json")
        sink b = groups -> jsonl("out/b.jsonl")
        sink c = collect(uniq) -> json("out/c.json")
        sink d = collect(map_batches m.layout over joined) -> json("out/d.json")
        sink e = collect(zip_with_index(sums)) -> json("out/e.json")
        sink f = collect(map_batches m.layout over sort_by(xs, by = m.neg_int)) -> json("out/f.json")
        sink g = map m.as_row over (map m.first over sums) -> parquet("out/g")
        sink h = [count(again), top(again, 3, by = m.neg)] -> json("out/h.json")""",
        not_on={"spark": "Spark shuffles with its own exchange, never in grouped merges, and runs each of the "
                         "case's nine jobs as 20 tasks: 18 s that test what the narrower cases test"}),
    "top_and_count": Case("""
        source lines = read_text("data.txt") partitions 2
        stage counts = reduce_by_key m.add over (map m.word_pair over (flat_map m.words over lines))
        sink a = top(counts, 3, by = m.neg) -> json("out/a.json")
        sink b = count(counts) -> json("out/b.json")""", files={"data.txt": "x y z x\ny x w\nv w\n"}),
    "values_and_arithmetic": Case("""
        source xs = range(n) partitions 2
        value total = reduce m.add over xs
        value mean = total / count(xs)
        value big = mean > 4 and not (n == 3)
        stage scaled = map m.scale over xs with factor = mean * 2 + 1
        sink a = [total, mean, big, -total, total // 3, total % 7, 2 ** 3] -> json("out/a.json")
        sink b = collect(scaled) -> json("out/b.json")
        sink c = m.total_of(collect(scaled)) -> json("out/c.json")""", {"n": 11}),
    "actor_calls_in_order_with_checkpoints": Case("""
        actor c = m.Counter(start = 1) {
            restarts 2
            checkpoint every 2 calls
        }
        source xs = range(5) partitions 2
        repeat 4 as i {
            value s = reduce m.add over (map m.scale over xs with factor = i)
            c.add(s)
        }
        sink out = c.history() -> json("out/out.json")
        sink total = c.value() -> json("out/total.json")"""),
    "values_the_driver_reads_every_round": Case("""
        actor c = m.Counter()
        source xs = range(9) partitions 3
        repeat 3 as i {
            stage ys = map m.scale over xs with factor = i + 1
            value s = reduce m.add over ys
            c.add(count(ys) + m.total_of(top(ys, 2)) + s)
        }
        sink out = c.history() -> json("out/out.json")"""),
    "actor_pool_map_batches": Case("""
        source xs = range(30) partitions 6
        actor pool ds = m.Doubler(k = 3) x 2
        stage ys = map_batches ds.run over xs
        sink out = collect(ys) -> json("out/out.json")"""),
    "repeat_until_and_var_value": Case("""
        actor c = m.Counter()
        var acc = 0.5
        repeat 50 as i until c.done(10) {
            c.add(i)
            acc = m.halve(acc) + i
        }
        sink out = [acc, c.value()] -> json("out/out.json")"""),
    "var_collection_and_nested_loops": Case("""
        source xs = range(8) partitions 3
        var ys = xs
        repeat 2 {
            repeat 3 as j {
                ys = map m.scale over ys with factor = j + 1
            }
            ys = map m.inc over ys
        }
        sink out = ys -> jsonl("out/out.jsonl")"""),
    "params_override": Case("""
        source xs = range(n) partitions parts
        value total = reduce m.add over (map m.scale over xs with factor = factor)
        sink out = [total, name, flag] -> json("out/out.json")""",
        {"n": 9, "parts": 4, "factor": 0.25, "name": "run", "flag": True}),
    "when_blocks_and_round_sinks": Case("""
        actor c = m.Counter()
        source xs = range(7) partitions 3
        repeat 5 as i {
            c.add(i)
            when i % 2 == 0 {
                value s = reduce m.add over (map m.scale over xs with factor = i)
                sink every_other = [s, c.value()] -> json("out/{name}-{i}.json")
                repeat 2 as j {
                    when j > 0 and c.done(4) {
                        sink inner = collect(map m.scale over xs with factor = i + j) -> jsonl("out/in-{i}-{j}.jsonl")
                    }
                }
            }
        }
        sink total = c.history() -> json("out/total.json")""", {"name": "run"}),
    "pool_each_calls_every_member": Case("""
        source xs = range(12) partitions 4
        actor pool ds = m.Doubler(k = 2) x 3
        repeat 2 as i {
            value ks = ds.each.set_k(i + 5)
            sink ks_out = ks -> json("out/ks-{i}.json")
            sink ys = collect(map_batches ds.run over xs) -> json("out/ys-{i}.json")
        }
        ds.each.set_k(1)
        sink last = collect(map_batches ds.run over xs) -> json("out/last.json")"""),
    "pool_each_after_stages_read_later": Case("""
        source xs = range(12) partitions 4
        actor pool ds = m.Doubler(k = 2) x 2
        stage ys = map_batches ds.run over xs
        stage zs = map m.inc over ys
        ds.each.set_k(10)
        sink a = collect(zs) -> json("out/a.json")
        sink b = collect(map_batches ds.run over xs) -> json("out/b.json")
        repeat 2 as i {
            value ks = ds.each.set_k(i + 3)
            sink c = [ks, collect(ys)] -> json("out/c-{i}.json")
        }"""),
    "handle_in_stage_schedule_dependent": Case("""
        actor c = m.Counter()
        source xs = range(10) partitions 3
        stage pushed = map m.push over xs with server = c effectful
        value n = count(pushed)
        sink total = c.value() -> json("out/total.json")
        sink seen = n -> json("out/n.json")"""),
    "sort_by_stable_total_order": Case("""
        source xs = range(40) partitions 4
        stage s = sort_by(map m.mixed over xs, by = m.first)
        stage sums = reduce_by_key m.add over (map m.pair over xs)
        stage joined = join(map m.pair over xs, sums)
        sink a = collect(s) -> json("out/a.json")
        sink b = collect(map_batches m.layout over sort_by(xs, by = m.neg_int)) -> json("out/b.json")
        sink c = sort_by(sums, by = m.neg) -> jsonl("out/c.jsonl")
        sink d = collect(sort_by(joined, by = m.second)) -> json("out/d.json")
        sink e = collect(sort_by(map m.neg_int over xs)) -> json("out/e.json")"""),
    # Key ranges: long runs of ties across partitions, partitions left empty, one partition,
    # a dataset written range by range, positions counted over the ranges.
    "sort_by_key_ranges": Case("""
        source xs = range(60) partitions 5
        source one = range(7) partitions 1
        stage ties = sort_by(xs, by = m.mod7)
        stage late = sort_by(filter m.late over xs, by = m.neg_int)
        sink a = collect(map_batches m.layout over ties) -> json("out/a.json")
        sink b = collect(map_batches m.layout over late) -> json("out/b.json")
        sink c = collect(sort_by(one, by = m.neg_int)) -> json("out/c.json")
        sink d = map m.as_row over ties -> parquet("out/d")
        sink e = [take(ties, 5), collect(zip_with_index(late))] -> json("out/e.json")"""),
    "take_zip_sample_collect_map": Case("""
        source xs = range(n) partitions 4
        source few = range(3) partitions 5
        stage sums = reduce_by_key m.add over (map m.pair over xs)
        sink a = [take(xs, 7), take(sums, 2), take(few, 10), take(xs, 0)] -> json("out/a.json")
        sink b = collect(zip_with_index(sums)) -> json("out/b.json")
        sink c = collect(map_batches m.layout over zip_with_index(few)) -> json("out/c.json")
        sink d = collect(sample(xs, 0.3, seed = 7)) -> json("out/d.json")
        sink e = [collect(sample(sums, 0.5)), count(sample(xs, 1)), count(sample(xs, 0.0))] -> json("out/e.json")
        sink f = collect_map(sums) -> json("out/f.json")
        sink g = [collect_map(zip_with_index(few)), collect_map(map m.label_pair over few)] -> json("out/g.json")""",
        {"n": 50}),
    "ordering_in_loops": Case("""
        source xs = range(12) partitions 3
        var ys = xs
        repeat 3 as i {
            ys = sample(sort_by(map m.inc over ys, by = m.neg_int), 0.9, seed = i)
        }
        value firsts = take(ys, count(xs) - 9)
        sink out = [collect(ys), firsts, collect(zip_with_index(ys))] -> json("out/out.json")
        sink parts = collect(map_batches m.layout over ys) -> json("out/parts.json")"""),
    # A dataset per round, committed with its round (empty partitions write no part).
    "dataset_sinks_in_loops": Case("""
        source xs = range(11) partitions 3
        var ys = xs
        repeat 3 as i {
            ys = map m.inc over ys
            stage rows = map m.as_row over ys with i = i
            sink preds = rows -> parquet("out/preds-{i}")
            when i % 2 == 0 {
                sink few = filter m.small_row over rows -> csv("out/{name}-{i}")
            }
        }
        sink last = collect(ys) -> json("out/last.json")""", {"name": "few"}),
    # Vars rebound inside `when` blocks (nested too): new values where a block runs,
    # seen by what follows it in the round; kept in the other rounds.
    "rebind_in_when_blocks": Case("""
        source xs = range(10) partitions 3
        var ys = xs
        var best = 0
        var sums = reduce_by_key m.add over (map m.pair over xs)
        repeat 5 as i {
            ys = map m.inc over ys
            value total = reduce m.add over ys
            when i % 2 == 0 {
                stage zs = map m.square over ys
                when total > 70 {
                    best = total
                    sums = reduce_by_key m.add over (map m.pair over zs)
                }
                sink seen = [best, collect(sums)] -> json("out/seen-{i}.json")
            }
            sink after = [best, count(sums), take(sums, 2)] -> json("out/after-{i}.json")
        }
        sink out = [collect(ys), best, collect(sums)] -> json("out/out.json")"""),
}

_PARAM_DECLS = {"n": "n: int = 10", "parts": "parts: int = 2", "factor": "factor: float = 1.0",
                "name": "name: str = \"x\"", "flag": "flag: bool = false",
                "marker": "marker: str = \"\"", "driver": "driver: int = 0"}

# Features a backend lacks, declared as data: backend -> {case: feature it is missing}.
# Cases whose sinks depend on scheduling: checked by a property, not by bytes.
PROPERTIES = {
    "handle_in_stage_schedule_dependent": lambda out: (
        out["total.json"].strip() == str(sum(range(10))) and out["n.json"].strip() == "10"),
}


def _write_case(root: Path, name: str, case: Case) -> Path:
    decls = ", ".join(_PARAM_DECLS[p] for p in _PARAM_DECLS if p in case.params)
    text = f"use conf_mod as m\n\npipeline {name}({decls}) {{\n{case.body}\n}}\n"
    (root / "conf_mod.py").write_text(MODULE)
    for fname, content in case.files.items():
        (root / fname).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (root / fname).write_bytes(content)
        else:
            (root / fname).write_text(content)
    path = root / f"{name}.pipe"
    path.write_text(text)
    return path


def _run_case(tmp_path: Path, monkeypatch, backend: str, name: str, case: Case) -> dict[str, bytes]:
    root = tmp_path / backend
    root.mkdir()
    path = _write_case(root, name, case)
    monkeypatch.chdir(root)
    pipeline = load(path)
    pipeline.check(backend)
    pipeline.run(backend=backend, params=case.params, **engine_options(backend))
    return outputs(root / "out")


def outputs(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (a sink's file, or a folder of them: a dataset) by its
    path, with its bytes."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_conformance(backend, name, tmp_path, monkeypatch):
    case = CASES[name]
    if backend in case.not_on:
        pytest.skip(case.not_on[backend])
    (tmp_path / "gaps").mkdir()
    path = _write_case(tmp_path / "gaps", name, case)
    gaps = set(features_used(load(path).ir)) - backend_class(backend).capabilities
    if gaps:
        # A declared gap: refused before anything runs, naming what is missing.
        with pytest.raises(UnsupportedOnBackend) as err:
            load(path).check(backend)
        for feature in gaps:
            assert f"backend `{backend}` does not support {FEATURES[feature]}" in str(err.value)
        return
    got = _run_case(tmp_path, monkeypatch, backend, name, case)
    assert got, "the case wrote no sink"
    if name in PROPERTIES:
        assert PROPERTIES[name]({k: v.decode() for k, v in got.items()})
        return
    if backend == "local":
        return
    expected = _run_case(tmp_path, monkeypatch, "local", name, case)
    assert got == expected


# Losses: the process holding an actor, or a pool member, dies in the middle of a call
# (it ends itself, as a crash would: once, marked in a file). Where a backend keeps them
# is declared (Backend.actor_host, .pool_host): on "workers" the loss must happen and the
# run still write the reference's bytes, every call applied once; kept in the "driver",
# the loss is the run's own (see resume), so it does not apply, and the case checks the
# declaration instead: the actor ran in this process, and the bytes are the reference's.
LOSSES: dict[str, tuple[str, Case]] = {
    "killed_actor_is_restored_and_replayed": ("actor_host", Case("""
        actor c = m.Fragile(marker = marker, driver = driver, at = 4) {
            restarts 2
            checkpoint every 2 calls
        }
        source xs = range(6) partitions 2
        repeat 5 as i {
            value s = reduce m.add over (map m.scale over xs with factor = i)
            c.add(s)
        }
        sink out = c.history() -> json("out/out.json")
        sink total = c.value() -> json("out/total.json")""")),
    "lost_pool_member_serves_its_partition_again": ("pool_host", Case("""
        source xs = range(12) partitions 4
        actor pool ds = m.FragileDoubler(marker = marker, driver = driver) x 2 { restarts 1 }
        stage ys = map_batches ds.run over xs
        sink out = collect(ys) -> json("out/out.json")""")),
    "lost_pool_member_replays_calls_to_every_member": ("pool_host", Case("""
        source xs = range(12) partitions 4
        actor pool ds = m.FragileDoubler(marker = marker, driver = driver) x 2 { restarts 1 }
        value ks = ds.each.set_k(7)
        sink out = collect(map_batches ds.run over xs) -> json("out/out.json")
        sink answers = ks -> json("out/ks.json")
        sink after = ds.each.set_k(1) -> json("out/after.json")""")),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_process_leaves_the_reference_bytes(backend, name, tmp_path, monkeypatch):
    import os
    host, case = LOSSES[name]
    marker = tmp_path / "lost"
    case = Case(case.body, {"marker": str(marker), "driver": os.getpid()})
    (tmp_path / "gaps").mkdir()
    gaps = set(features_used(load(_write_case(tmp_path / "gaps", name, case)).ir)) - backend_class(backend).capabilities
    if gaps:  # declared: refused before anything runs (test_conformance checks the words)
        with pytest.raises(UnsupportedOnBackend):
            load(tmp_path / "gaps" / f"{name}.pipe").check(backend)
        return
    got = _run_case(tmp_path, monkeypatch, backend, name, case)
    where = getattr(backend_class(backend), host)
    assert where in ("workers", "driver"), where
    if where == "workers":
        assert marker.exists(), f"{backend} keeps it on its workers, and no process was lost"
    else:
        assert (tmp_path / "lost.driver").exists() and not marker.exists(), f"{backend} declares {host} driver"
    if backend == "local":
        return
    for leftover in tmp_path.glob("lost*"):
        leftover.unlink()
    assert got == _run_case(tmp_path, monkeypatch, "local", name, case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_text_file_is_reported_at_its_source(backend, tmp_path, monkeypatch):
    case = Case("""
        source lines = read_text("missing.txt") partitions 3
        sink out = collect(lines) -> json("out/out.json")""")
    with pytest.raises(PreflightError) as err:  # before any engine work
        _run_case(tmp_path, monkeypatch, backend, "missing_file", case)
    assert "`read_text`: no such file: missing.txt" in str(err.value)
    assert err.value.span.line == 5  # the `source` line, under the `use` and `pipeline` lines
    assert not (tmp_path / backend / "out").exists()


@pytest.mark.parametrize("example", sorted(p.stem for p in (Path(__file__).parent.parent / "examples").glob("*.pipe")))
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "local"])
def test_examples_identical_to_local(backend, example, workdir):
    params = {"train": {"rows": 4_000, "epochs": 4}, "infer": {"n": 500}, "kmeans": {"points": 300},
              "digits": {"epochs": 4}, "evaluate": {"rows": 4_000, "epochs": 8}}.get(example, {})
    got = {}
    for b in ("local", backend):
        result = load(Path("examples") / f"{example}.pipe").run(backend=b, params=params, **engine_options(b))
        got[b] = {name: outputs(path) for name, path in result.files.items()}
        got[b].update({path: outputs(path) for paths in result.round_files.values() for path in paths})
    assert got[backend] == got["local"]


def test_every_case_uses_only_declared_params():
    for name, case in CASES.items():
        assert set(case.params) <= set(_PARAM_DECLS), name


def test_local_reference_outputs_are_what_plain_python_says(tmp_path, monkeypatch):
    """Spot-check the reference itself on a few cases."""
    import json
    out = _run_case(tmp_path, monkeypatch, "local", "float_reduce_is_bit_identical", CASES["float_reduce_is_bit_identical"])
    # Partition partials folded left to right, then combined 8 at a time by index.
    from pipec.backends.runtime.semantics import combine_partials, fold, split
    parts = split([x / 3.0 for x in range(1000)], 13)
    expected = combine_partials(lambda a, b: a + b, [fold(lambda a, b: a + b, p) for p in parts])
    assert json.loads(out["out.json"]) == expected
