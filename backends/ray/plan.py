"""The Ray plan: what ``pipec compile``/``graph`` show (text, JSON, a graph of steps) and
``run``, which starts the engine and hands over to the driver."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from pipec.compiler import ir
from pipec.compiler.capabilities import FEATURES
from pipec.compiler.schedule import Block, blocks
from pipec.backends.base import Backend, Plan, Progress, RunResult
from pipec.backends.runtime import semantics
from pipec.backends.ray.driver import RayDriver
from pipec.backends.ray.engine import start_runtime, stop_runtime
from pipec.backends.ray.lowering import Chain, Lowering, actor_handles, read_in_tasks


@dataclass
class Step:
    """One line of the lowered plan: a set of Ray tasks, an actor, an actor call, or work
    the driver does. ``deps`` are ``(step id, how)``: ``each`` (task i reads partition
    i), ``all`` (every task reads every partition: a shuffle), ``group`` (FAN_IN to one),
    ``gather`` (the driver reads them all), ``value`` (a broadcast value), ``actor``,
    ``order`` (program order on an actor) or ``carry`` (a loop variable's next round)."""

    id: str
    kind: str  # tasks | put | actor | pool | call | driver | sink
    what: str
    tasks: int | None = None
    options: dict = field(default_factory=dict)
    deps: list[tuple[str, str]] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    loop: str | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "what": self.what, "tasks": self.tasks,
                "options": self.options, "depends_on": [{"step": s, "how": h} for s, h in self.deps],
                "nodes": self.nodes}


