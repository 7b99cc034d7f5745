"""The overhead benchmark's hand-written Dask programs (run them with
``python benchmarks/overhead.py --backend dask``).

What a Dask user writes: ``dask.bag`` for mapreduce and wordcount (``frequencies``,
``topk``), futures and an actor for the parameter server. The engine is one
:class:`distributed.Client` (a local cluster sized like pipec's embedded one, or
``--address``); pipec's runs borrow it.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

from benchmarks import workloads as w

# The client the programs run on, set while ``engine`` holds it.
_CLIENT: list = []

# The programs add the partial gradients in partition order, as pipec does: the weights
# must agree exactly.
WEIGHTS_RTOL = 0.0


@contextmanager
def engine(address: str | None):
    """Start a quiet local cluster (or join the scheduler at ``address``), yield a
    one-line description of it, and stop what was started on exit."""
    from pipec.backends.dask.engine import LocalShape, Session
    with Session(address, LocalShape.of_machine()) as client:
        _CLIENT[:] = [client]
        try:
            yield f"{len(client.scheduler_info()['workers'])} workers"
        finally:
            _CLIENT.clear()


def engine_options() -> dict:
    """The backend options that run pipec on the same client."""
    return {"client": _CLIENT[0]}


def mapreduce(n: int, parts: int):
    """(sum of the kept values, sorted (value % 100, count) pairs)."""
    import dask.bag as db
    evens = db.range(n, npartitions=parts).map(w.square_mod).filter(w.is_even)
    total, counts = _CLIENT[0].compute([evens.sum(), evens.map(w.bucket_key).frequencies()], sync=True)
    return total, sorted(counts)


def _take(items, i, k):
    return items[i * len(items) // k:(i + 1) * len(items) // k]


def _partition_gradient(batches, weights):
    return functools.reduce(w.add_grads, [w.gradient(b, weights) for b in batches])


def _sum_grads(grads):
    return functools.reduce(w.add_grads, grads)


def paramserver(rows: int, rounds: int, rate: float = 0.1):
    """The weights after ``rounds`` synchronous rounds over ``rows`` rows."""
    client = _CLIENT[0]
    data = client.submit(w.make_rows, rows, 10, 0)
    parts = [client.submit(_take, data, i, 8) for i in range(8)]
    ps = client.submit(w.ParameterServer, 10, rate, actor=True).result()
    for _ in range(rounds):
        weights = ps.weights().result()
        grads = [client.submit(_partition_gradient, p, weights, pure=False) for p in parts]
        total = client.submit(_sum_grads, grads, pure=False).result()
        ps.apply(total).result()
    return ps.weights().result()


def wordcount(path: str, parts: int, n: int):
    """The ``n`` most frequent (word, count) pairs of the file at ``path``."""
    import dask.bag as db
    size = os.path.getsize(path)
    lines = db.read_text(path, blocksize=-(-size // parts))
    top = lines.map(w.words).flatten().frequencies().topk(n, key=1)
    return _CLIENT[0].compute(top, sync=True)


def parquet(src: str, dst: str) -> None:
    """benchmarks/batches.pipe as a Dask user writes it: ``dask.dataframe`` reads the
    Parquet dataset, computes ``z = 2x + y`` and ``high = z > 1`` as column arithmetic,
    and writes a Parquet dataset (on the client ``engine`` holds, Dask's default)."""
    import dask.dataframe as dd
    df = dd.read_parquet(src, columns=["id", "x", "y"])
    df = df.assign(z=df.x * 2.0 + df.y)[["id", "z"]]
    df.assign(high=df.z > 1.0).to_parquet(dst, write_index=False)
