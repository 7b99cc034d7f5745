"""Warnings about a program that compiles: code that does nothing, and calls a retry repeats.

They run on the IR the builder made: an alias never used, a stage or value whose result
reaches no sink and no actor, a stage whose retried tasks call an actor again through a
handle, and a sink whose content depends on the order in which tasks reached an actor.
That last lint also marks the sink ``schedule_dependent`` in the IR, so the conformance
suite compares it by a property, not by bytes.
"""

from __future__ import annotations

from typing import Mapping

from pipec.dsl.source import Span
from pipec.compiler import ir
from pipec.compiler.reporter import Reporter


def unused_aliases(aliases: Mapping[str, tuple[str, Span]], used: set[str], report: Reporter) -> None:
    """Warn about each ``use ... as alias`` (``aliases``: alias -> (module, span)) whose
    alias is not in ``used``."""
    for alias, (path, span) in aliases.items():
        if alias not in used:
            report.warn(f"module alias `{alias}` is never used", span, code="unused-alias")


def unused_results(graph: ir.IR, loops: Mapping[str, ir.Loop], name_spans: Mapping[str, Span],
                   report: Reporter) -> None:
    """Warn about the named stages and values of ``graph`` whose results reach no sink, no
    actor call, no var and no loop's count or condition (``loops``); ``name_spans`` says
    where each node was named, for the warning's caret."""
    useful: set[str] = set()
    roots = [n for n, op in graph.items() if isinstance(op, (ir.Sink, ir.ActorCall, ir.PoolCall, ir.Rebind))]
    for loop in loops.values():
        for operand in (loop.until, loop.count, loop.when):
            if isinstance(operand, ir.NodeRef):
                roots.append(operand.node)
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in useful:
            continue
        useful.add(node)
        stack.extend(graph.predecessors(node))
    for node, op in graph.items():
        if node in useful or op.name is None or node != op.name:
            continue
        if isinstance(op, (ir.Param, ir.RoundIndex, ir.Actor)):
            continue
        if isinstance(op, ir.Elementwise) and op.options.effectful:
            continue
        report.warn(f"`{node}` is computed but never used", _name_span(node, op, name_spans),
                    "use it in a sink or an actor call, or remove it", code="unused")


def mark_schedule_dependent(graph: ir.IR, sinks: list[str], name_spans: Mapping[str, Span],
                            report: Reporter) -> None:
    """Mark each of the ``sinks`` of ``graph`` that reads state an actor gathered through
    handles as schedule-dependent (it changes the sink's op in ``graph``), and warn."""
    handle_actors = {src for src, dst, _, kind in graph.edges()
                     if kind == "actor" and isinstance(graph.op(dst), ir.Elementwise)
                     and graph.op(dst).pool is None}
    if not handle_actors:
        return
    # What the actors' state reaches, along every edge but the loop-carried ones.
    tainted = set(handle_actors)
    stack = list(handle_actors)
    while stack:
        for dst in graph.consumers(stack.pop()):
            if dst not in tainted:
                tainted.add(dst)
                stack.append(dst)
    for node in sinks:
        if node in tainted:
            op = graph.op(node)
            graph.replace(node, op.model_copy(update={"schedule_dependent": True}))
            report.warn(f"sink `{node}` depends on the order in which tasks reached an actor",
                        _name_span(node, op, name_spans),
                        "its content may differ from run to run; compare it by a property, not by bytes",
                        code="schedule-dependent")


def _name_span(node: str, op: ir.Op, name_spans: Mapping[str, Span]) -> Span | None:
    """Where ``node``'s name is defined (``stage >grads< = ...``), else its statement."""
    if node in name_spans:
        return name_spans[node]
    s = op.span
    return Span(s.line, s.column, s.end_line, s.end_column, 0, 0) if s else None
