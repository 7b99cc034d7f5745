"""The overhead benchmark's hand-written PySpark programs (run them with
``python benchmarks/overhead.py --backend spark``).

What the RDD programming guide teaches: chained transformations, ``broadcast`` for the
weights, ``treeReduce`` (default depth), ``reduceByKey`` and ``top``; the parameter
server lives in the driver, as in any PySpark program. The guide would also ``cache()``
the data read twice (mapreduce) or every round (paramserver); measured here, that made
both programs slower (2.36 s against 2.10 s, 5.79 s against 5.41 s), so the baseline
leaves it out: pipec is compared with the faster variant. The engine is one SparkContext
(the embedded ``local[N,F]``, or the master at ``--address``), its JVM output in a log
file; pipec's runs reuse it.

Measured on a 2-core machine (embedded local[2,4], full sizes, medians of 5, while the
machine was otherwise quiet): mapreduce 2.47 s hand-written, 2.29 s pipec (0.93);
paramserver 5.61 s, 3.76 s (0.67); wordcount 1.06 s, 0.63 s (0.59). On paramserver the
difference is the reduction (one stage and a combine on the driver, against
treeReduce's two stages); mapreduce does the same Python work both ways (its collection
read twice is computed twice in both), so it stays near 1.
"""

from __future__ import annotations

import operator
import tempfile
from contextlib import contextmanager
from pathlib import Path

from benchmarks import workloads as w

# treeReduce combines the partial gradients in task-completion order: the weights agree
# up to rounding.
WEIGHTS_RTOL = 1e-12


@contextmanager
def engine(address: str | None):
    """Start a SparkContext on ``address`` (default: the embedded ``local[N,F]``), yield
    a one-line description of it, and stop it on exit."""
    from pipec.backends.spark.session import embedded_master, start
    master = address or embedded_master()
    session = start(master, log_path=str(Path(tempfile.gettempdir()) / "pipec-bench-spark.log"))
    try:
        yield f"on {master}"
    finally:
        session.stop()


def engine_options() -> dict:
    """The backend options that run pipec on the same context: nothing, it reuses the active
    one."""
    return {}


def _sc():
    """The active SparkContext. The workload functions travel with the tasks by value,
    as for a module the Python workers cannot import (a context started from another
    folder does not have this repository on its workers' path)."""
    from pyspark import cloudpickle
    from pipec.backends.spark.session import active
    cloudpickle.register_pickle_by_value(w)
    return active()


def mapreduce(n: int, parts: int):
    """(sum of the kept values, sorted (value % 100, count) pairs)."""
    sc = _sc()
    evens = sc.parallelize(range(n), parts).map(w.square_mod).filter(w.is_even)
    total = evens.reduce(operator.add)
    counts = evens.map(w.bucket).reduceByKey(operator.add).collect()
    return total, sorted(counts)


def paramserver(rows: int, rounds: int, rate: float = 0.1):
    """The weights after ``rounds`` synchronous rounds over ``rows`` rows."""
    sc = _sc()
    batches = sc.parallelize(w.make_rows(rows, 10, 0), 8)
    ps = w.ParameterServer(10, rate)
    for _ in range(rounds):
        weights = sc.broadcast(ps.weights())
        total = batches.map(lambda b: w.gradient(b, weights.value)).treeReduce(w.add_grads)
        ps.apply(total)
        weights.unpersist()
    return ps.weights()


def wordcount(path: str, parts: int, n: int):
    """The ``n`` most frequent (word, count) pairs of the file at ``path``."""
    sc = _sc()
    counts = sc.textFile(path, parts).flatMap(w.words).map(w.one).reduceByKey(w.add)
    return counts.top(n, key=w.count)


def parquet(src: str, dst: str) -> None:
    """benchmarks/batches.pipe as a Spark user writes it: DataFrame column expressions
    (run in the JVM, no Python per row or batch) between ``spark.read.parquet`` and
    ``write.parquet``."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    _sc()
    spark = SparkSession.builder.getOrCreate()  # on the active context
    df = spark.read.parquet(src).select("id", (F.col("x") * 2.0 + F.col("y")).alias("z"))
    df.withColumn("high", F.col("z") > 1.0).write.parquet(dst)
