"""The overhead benchmark's hand-written Ray programs (run them with
``python benchmarks/overhead.py --backend ray``).

What a Ray core user writes: one remote task per block, ``Counter`` merges on the driver,
the parameter server as an actor whose weights reach the tasks by reference. The engine
is the Ray runtime of this process (embedded, or joined at ``--address``); pipec's runs
reuse it.
"""

from __future__ import annotations

import functools
from collections import Counter
from contextlib import contextmanager

from benchmarks import workloads as w

# The programs add the partial gradients in partition order, as pipec does: the weights
# must agree exactly.
WEIGHTS_RTOL = 0.0


@contextmanager
def engine(address: str | None):
    """Start an embedded Ray runtime (or join the one at ``address``), yield a one-line
    description of it, and stop what was started on exit."""
    from pipec.backends.ray.engine import start_runtime, stop_runtime
    start_runtime(address)
    try:
        import ray
        yield f"{int(ray.cluster_resources().get('CPU', 0))} CPUs"
    finally:
        stop_runtime()


def engine_options() -> dict:
    """The backend options that run pipec on the same runtime: nothing, it reuses this
    process's."""
    return {}


@functools.lru_cache(maxsize=None)
def _remote():
    """The programs' remote functions and actor, made once. The workload functions travel
    with them by value, as Ray's docs advise for a module the workers cannot import
    (a Ray started from another folder does not have this repository on its path)."""
    import ray
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(w)

    @ray.remote
    def mapreduce_part(lo: int, hi: int):
        evens = [y for y in map(w.square_mod, range(lo, hi)) if w.is_even(y)]
        return sum(evens), Counter(map(w.bucket_key, evens))

    @ray.remote
    def gradient_part(batches, weights):
        return functools.reduce(w.add_grads, [w.gradient(b, weights) for b in batches])

    @ray.remote
    def wordcount_part(lines):
        return Counter(word for line in lines for word in w.words(line))

    class Remote:
        mapreduce = mapreduce_part
        gradient = gradient_part
        wordcount = wordcount_part
        server = ray.remote(w.ParameterServer)
    return Remote


def _blocks(items, k: int) -> list:
    return [items[i * len(items) // k:(i + 1) * len(items) // k] for i in range(k)]


def mapreduce(n: int, parts: int):
    """(sum of the kept values, sorted (value % 100, count) pairs)."""
    import ray
    results = ray.get([_remote().mapreduce.remote(i * n // parts, (i + 1) * n // parts) for i in range(parts)])
    counts = Counter()
    for _, part in results:
        counts.update(part)
    return sum(total for total, _ in results), sorted(counts.items())


def paramserver(rows: int, rounds: int, rate: float = 0.1):
    """The weights after ``rounds`` synchronous rounds over ``rows`` rows."""
    import ray
    remote = _remote()
    parts = [ray.put(block) for block in _blocks(w.make_rows(rows, 10, 0), 8)]
    ps = remote.server.remote(10, rate)
    for _ in range(rounds):
        weights = ps.weights.remote()  # passed by reference: no trip through the driver
        grads = ray.get([remote.gradient.remote(p, weights) for p in parts])
        ray.get(ps.apply.remote(functools.reduce(w.add_grads, grads)))
    result = ray.get(ps.weights.remote())
    ray.kill(ps)
    return result


def wordcount(path: str, parts: int, n: int):
    """The ``n`` most frequent (word, count) pairs of the file at ``path``."""
    import ray
    with open(path, encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in fh]
    counters = ray.get([_remote().wordcount.remote(block) for block in _blocks(lines, parts)])
    total = Counter()
    for part in counters:
        total.update(part)
    return sorted(total.items(), key=lambda kv: -kv[1])[:n]


def _score_batch(table):
    from benchmarks.batch_work import scale, score
    return score(scale(table))


def parquet(src: str, dst: str) -> None:
    """benchmarks/batches.pipe as a Ray user writes it: Ray Data reads the Parquet
    dataset, runs the same pyarrow functions per block (``map_batches`` on Arrow tables),
    and writes a Parquet dataset."""
    import ray.data
    from ray import cloudpickle
    from benchmarks import batch_work
    cloudpickle.register_pickle_by_value(batch_work)
    import logging
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # a terminal of bars and INFO lines is not part of the figure
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    (ray.data.read_parquet(src, columns=["id", "x", "y"])
     .map_batches(_score_batch, batch_format="pyarrow", batch_size=None)
     .write_parquet(dst))
