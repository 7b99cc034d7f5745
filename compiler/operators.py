"""What pipec's operators (``+``, ``==``, ``and``, ``not``...) mean on Python values.

One table, read by the compiler when it folds a constant expression and by every
backend when it computes an expression node, so ``2 ** 10`` means the same before and
while running. Dask, Ray and Spark workers import it through the runtime: it must stay
pure Python and import nothing from pipec and nothing heavy (no pydantic, no networkx).
"""

from __future__ import annotations

import operator
from typing import Callable

OPERATORS: dict[str, Callable] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
    "neg": operator.neg, "pos": operator.pos, "not": operator.not_,
}


def apply_operator(op: str, *values):
    """The value of the pipec operator ``op`` (an IR ``Expr.operator``: ``"+"``, ``"neg"``,
    ``"and"``, ``"list"``...) on the Python ``values``; raises what Python raises, and
    OverflowError for an integer power whose exponent is beyond 10,000."""
    if op == "and":
        return values[0] and values[1]
    if op == "or":
        return values[0] or values[1]
    if op == "list":
        return list(values)
    if op == "**" and all(isinstance(v, int) for v in values) and abs(values[1]) > 10_000:
        raise OverflowError("exponent too large")
    return OPERATORS[op](*values)