class _Planner:
    """Walks the schedule and lists the steps the driver will take, using the same
    :class:`Lowering` decisions the driver uses."""

    def __init__(self, graph: ir.IR, params: dict[str, Any], low: Lowering):
        self.ir, self.params, self.low = graph, params, low
        self.steps: list[Step] = []
        self.made: dict[str, str] = {}  # IR node -> step id producing it (partitions or value)
        self.width: dict[str, int | None] = {}
        self.last_call: dict[str, str] = {}
        self.vars: dict[str, str] = {}

    # ---- static values

    def static(self, operand) -> Any:
        if operand is None:
            return None
        if isinstance(operand, ir.Lit):
            return operand.value
        op = self.ir.op(operand.node)
        if isinstance(op, ir.Param):
            return self.params.get(operand.node)
        if isinstance(op, ir.Const):
            return op.value
        if isinstance(op, ir.Expr):
            values = [self.static(o) for o in op.operands]
            if any(v is None for v in values):
                return None
            try:
                return semantics.apply_operator(op.operator, *values)
            except Exception:
                return None
        return None

    def text(self, operand) -> str:
        value = self.static(operand)
        if value is not None:
            return repr(value)
        return operand.node if isinstance(operand, ir.NodeRef) else repr(operand.value)

    def args_text(self, args, kwargs) -> str:
        parts = [self.text(a) for a in args] + [f"{k}={self.text(v)}" for k, v in kwargs.items()]
        return ", ".join(parts)

    def add(self, step: Step, loop: str | None) -> Step:
        step.loop = loop
        self.steps.append(step)
        return step

    def value_deps(self, operands) -> list[tuple[str, str]]:
        deps = []
        for operand in operands:
            if isinstance(operand, ir.NodeRef) and operand.node in self.made:
                deps.append((self.made[operand.node], "value"))
        return deps

    # ---- walk

    def walk(self, block: Block) -> None:
        for item in block.items:
            if isinstance(item, Block):
                self.walk(item)
            else:
                self.node(item, self.ir.op(item))

    def node(self, node: str, op: ir.Op) -> None:
        loop = op.loop
        handler = getattr(self, f"plan_{op.op}", None)
        if handler is not None:
            handler(node, op, loop)

    # ---- segments

    def head_text(self, chain: Chain) -> tuple[str, list[tuple[str, str]], int | None]:
        """How a segment's tasks get their input: text, dependencies, partition count."""
        head = chain.head
        op = self.ir.op(head)
        if not chain.head_fused:
            return f"{head}[i]", [(self.made[head], "each")], self.width.get(head)
        if isinstance(op, ir.Source):
            k = self.static(op.partitions)
            if op.kind == "range":
                return f"range({self.text(op.args[0])}) block i of {k if k is not None else '?'}", [], k
            if op.kind == "read_text":
                return (f"read_text({self.args_text(op.args, {})}) lines block i of {k if k is not None else '?'} "
                        f"(each task reads only its own bytes)", [], k)
            return (f"{op.fn.dotted}({self.args_text(op.args, op.kwargs)}, partition=i, partitions={k})",
                    [], k)
        # a fused shuffle: the merge side
        return self.merge_text(head, op)

    def merge_text(self, node: str, op: ir.Op) -> tuple[str, list[tuple[str, str]], int | None]:
        if isinstance(op, ir.Join):
            deps = [(self.made[f"{node}:left"], "all"), (self.made[f"{node}:right"], "all")]
            return "merge bucket i of every left and right partition (inner join by key)", deps, self.width[node]
        what = {ir.ReduceByKey: f"merge bucket i of every partition with {getattr(op, 'fn', None) and op.fn.dotted}"
                                f" (in partition order), sorted by key",
                ir.GroupByKey: "merge bucket i of every partition: values per key in input order, sorted by key",
                ir.Distinct: "merge bucket i of every partition: distinct elements, sorted"}[type(op)]
        return what, [(self.made[f"{node}:split"], "all")], self.width[node]

    def steps_text(self, steps: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str]]]:
        lines, deps = [], []
        for node in steps:
            op = self.ir.op(node)
            text = f"{op.kind} {op.fn.dotted}"
            if op.bindings:
                bound = []
                for name, operand in op.bindings.items():
                    if isinstance(operand, ir.NodeRef) and self.ir.op(operand.node).node_shape == ir.ACTOR:
                        bound.append(f"{name}=handle({operand.node})")
                        deps.append((self.made[operand.node], "actor"))
                    elif isinstance(operand, ir.NodeRef) and operand.node in self.made:
                        if isinstance(self.ir.op(operand.node), ir.ActorCall):
                            bound.append(f"{name}={operand.node} (the call's result object, by reference)")
                        else:
                            bound.append(f"{name}=ray.put({operand.node}) (once per value)")
                        deps.append((self.made[operand.node], "value"))
                    else:
                        bound.append(f"{name}={self.text(operand)}")
                text += f" with {', '.join(bound)}"
            lines.append(text)
        return lines, deps

    def segment(self, chain: Chain, owner: str | None, terminal: str, role: str, loop, count_override=None) -> Step:
        head, deps, k = self.head_text(chain)
        lines, more = self.steps_text(chain.steps)
        nodes = self.low.members(chain, owner)
        name = self.low.group(chain, owner, role)
        what = " -> ".join([head] + lines + ([terminal] if terminal else []))
        options = dict(self.low.options(nodes))
        timeout = self.low.timeout(nodes)
        if timeout is not None:
            options["timeout_s (in the task)"] = timeout
        step = Step(name, "tasks", what, count_override if count_override is not None else k, options,
                    deps + more, nodes)
        return self.add(step, loop)

    def terminal_text(self, owner: str, k) -> str:
        op = self.ir.op(owner)
        if isinstance(op, ir.Reduce):
            return f"fold {op.fn.dotted} (left to right)"
        if isinstance(op, ir.Count):
            return "len"
        if isinstance(op, ir.ReduceByKey):
            return f"reduce_by_key partial {op.fn.dotted}, split into {k} buckets by stable key hash"
        if isinstance(op, ir.GroupByKey):
            return f"split into {k} buckets by stable key hash"
        return f"split into {k} buckets by stable hash"

    def scan(self, step: Step, node: str) -> Step:
        """Extend the step computing ``node`` with its shared scan's branches, if any."""
        if node not in self.low.scans:
            return step
        keep, branches = self.low.scans[node]
        texts, members = [], []
        for branch in branches:
            lines, deps = self.steps_text(branch.steps)
            step.deps += [d for d in deps if d not in step.deps]
            texts.append(" -> ".join(lines + [self.terminal_text(branch.owner, step.tasks)])
                         + f" for {branch.owner}")
            members += list(branch.steps) + [branch.owner]
        step.id = f"{step.id}&{'+'.join(members)}"
        for branch in branches:
            self.made[f"{branch.owner}:scan"] = step.id
        step.nodes += members
        step.options = dict(self.low.options(step.nodes))
        step.what += ("; in the same pass: " + "; ".join(texts)
                      + ("" if keep else f" (the partitions of {node} are not kept: nothing else reads them)"))
        return step

    # ---- operations

    def plan_source(self, node, op: ir.Source, loop):
        k = self.static(op.partitions)
        self.width[node] = k
        if read_in_tasks(op):
            if node in self.low.fused:
                return
            step = self.scan(self.segment(Chain(node, (), True), None, "", "", loop), node)
            self.made[node] = step.id
            return
        what = {"read_text": f"read_text({self.args_text(op.args, {})})",
                "read_jsonl": f"read_jsonl({self.args_text(op.args, {})})"}.get(
            op.kind, f"{op.fn.dotted}({self.args_text(op.args, op.kwargs)})" if op.fn else op.kind)
        step = Step(node, "put", f"driver runs {what}, cuts it into {k if k is not None else '?'} contiguous "
                                 f"blocks, ray.put each", k, {},
                    self.value_deps(list(op.args) + list(op.kwargs.values())),
                    [node])
        self.made[node] = self.add(step, loop).id

    def plan_elementwise(self, node, op: ir.Elementwise, loop):
        if node in self.low.fused:
            return
        chain = self.low.chain(node, "input")
        self.width[node] = self.width.get(chain.head)
        if op.pool is not None:
            inp = op.input.node
            bound = ", ".join(op.bindings)
            pool = self.ir.op(op.pool.node)
            resend = 0 if op.options.effectful else max(op.options.retries, pool.restarts)
            step = Step(node, "pool", f"{inp}[i] -> {op.kind} {op.pool.node}.{op.method}"
                                      + (f" with {bound}" if bound else "")
                                      + " on the next free actor of the pool; a partition whose actor died is "
                                        f"sent again, up to {resend} times",
                        self.width.get(inp), {"retries": op.options.retries, "max_task_retries": 0},
                        [(self.made[inp], "each"), (self.made[op.pool.node], "actor")] + self.value_deps(
                            [v for v in op.bindings.values()]), [node])
            self.made[node] = self.add(step, loop).id
            return
        full = Chain(chain.head, chain.steps + (node,), chain.head_fused)
        step = self.scan(self.segment(full, None, "", "", loop), node)
        if actor_handles(self.ir, node, op):
            step.what += "  (the driver waits for it: later actor calls see its calls)"
        self.made[node] = step.id
        self.width[node] = step.tasks

    def _split(self, node, op, chain: Chain, key: str, terminal: str, loop, role="split") -> Step | None:
        if node in self.low.scanned:
            self.made[key] = self.made[f"{node}:scan"]
            return None
        invariant = self.low.invariant(node, chain)
        step = self.segment(chain, node, terminal, role, loop)
        if invariant:
            step.what += f"  (first round only: {chain.head} does not change in {loop}, so its buckets are reused)"
        self.made[key] = step.id
        return step

    def _merge(self, node, op, loop):
        if node in self.low.fused:
            return
        what, deps, k = self.merge_text(node, op)
        options = dict(self.low.options([node]))
        step = Step(f"{node}:merge", "tasks", what, k, options, deps, [node])
        self.made[node] = self.add(self.scan(step, node), loop).id

    def plan_reduce_by_key(self, node, op, loop):
        chain = self.low.chain(node, "input")
        _, _, k = self.head_text(chain)
        self._split(node, op, chain, f"{node}:split", f"reduce_by_key partial {op.fn.dotted}, split into {k} "
                                                      f"buckets by stable key hash", loop)
        self.width[node] = k
        self._merge(node, op, loop)

    def plan_group_by_key(self, node, op, loop):
        chain = self.low.chain(node, "input")
        _, _, k = self.head_text(chain)
        self._split(node, op, chain, f"{node}:split", f"split into {k} buckets by stable key hash", loop)
        self.width[node] = k
        self._merge(node, op, loop)

    def plan_distinct(self, node, op, loop):
        chain = self.low.chain(node, "input")
        _, _, k = self.head_text(chain)
        self._split(node, op, chain, f"{node}:split", f"split into {k} buckets by stable hash", loop)
        self.width[node] = k
        self._merge(node, op, loop)

    def plan_join(self, node, op, loop):
        left, right = self.low.chain(node, "left"), self.low.chain(node, "right")
        kl, kr = self.head_text(left)[2], self.head_text(right)[2]
        k = max(kl, kr) if kl is not None and kr is not None else None
        self._split(node, op, left, f"{node}:left", f"split into {k} buckets by stable key hash", loop, "split left")
        self._split(node, op, right, f"{node}:right", f"split into {k} buckets by stable key hash", loop,
                    "split right")
        self.width[node] = k
        self._merge(node, op, loop)

    def plan_union(self, node, op: ir.UnionAll, loop):
        widths = [self.width.get(p.node) for p in op.parts]
        self.width[node] = sum(widths) if all(w is not None for w in widths) else None
        step = Step(node, "driver", "the partitions of " + ", ".join(p.node for p in op.parts)
                    + ", one after the other (no tasks)", None, {}, [(self.made[p.node], "gather") for p in op.parts],
                    [node])
        self.made[node] = self.add(step, loop).id

    def plan_reduce(self, node, op: ir.Reduce, loop):
        chain = self.low.chain(node, "input")
        if node in self.low.scanned:
            k, prev, depth = self.width.get(chain.head), self.made[f"{node}:scan"], 0
        else:
            fold = self.segment(chain, node, f"fold {op.fn.dotted} (left to right)", "fold", loop)
            k, prev, depth = fold.tasks, fold.id, 0
        if k is not None:
            while k > semantics.FAN_IN:
                depth += 1
                k = math.ceil(k / semantics.FAN_IN)
                step = Step(f"{node}:combine{depth}", "tasks",
                            f"fold {op.fn.dotted} over partials {semantics.FAN_IN}*i .. {semantics.FAN_IN}*i+"
                            f"{semantics.FAN_IN - 1} of the level below, in partition order", k,
                            dict(self.low.options([node])), [(prev, "group")], [node])
                prev = self.add(step, loop).id
        step = Step(node, "driver", f"fetch the last {semantics.FAN_IN} partials or fewer and fold them with "
                                    f"{op.fn.dotted} in partition order", None, {}, [(prev, "gather")], [node])
        self.made[node] = self.add(step, loop).id

    def plan_count(self, node, op, loop):
        chain = self.low.chain(node, "input")
        source = self.made[f"{node}:scan"] if node in self.low.scanned else \
            self.segment(chain, node, "len", "count", loop).id
        step = Step(node, "driver", "sum of the partition counts", None, {}, [(source, "gather")], [node])
        self.made[node] = self.add(step, loop).id

    def _driver_value(self, node, op, what, loop, deps):
        step = Step(node, "driver", what, None, {}, deps, [node])
        self.made[node] = self.add(step, loop).id

    def plan_collect(self, node, op, loop):
        self._driver_value(node, op, f"fetch every partition of {op.input.node}", loop,
                           [(self.made[op.input.node], "gather")])

    def plan_top(self, node, op: ir.Top, loop):
        by = f" by {op.by.dotted}" if op.by else ""
        self._driver_value(node, op, f"fetch every partition of {op.input.node}, keep the top "
                                     f"{self.text(op.n)}{by}", loop,
                           [(self.made[op.input.node], "gather")] + self.value_deps([op.n]))

    def plan_expr(self, node, op: ir.Expr, loop):
        self._driver_value(node, op, f"driver computes {op.operator} of "
                                     f"{', '.join(self.text(o) for o in op.operands)}", loop,
                           self.value_deps(op.operands))

    def plan_call(self, node, op: ir.Call, loop):
        self._driver_value(node, op, f"driver calls {op.fn.dotted}({self.args_text(op.args, op.kwargs)})", loop,
                           self.value_deps(list(op.args) + list(op.kwargs.values())))

    def plan_round_index(self, node, op, loop):
        self._driver_value(node, op, f"the round number of {op.of_loop}", loop, [])

    def plan_actor(self, node, op: ir.Actor, loop):
        opts = self.low.actor_options(op, f"pipec.{self.ir.info.name}.{node}.RUN")
        opts.pop("name")
        early = " (started as the run begins: its arguments are known, so its process starts while " \
                "the driver loads sources)" if self.low.early(node) else ""
        if op.pool_size is not None:
            size = self.static(op.pool_size)
            step = Step(node, "pool", f"{size if size is not None else '?'} Ray actors "
                                      f"{op.cls.dotted}({self.args_text(op.args, op.kwargs)}){early}", size, opts,
                        self.value_deps(list(op.args) + list(op.kwargs.values())), [node])
        else:
            extra = f", snapshot every {op.checkpoint_every} calls" if op.checkpoint_every else ""
            step = Step(node, "actor", f"Ray actor {op.cls.dotted}({self.args_text(op.args, op.kwargs)}){extra}"
                                       f"{early}",
                        None, opts, self.value_deps(list(op.args) + list(op.kwargs.values())), [node])
            if op.checkpoint_every:
                step.options["checkpoint_every"] = op.checkpoint_every
        self.made[node] = self.add(step, loop).id

    def plan_actor_call(self, node, op: ir.ActorCall, loop):
        actor = op.actor.node
        deps = [(self.made[actor], "actor")] + self.value_deps(list(op.args) + list(op.kwargs.values()))
        if actor in self.last_call:
            deps.append((self.last_call[actor], "order"))
        idem = " (declared idempotent)" if op.method in self.ir.op(actor).idempotent else ""
        step = Step(node, "call", f"{actor}.{op.method}({self.args_text(op.args, op.kwargs)}): the next sequence "
                                  f"number, sent by the driver after the previous call returned{idem}", None,
                    {"max_task_retries": 0}, deps, [node])
        self.made[node] = self.add(step, loop).id
        self.last_call[actor] = step.id

    def plan_var(self, node, op: ir.Var, loop):
        step = Step(node, "driver", f"loop variable, first {op.init.node}, then its rebinding each round "
                                    "(references only, the data stays in the object store)", None, {},
                    [(self.made[op.init.node], "gather" if op.var_shape == ir.COLLECTION else "value")], [node])
        self.made[node] = self.add(step, loop).id
        self.width[node] = self.width.get(op.init.node)

    def plan_rebind(self, node, op: ir.Rebind, loop):
        src = self.made.get(op.value.node)
        var_step = self.made.get(op.var)
        step = Step(node, "driver", f"{op.var} = {op.value.node} for the next round", None, {},
                    [(src, "gather" if op.var_shape == ir.COLLECTION else "value")] if src else [], [node])
        self.add(step, loop)
        if var_step is not None:
            step_obj = next(s for s in self.steps if s.id == var_step)
            step_obj.deps.append((step.id, "carry"))

    def plan_sink(self, node, op: ir.Sink, loop):
        src = op.input.node
        where = f"{op.format} {self.text(op.path)} (temporary file, then rename)" if op.format else "printed"
        how = "gather" if self.ir.op(src).node_shape == ir.COLLECTION else "value"
        step = Step(node, "sink", f"driver writes {src} -> {where}", None, {}, [(self.made[src], how)], [node])
        self.add(step, loop)


