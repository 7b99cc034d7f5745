"""Linear regression by synchronous SGD: data, gradients and the parameter server."""

import numpy as np


def make_batches(rows: int, features: int, seed: int, batch: int = 500):
    """Synthetic rows y = X @ w_true + noise, cut into batches of ``batch`` rows."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=features)
    X = rng.normal(size=(rows, features))
    y = X @ w_true + 0.01 * rng.normal(size=rows)
    return [(X[i:i + batch], y[i:i + batch]) for i in range(0, rows, batch)]


def gradient(batch, weights):
    """Sum of squared-error gradients over one batch, and its row count."""
    X, y = batch
    return X.T @ (X @ weights - y), len(y)


def add(a, b):
    return a[0] + b[0], a[1] + b[1]


class ParameterServer:
    """Holds the weights; applies one averaged gradient per round."""

    def __init__(self, features: int, rate: float):
        self.w = np.zeros(features)
        self.rate = rate
        self.updates = 0

    def weights(self):
        return self.w

    def apply(self, total):
        grad, n = total
        self.w = self.w - self.rate * grad / n
        self.updates += 1
        return self.updates


def make_held_out(rows: int, features: int, seed: int, batch: int = 500):
    """Rows of the same model as ``make_batches(seed=seed)`` (the same w_true), drawn
    afresh: data the training never sees, for evaluation."""
    w_true = np.random.default_rng(seed).normal(size=features)
    rng = np.random.default_rng([seed, 1])
    X = rng.normal(size=(rows, features))
    y = X @ w_true + 0.01 * rng.normal(size=rows)
    return [(X[i:i + batch], y[i:i + batch]) for i in range(0, rows, batch)]


def squared_error(batch, weights):
    """The sum of squared residuals over one batch, and its row count."""
    X, y = batch
    r = X @ weights - y
    return float(r @ r), len(y)


def error_row(batch, weights, epoch):
    """One held-out batch's squared error as a table row (for a dataset sink)."""
    sse, n = squared_error(batch, weights)
    return {"epoch": epoch, "sse": sse, "rows": n}


def mean(total):
    """A (sum, count) pair's mean."""
    return total[0] / total[1]
