"""What the compiler knows about values before anything runs.

Literals in parameter defaults, the static Python type of an operator's result, and
constant expressions folded at compile time with the very operators the runtime applies
(:mod:`pipec.compiler.operators`), so ``partitions 2 * 4`` is checked as 8.
"""

from __future__ import annotations

from pipec.dsl import ast
from pipec.compiler.operators import apply_operator

# Returned by literal_value for an expression that is not a literal (None is a literal).
NOT_LITERAL = object()

# Folding runs while checking, so a slip like `10 ** 10 ** 6` or `"ab" * 10 ** 9` must be
# refused before it is computed, not hang the checker or exhaust memory. Python also refuses
# to print an int of more than 4300 digits, which the IR's JSON and every sink need.
MAX_CONSTANT_BITS = 10_000  # about 3000 digits
MAX_CONSTANT_ITEMS = 1_000_000


def unparen(expr):
    """The AST expression ``expr`` with any parentheses around it taken off."""
    while isinstance(expr, ast.Paren):
        expr = expr.inner
    return expr


def literal_value(expr):
    """The Python value of a literal AST expression (a negative number included), else
    :data:`NOT_LITERAL`."""
    expr = unparen(expr)
    if isinstance(expr, ast.Literal):
        return expr.value
    if isinstance(expr, ast.UnaryOp) and expr.op == "-":
        inner = literal_value(expr.operand)
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return -inner
    return NOT_LITERAL


def fits(value, type_name: str) -> bool:
    """Whether ``value`` is a valid value of the parameter type ``type_name`` (int, float,
    str or bool); an int fits a float, a bool fits no number."""
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "str":
        return isinstance(value, str)
    return isinstance(value, bool)


def show(value) -> str:
    """``value`` as a ``.pipe`` file writes it: ``true``, ``none``, ``'text'``, ``3``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return repr(value)


def result_type(op: str, left: type | None, right: type | None) -> type | None:
    """The Python type of ``left op right`` given its operands' types, or None when it is
    not known statically."""
    if op in ("==", "!=", "<", "<=", ">", ">="):
        return bool
    if op in ("and", "or"):
        return bool if left is bool and right is bool else None
    if op == "/":
        return float
    if left is int and right is int:
        return int
    if {left, right} <= {int, float} and None not in (left, right):
        return float
    if op == "+" and left is str and right is str:
        return str
    return None


def fold(op: str, *values):
    """The value of the operator ``op`` on constant ``values``, computed at compile time
    exactly as the runtime would. Raises what the operator raises, and OverflowError
    instead of building a huge constant."""
    if len(values) == 2:
        a, b = values
        if op == "**" and isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0 \
                and a.bit_length() * b > MAX_CONSTANT_BITS:
            raise OverflowError("the result would have more than 3000 digits")
        if op == "*":
            for seq, n in ((a, b), (b, a)):
                if isinstance(seq, (str, list)) and isinstance(n, int) and len(seq) * n > MAX_CONSTANT_ITEMS:
                    raise OverflowError(f"the result would hold more than {MAX_CONSTANT_ITEMS:,} items")
    value = apply_operator(op, *values)
    if isinstance(value, int) and value.bit_length() > MAX_CONSTANT_BITS:
        raise OverflowError("the result has more than 3000 digits")
    return value


def reason(exc: Exception) -> str:
    """Why a constant could not be folded, from the exception ``fold`` raised, without the
    errno tuple some carry: (34, 'Result too large')."""
    text = exc.args[-1] if exc.args and isinstance(exc.args[-1], str) else str(exc)
    return text[:1].lower() + text[1:] if text else type(exc).__name__