class RayPlan(Plan):
    backend = "ray"
    resumable = True  # `pipec run --resume RUN`

    def __init__(self, graph: ir.IR, params: dict[str, Any], address: str | None = None):
        super().__init__(graph, params)
        self.address = address
        self.lowering = Lowering(graph)
        self._steps: list[Step] | None = None

    def steps(self) -> list[Step]:
        if self._steps is None:
            planner = _Planner(self.ir, self.params, self.lowering)
            planner.walk(blocks(self.ir))
            self._steps = planner.steps
        return self._steps

    # ---- explain

    def explain(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        lines = [f"ray plan for pipeline `{self.ir.info.name}`" + (f" ({params})" if params else ""),
                 "runtime: " + (f"the Ray cluster at {self.address}" if self.address
                                else "embedded local Ray (or RAY_ADDRESS)")
                 + f"; module folders on every worker's path: {', '.join(self.ir.info.module_roots) or 'none'}",
                 "each step: its tasks (task i reads partition i), what they run, Ray options, and <- what "
                 "it depends on"]
        by_loop: dict[str | None, list[Step]] = {}
        for step in self.steps():
            by_loop.setdefault(step.loop, []).append(step)
        self._explain_block(blocks(self.ir), by_loop, lines, 0)
        return "\n".join(lines) + "\n"

    def _explain_block(self, block: Block, by_loop, lines: list[str], depth: int) -> None:
        pad = "  " * depth
        loop_id = block.loop.id if block.loop else None
        # Steps of this loop and nested loop headers, in program order of their first node.
        order = {n: i for i, n in enumerate(self.ir)}
        entries: list[tuple[int, Any]] = []
        for step in by_loop.get(loop_id, []):
            entries.append((min(order[n] for n in step.nodes), step))
        for item in block.items:
            if isinstance(item, Block):
                first = next(iter(item.nodes()), None)
                entries.append((order[first] if first is not None else len(order), item))
        entries.sort(key=lambda e: e[0])
        planner = _Planner(self.ir, self.params, self.lowering)
        for _, entry in entries:
            if isinstance(entry, Block):
                loop = entry.loop
                count = planner.text(loop.count)
                until = (f" until {planner.text(loop.until)} (checked after each round)"
                         if loop.until is not None else "")
                lines.append(f"{pad}repeat {count}{until}, each round:  # {loop.id}")
                self._explain_block(entry, by_loop, lines, depth + 1)
                continue
            step = entry
            count = f"{step.tasks} task{'s' if step.tasks != 1 else ''}" if step.kind == "tasks" else step.kind
            if step.kind == "tasks" and step.tasks is None:
                count = "k tasks"
            if step.kind in ("put", "pool") and step.tasks is not None:
                count = f"{step.kind} x{step.tasks}"
            lines.append(f"{pad}{step.id}  [{count}]  {step.what}")
            if step.options:
                lines.append(f"{pad}    options: " + ", ".join(f"{k}={v}" for k, v in step.options.items()))
            if step.deps:
                lines.append(f"{pad}    <- " + ", ".join(f"{s} ({h})" for s, h in step.deps))

    # ---- JSON

    def to_json(self) -> dict:
        def block_json(block: Block) -> dict:
            loop = block.loop
            steps = [s.to_json() for s in self.steps() if s.loop == (loop.id if loop else None)]
            out = {"loop": loop.id if loop else None, "steps": steps,
                   "loops": [block_json(b) for b in block.items if isinstance(b, Block)]}
            if loop is not None:
                planner = _Planner(self.ir, self.params, self.lowering)
                out["count"] = planner.text(loop.count)
                out["until"] = planner.text(loop.until) if loop.until is not None else None
            return out
        return {"backend": "ray", "pipeline": self.ir.info.name, "params": self.params,
                "address": self.address, "module_roots": list(self.ir.info.module_roots),
                "fused": dict(self.lowering.fused), "plan": block_json(blocks(self.ir))}

    # ---- graph

    def graph(self) -> nx.DiGraph:
        """Tasks (one node per partition), actors, actor calls and driver steps; nodes
        carry ``label`` and ``group`` (the step), edges ``kind``."""
        g = nx.DiGraph()
        ids: dict[str, list[str]] = {}
        for step in self.steps():
            suffix = "  (each round)" if step.loop else ""
            if step.kind in ("tasks", "put", "pool") and step.tasks:
                names = [f"{step.id}[{i}]" for i in range(step.tasks)]
                for name in names:
                    g.add_node(name, label=name + suffix, group=step.id)
            else:
                names = [step.id]
                label = f"{step.id}\n{step.kind}" + suffix
                extra = {"op": self.ir.op(step.nodes[0])} if len(step.nodes) == 1 else {}
                g.add_node(step.id, label=label, group=step.id, **extra)
            ids[step.id] = names
        for step in self.steps():
            mine = ids[step.id]
            for src, how in step.deps:
                theirs = ids.get(src)
                if not theirs:
                    continue
                kind = {"value": "value", "actor": "actor", "order": "order", "carry": "carry"}.get(how, "data")
                if how == "each" and len(theirs) == len(mine):
                    pairs = list(zip(theirs, mine))
                elif how == "group":
                    pairs = [(t, mine[min(i // semantics.FAN_IN, len(mine) - 1)]) for i, t in enumerate(theirs)]
                elif how in ("value", "actor", "order", "carry") and len(theirs) == 1:
                    pairs = [(theirs[0], m) for m in mine]
                else:
                    pairs = [(t, m) for t in theirs for m in mine]
                for a, b in pairs:
                    if not g.has_edge(a, b):
                        g.add_edge(a, b, kind=kind)
        return g

    # ---- run

    def run(self, progress: Progress | None = None, run_dir: str | None = None, resume: bool = False) -> RunResult:
        """Run on this process's Ray (or one started or joined for the run); with
        ``resume``, continue the run in ``run_dir`` after its last completed round."""
        started = start_runtime(self.address, runtime_env=self._runtime_env())
        try:
            return RayDriver(self.ir, self.params, progress, run_dir, self.lowering, resume).run()
        finally:
            if started:
                stop_runtime()

    def _runtime_env(self) -> dict | None:
        """When joining a cluster, ship the user's modules to every node (py_modules): the
        top-level packages and modules the pipeline names, found in its module folders."""
        if not (self.address or os.environ.get("RAY_ADDRESS")):
            return None
        tops = set()
        for _, op in self.ir.items():
            for ref in (getattr(op, "fn", None), getattr(op, "cls", None), getattr(op, "by", None)):
                if isinstance(ref, ir.FnRef):
                    tops.add(ref.module.split(".")[0])
        shipped = []
        for root in self.ir.info.module_paths():
            for top in sorted(tops):
                package, module = Path(root) / top, Path(root) / f"{top}.py"
                if (package / "__init__.py").exists():
                    shipped.append(str(package))
                elif module.exists():
                    shipped.append(str(module))
        return {"py_modules": shipped} if shipped else None


class RayBackend(Backend):
    name = "ray"
    description = ("Ray tasks and actors: fused stages, partitions in the object store, actors restored "
                   "from snapshots with calls replayed exactly once")
    capabilities = frozenset(FEATURES)
    gap_hints: dict[str, str] = {}
    engine_module, extra = "ray", "ray"

    def lower(self, graph: ir.IR, params: dict[str, Any]) -> RayPlan:
        return RayPlan(graph, params, self.address)
