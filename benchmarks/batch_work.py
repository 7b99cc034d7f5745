"""The batch functions of benchmarks/batches.pipe (pyarrow compute, no Python loop per row)."""

from __future__ import annotations


def scale(table):
    """``z = 2x + y``, appended."""
    import pyarrow.compute as pc
    return table.append_column("z", pc.add(pc.multiply(table["x"], 2.0), table["y"]))


def score(table):
    """The id, z, and whether z is above 1."""
    import pyarrow.compute as pc
    return table.select(["id", "z"]).append_column("high", pc.greater(table["z"], 1.0))
