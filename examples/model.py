"""A stand-in for a loaded model: expensive to build, so a pool keeps a few alive."""

import random


class Scorer:
    def __init__(self, seed: int = 0):
        rng = random.Random(seed)
        self.weight = round(rng.uniform(0.5, 1.5), 6)
        self.bias = round(rng.uniform(-1, 1), 6)
        self.batches = 0

    def predict(self, batch: list[int]) -> list[dict]:
        """Score a batch of row ids."""
        self.batches += 1
        return [{"id": i, "score": round(i * self.weight + self.bias, 6)} for i in batch]
