"""Stage and actor options: ``retries``, ``timeout``, ``effectful``, ``resources { ... }``
on a stage or in ``defaults``; ``restarts``, ``checkpoint every N calls`` and
``idempotent`` in an actor block. Each is read into its IR form and checked here; a bad
option is an error, and the rest of the options still apply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

from pipec.dsl.diagnostics import did_you_mean
from pipec.dsl.source import Span
from pipec.compiler import ir
from pipec.compiler.reporter import Reporter

RESOURCES = ("cpus", "gpus", "memory")
# Matched against the stripped text: blanks at both ends made the regex quadratic.
_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?i?B?)", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "KIB": 2**10, "M": 1e6, "MB": 1e6, "MIB": 2**20,
                 "G": 1e9, "GB": 1e9, "GIB": 2**30, "T": 1e12, "TB": 1e12, "TIB": 2**40}


@dataclass(frozen=True)
class ActorOptions:
    """The options of one actor block, as the IR's ``Actor`` takes them."""

    restarts: int = 0
    checkpoint_every: int | None = None
    idempotent: list[str] = field(default_factory=list)


def stage_options(options, base: ir.StageOptions, report: Reporter) -> ir.StageOptions:
    """``base`` (the pipeline's defaults) updated by a stage's AST ``options``; a repeated or
    invalid option is reported to ``report`` and the others still apply."""
    update: dict = {}
    seen: dict[str, Span] = {}
    for opt in options:
        if opt.kind in seen:
            report.error(f"`{opt.kind}` is given twice", opt.span, f"first at line {seen[opt.kind].line}",
                         code="duplicate-option")
        seen[opt.kind] = opt.span
        if opt.kind == "retries":
            update["retries"] = opt.value.value
        elif opt.kind == "timeout":
            if opt.value.value <= 0:
                report.error("`timeout` needs a positive number of seconds", opt.value.span, code="bad-option-value")
            else:
                update["timeout"] = float(opt.value.value)
        elif opt.kind == "effectful":
            update["effectful"] = True
        elif opt.kind == "resources":
            update["resources"] = base.resources.merged(resources(opt.value, report))
    return base.model_copy(update=update) if update else base  # frozen: shared as it is


def resources(items, report: Reporter) -> ir.Resources:
    """The ``resources { cpus = 2, memory = "2GB" }`` block's AST ``items`` (name, literal
    pairs) as IR resources; an unknown or unreadable entry is reported and left out."""
    values: dict = {}
    for name, literal in items:
        key = name.text
        if key not in RESOURCES:
            report.error(f"unknown resource `{key}`", name.span,
                         did_you_mean(key, RESOURCES) or "resources are cpus, gpus and memory", code="unknown-resource")
            continue
        value = literal.value
        if key == "memory":
            value = memory_bytes(value)
            if value is None:
                report.error(f"cannot read memory size {_clip(literal.raw)}", literal.span,
                             'write a number of bytes or a string like "2GB" or "512MiB"', code="bad-option-value")
                continue
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            report.error(f"`{key}` needs a non-negative number", literal.span, code="bad-option-value")
            continue
        values[key] = value
    return ir.Resources(**values)


def memory_bytes(value) -> int | None:
    """A memory size (a number of bytes, or text like ``"2GB"``, ``"512MiB"``) in bytes;
    None when it cannot be read or is negative or infinite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if 0 <= value < math.inf else None
    match = _MEMORY.fullmatch(str(value).strip())
    if not match:
        return None
    unit = match.group(2).upper()
    if unit not in _MEMORY_UNITS:
        return None
    size = float(match.group(1)) * _MEMORY_UNITS[unit]
    return int(size) if size < math.inf else None


def actor_options(options, pool: bool, report: Reporter,
                  check_method: Callable[[str, Span], None]) -> ActorOptions:
    """An actor block's AST ``options`` read into :class:`ActorOptions`. ``check_method``
    is called with each method named `idempotent` and its span (it raises to stop the
    statement when the class has no such method); a repeated option, a checkpoint interval
    below 1 and a checkpoint on a ``pool`` are reported to ``report``."""
    restarts, checkpoint, idempotent = 0, None, []
    seen: dict[str, Span] = {}
    for opt in options:
        if opt.kind in seen:
            report.error(f"`{opt.kind}` is given twice", opt.span, f"first at line {seen[opt.kind].line}",
                         code="duplicate-option")
        seen[opt.kind] = opt.span
        if opt.kind == "restarts":
            restarts = opt.value.value
        elif opt.kind == "checkpoint":
            checkpoint = opt.value.value
            if checkpoint < 1:
                report.error("checkpoint every N calls needs N >= 1", opt.value.span, code="bad-option-value")
                checkpoint = None
        elif opt.kind == "idempotent":
            for method in opt.value:
                check_method(method.text, method.span)
                idempotent.append(method.text)
    if pool and checkpoint:
        report.warn("a pool member serves stages, not graph-level calls; `checkpoint` has nothing to "
                    "replay", seen["checkpoint"], "pool members are rebuilt from their constructor",
                    code="checkpoint-on-pool")
    return ActorOptions(restarts, checkpoint, idempotent)


def _clip(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters for a message (the caret shows the rest)."""
    return text if len(text) <= width else text[:width - 3] + "..."
