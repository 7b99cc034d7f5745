"""The functions and data of the overhead benchmark, shared by the pipec pipelines and
the hand-written engine programs (so both do the same work on the same data)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

VOCABULARY = [f"w{i:03d}" for i in range(500)]


# ---- mapreduce: x -> (x*x) % 1000003; keep even; global sum; count per value % 100


# The workloads' sizes as the issues define them ('full'), and a quick variant for a smoke run.
SIZES = {
    "full": {"mapreduce": {"n": 2_000_000, "parts": 16},
             "paramserver": {"rows": 200_000, "rounds": 20},
             "wordcount": {"lines": 200_000, "parts": 8, "n": 20}},
    "quick": {"mapreduce": {"n": 100_000, "parts": 16},
              "paramserver": {"rows": 20_000, "rounds": 5},
              "wordcount": {"lines": 10_000, "parts": 8, "n": 20}},
}


def square_mod(x: int) -> int:
    return (x * x) % 1000003


def is_even(x: int) -> bool:
    return x % 2 == 0


def bucket(x: int):
    return x % 100, 1


def bucket_key(x: int) -> int:
    return x % 100


# ---- paramserver: synchronous SGD for linear regression, weights in an actor


def make_rows(rows: int, features: int, seed: int):
    """(X, y) batches of 1,000 rows: y = X @ w_true + noise (numpy, fixed seed)."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=features)
    X = rng.normal(size=(rows, features))
    y = X @ w_true + 0.01 * rng.normal(size=rows)
    return [(X[i:i + 1000], y[i:i + 1000]) for i in range(0, rows, 1000)]


def gradient(batch, weights):
    X, y = batch
    return X.T @ (X @ weights - y), len(y)


def add_grads(a, b):
    return a[0] + b[0], a[1] + b[1]


class ParameterServer:
    def __init__(self, features: int, rate: float):
        self.w = np.zeros(features)
        self.rate = rate

    def weights(self):
        return self.w

    def apply(self, total):
        grad, n = total
        self.w = self.w - self.rate * grad / n
        return True


class BigParameterServer(ParameterServer):
    """A parameter server whose state also holds a table of about ``mb`` MB (float64),
    like an embedding table: each ``apply`` updates one sixteenth of its rows, in place,
    so a snapshot holds far more than a call changes (benchmarks/snapshot_cost.py)."""

    def __init__(self, features: int, rate: float, mb: float):
        super().__init__(features, rate)
        self.table = np.zeros((max(16, int(mb * 2**20) // (8 * 64)), 64))
        self.updates = 0

    def apply(self, total):
        super().apply(total)
        rows = len(self.table) // 16
        start = self.updates % 16 * rows
        self.table[start:start + rows] += self.w[self.updates % len(self.w)]
        self.updates += 1
        return True

    def digest(self):
        """A summary of the whole state: both runs of the benchmark must agree on it."""
        return [float(self.table.sum()), int(self.updates), [float(x) for x in self.w]]


# ---- wordcount: generated lines from a fixed vocabulary, top 20 words


def write_corpus(path: str, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(VOCABULARY))]  # Zipf-like
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(lines):
            fh.write(" ".join(rng.choices(VOCABULARY, weights, k=rng.randint(5, 15))) + "\n")


def words(line: str) -> list[str]:
    return line.split()


def count_words(lines: list[str]) -> list[tuple[str, int]]:
    """One partition's (word, count) pairs: the per-partition combine, as dask.bag's
    ``frequencies`` does it, so both programs do the same work per word."""
    return list(Counter(word for line in lines for word in line.split()).items())


def one(word: str):
    return word, 1


def add(a: int, b: int) -> int:
    return a + b


def count(pair) -> int:
    return pair[1]
