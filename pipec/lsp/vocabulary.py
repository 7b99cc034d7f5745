"""The words of the language, grouped by where they may be written, each with one line
saying what it means: what hover shows over a keyword and completion offers.

The grammar (``grammar/pipe.lark``) is the authority on the words; a test checks that
every keyword it has is described here, so a new keyword cannot be left out.
"""

from __future__ import annotations

TOP_LEVEL = {
    "use": "`use a.module as m`: name a Python module; `m.f` then means `a.module.f`",
    "pipeline": "`pipeline name(param: type = default, ...) { ... }`: the one pipeline of the file",
}

STATEMENTS = {
    "source": "`source xs = range(n) partitions k`: a collection read from a source, cut into k partitions",
    "stage": "`stage ys = map f over xs`: a collection computed from others, element by element or by key",
    "value": "`value v = reduce f over xs`: one Python object (a reduction, a count, an actor call's result)",
    "var": "`var v = ...`: a loop variable, rebound once per round with `v = ...` inside a `repeat`",
    "actor": "`actor a = m.Class(...)`: a Python object with state, created once, its methods called in "
             "program order",
    "repeat": "`repeat n [as i] [until cond] { ... }`: run the body n times (stopping early when cond is true)",
    "sink": "`sink out = expr -> json(\"path\")`: an output of the pipeline, written atomically or printed",
    "defaults": "`defaults { retries 2 timeout 30 }`: stage options every stage starts from",
}

DATAFLOW = {
    "map": "`map f over xs`: f applied to every element",
    "flat_map": "`flat_map f over xs`: f returns an iterable per element; its items are the output",
    "filter": "`filter f over xs`: the elements for which f is true",
    "map_batches": "`map_batches f over xs`: f applied to each whole partition (a list, or `as pandas|arrow|numpy`)",
    "map_values": "`map_values f over kv`: f applied to the value of each (key, value) pair",
    "reduce": "`reduce f over xs`: one value, combining partials in partition order (the same bits everywhere)",
    "reduce_by_key": "`reduce_by_key f over kv`: one value per key, keys sorted",
    "group_by_key": "`group_by_key over kv`: (key, [values in input order]) per key, keys sorted",
}

BUILTINS = {
    "range": "`range(n)`: the integers 0..n-1 as a source, cut into contiguous blocks",
    "read_text": "`read_text(path)`: the lines of a text file, a folder or a glob (any fsspec URL)",
    "read_jsonl": "`read_jsonl(path)`: one JSON object per line, as dicts",
    "read_parquet": "`read_parquet(path, columns = [...])`: a Parquet file, folder or glob; rows as dicts, "
                    "a partition per file or row group",
    "read_csv": "`read_csv(path, header = true, delimiter = \",\", columns = [...])`: CSV files, types inferred; "
                "rows as dicts",
    "collect": "`collect(xs)`: the whole collection as one Python list (a value)",
    "count": "`count(xs)`: the number of elements (a value)",
    "top": "`top(xs, n, by = f)`: the n largest elements by key function f (a value)",
    "join": "`join(a, b)`: (key, (value in a, value in b)) for keys in both, keys sorted",
    "union": "`union(a, b)`: the elements of a, then those of b",
    "distinct": "`distinct(xs)`: each element once",
    "collect_map": "`collect_map(pairs)`: a (key, value) collection as one dict, keys in canonical order (a value)",
    "take": "`take(xs, n)`: the first n elements in collection order (a value)",
    "sort_by": "`sort_by(xs, by = f)`: sorted by key function f, stably (equal keys keep their order)",
    "sample": "`sample(xs, fraction, seed = s)`: each element kept by a hash of the seed and its position",
    "zip_with_index": "`zip_with_index(xs)`: (element, index) pairs, the index in collection order",
}

CONNECTIVES = {
    "over": "the collection a dataflow operation reads: `map f over xs`",
    "with": "values broadcast to every task, or an actor handle: `map f over xs with w = ps.weights()`",
    "partitions": "how many partitions a source is cut into",
    "sharded": "`source xs = m.read(...) sharded partitions k`: called once per partition on the workers",
    "as": "`use a.b as m` names a module; `repeat n as i` names the round index",
    "until": "`repeat n until cond`: stop after the first round where cond is true",
    "pool": "`actor pool p = m.Class(...) x 4`: several copies of an actor serving a stage's partitions",
    "x": "`actor pool p = m.Class(...) x 4`: how many actors a pool holds",
    "and": "boolean and", "or": "boolean or", "not": "boolean not",
    "true": "the boolean true", "false": "the boolean false", "none": "Python's None",
}

STAGE_OPTIONS = {
    "retries": "`retries n`: run a failed task again up to n times (stages are pure: recomputed from inputs)",
    "timeout": "`timeout seconds`: a task running longer fails (and is retried if it may be)",
    "effectful": "the stage has effects outside its output: it is not retried blindly",
    "resources": "`resources { cpus 1 gpus 1 memory \"4GB\" }`: what each task needs",
}

RESOURCES = {
    "cpus": "CPU cores per task",
    "gpus": "GPUs per task",
    "memory": "memory per task, as bytes or text such as \"4GB\"",
}

ACTOR_OPTIONS = {
    "restarts": "`restarts n`: restore a failed actor from its last checkpoint up to n times, replaying calls",
    "checkpoint": "`checkpoint every n calls`: snapshot the actor's state every n graph-level calls",
    "every": "`checkpoint every n calls`",
    "calls": "`checkpoint every n calls`",
    "idempotent": "`idempotent m1, m2`: these methods may be called again safely (read-only ones, say)",
}

SINK_FORMATS = {
    "json": "`-> json(\"out.json\")`: one JSON document (numpy arrays as lists, keys sorted)",
    "jsonl": "`-> jsonl(\"out.jsonl\")`: one JSON line per element",
    "text": "`-> text(\"out.txt\")`: one line per element",
    "parquet": "`-> parquet(\"out/scores\")`: a dataset folder, a part file per partition, `_SUCCESS` last",
    "csv": "`-> csv(\"out/scores\")`: a dataset folder, a part file per partition, `_SUCCESS` last",
}

PARAM_TYPES = {"int": "an integer parameter", "float": "a floating-point parameter",
               "str": "a text parameter", "bool": "a boolean parameter (true/false)"}

ALL = {**TOP_LEVEL, **STATEMENTS, **DATAFLOW, **BUILTINS, **CONNECTIVES, **STAGE_OPTIONS, **ACTOR_OPTIONS}
