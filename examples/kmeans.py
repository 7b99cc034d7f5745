"""k-means helpers: points, nearest centre, per-cluster sums, and the centres actor."""

import math
import random


def make_points(n: int, seed: int):
    """n 2-d points around three blobs."""
    rng = random.Random(seed)
    blobs = [(0.0, 0.0), (5.0, 5.0), (0.0, 6.0)]
    return [(round(cx + rng.gauss(0, 1), 6), round(cy + rng.gauss(0, 1), 6))
            for cx, cy in (blobs[i % 3] for i in range(n))]


def closest(point, centres):
    """(index of the nearest centre, (x, y, 1)) for summing."""
    best = min(range(len(centres)), key=lambda i: math.dist(point, centres[i]))
    return best, (point[0], point[1], 1)


def add_stats(a, b):
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


class Centres:
    """The current centres; knows when they stopped moving."""

    def __init__(self, k: int, seed: int, tolerance: float = 1e-4):
        rng = random.Random(seed)
        self.centres = [(rng.uniform(-1, 6), rng.uniform(-1, 7)) for _ in range(k)]
        self.tolerance = tolerance
        self.moved = math.inf

    def centres_now(self):
        return list(self.centres)

    def update(self, stats):
        """``stats``: [(cluster, (sum_x, sum_y, count))] sorted by cluster."""
        new = list(self.centres)
        for cluster, (sx, sy, count) in stats:
            new[cluster] = (sx / count, sy / count)
        self.moved = max(math.dist(a, b) for a, b in zip(self.centres, new))
        self.centres = new

    def converged(self) -> bool:
        return self.moved < self.tolerance
