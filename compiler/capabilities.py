"""Which language features a pipeline uses, so a backend can refuse gaps before running.

A backend declares the features it supports as data (``Backend.capabilities``); the
check compares that set with :func:`features_used` and reports each gap at the source
position that needs it.
"""

from __future__ import annotations

from pipec.compiler import ir

FEATURES: dict[str, str] = {
    "actor": "stateful actors with graph-level calls",
    "actor_checkpoint": "actor checkpoints (`checkpoint every N calls`)",
    "actor_pool": "actor pools serving stages (`actor pool ... x N`)",
    "actor_handle": "an actor handle passed into a stage (`with name = actor`)",
    "pool_each": "calls to every member of an actor pool (`pool.each.method(...)`)",
    "loop": "loops (`repeat`)",
    "loop_until": "conditional loops (`repeat N until ...`)",
    "var": "loop variables (`var`)",
    "sharded_source": "sharded sources (called once per partition on the workers)",
    "keyed": "keyed operations (`reduce_by_key`, `group_by_key`, `join`, `distinct`)",
    "timeout": "per-stage `timeout`",
    "gpus": "GPU resources",
    "resume": "continuing a run whose driver died (`pipec run --resume RUN`)",
}


def features_used(graph: ir.IR) -> dict[str, list[ir.SpanModel | None]]:
    """Feature name -> spans of the operations that need it."""
    used: dict[str, list] = {}

    def need(feature: str, op: ir.Op | ir.Loop) -> None:
        used.setdefault(feature, []).append(op.span)

    for node, op in graph.items():
        if isinstance(op, ir.Actor):
            need("actor_pool" if op.pool_size is not None else "actor", op)
            if op.checkpoint_every:
                need("actor_checkpoint", op)
        elif isinstance(op, ir.Elementwise):
            if any(graph.edge_kind(ref.node, node, f"bindings.{key}") == "actor"
                   for key, ref in op.bindings.items() if isinstance(ref, ir.NodeRef)):
                need("actor_handle", op)
        elif isinstance(op, ir.PoolCall):
            need("pool_each", op)
        elif isinstance(op, (ir.ReduceByKey, ir.GroupByKey, ir.Join, ir.Distinct)):
            need("keyed", op)
        elif isinstance(op, ir.Var):
            need("var", op)
        elif isinstance(op, ir.Source) and op.sharded:
            need("sharded_source", op)
        options = getattr(op, "options", None)
        if options is not None:
            if options.timeout is not None:
                need("timeout", op)
            if options.resources.gpus:
                need("gpus", op)
    for loop in graph.info.loops.values():
        need("loop", loop)
        if loop.until is not None:
            need("loop_until", loop)
    return used
