"""Handwritten digits (scikit-learn's bundled copy, no download): a softmax classifier
trained by a parameter server, then a pool of model actors scoring every image.

Used by examples/digits.pipe. Rows are plain dicts; the batch functions get pandas
DataFrames (``map_batches ... as pandas``) and give DataFrames back.
"""

from __future__ import annotations

import numpy as np

FEATURES, CLASSES = 64, 10


def images() -> list[dict]:
    """The 1,797 8x8 images: ``{"id", "label", "pixels"}`` (64 grey levels, 0..16)."""
    from sklearn.datasets import load_digits
    data = load_digits()
    return [{"id": i, "label": int(label), "pixels": [int(p) for p in pixels]}
            for i, (pixels, label) in enumerate(zip(data.data, data.target))]


def features(batch):
    """Pixels scaled to [0, 1]: the feature vector ``x`` of each image."""
    x = np.stack(batch["pixels"].to_numpy()) / 16.0
    return batch[["id", "label"]].assign(x=list(x))


def _design(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])  # a bias column


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def gradient(rows: list[dict], weights: np.ndarray) -> list[tuple]:
    """This partition's summed cross-entropy gradient and its row count."""
    if not rows:
        return [(np.zeros_like(weights), 0)]
    x = _design(np.array([r["x"] for r in rows]))
    y = np.eye(CLASSES)[[r["label"] for r in rows]]
    return [(x.T @ (_softmax(x @ weights) - y), len(rows))]


def add(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1]


def hit(row: dict) -> int:
    return int(row["predicted"] == row["label"])


def plus(a: int, b: int) -> int:
    return a + b


class SoftmaxServer:
    """The classifier's weights, updated by full-batch gradient steps."""

    def __init__(self, features: int = FEATURES, classes: int = CLASSES, rate: float = 0.5):
        self.w = np.zeros((features + 1, classes))
        self.rate = rate

    def weights(self) -> np.ndarray:
        return self.w.copy()

    def apply(self, total: tuple) -> None:
        grad, n = total
        self.w = self.w - self.rate * grad / n


class Classifier:
    """A loaded model: scores a batch of images with the weights it is given."""

    def predict(self, batch, weights: np.ndarray):
        probs = _softmax(_design(np.stack(batch["x"].to_numpy())) @ weights)
        return batch[["id", "label"]].assign(predicted=probs.argmax(axis=1), confidence=probs.max(axis=1).round(6))
