"""Drawing pipelines: `pipec graph` as DOT, Mermaid, JSON, HTML, SVG or PNG.

A pipeline (or a backend's lowered plan) is first turned into a neutral :class:`Drawing`:
nodes with a label, a shape and a style class, edges with their kind, and clusters for
``repeat`` regions. Every output format is a small function over that one drawing, so
they all show the same content; none of them looks at the IR.

Output is deterministic (program order, no memory addresses), so drawings can be kept
as golden files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from pipec.compiler import ir
from pipec.dsl.diagnostics import PipecError, UsageError

# A lowered plan with more nodes than this is drawn one node per group (stage): a Dask
# graph of thousands of tasks is unreadable, and Graphviz takes minutes to lay it out.
MAX_PLAN_NODES = 300

# Edge kinds: line style, colour, and what the legend says they mean.
EDGE_STYLES: dict[str, tuple[str, str, str]] = {
    "data": ("solid", "#1f2937", "data: a collection flows"),
    "value": ("dashed", "#6b7280", "value: one object is read"),
    "actor": ("bold", "#c2410c", "actor: uses an actor"),
    "order": ("dotted", "#7c3aed", "order: calls on one actor, in program order"),
    "carry": ("dashed", "#15803d", "carry: a loop variable's next round"),
}

# Style classes of nodes: fill and outline colours.
NODE_COLORS: dict[str, tuple[str, str]] = {
    "stage": ("#dbeafe", "#1e40af"),
    "value": ("#fef9c3", "#a16207"),
    "actor_call": ("#ffedd5", "#c2410c"),
    "actor": ("#fed7aa", "#9a3412"),
    "var": ("#dcfce7", "#15803d"),
    "sink": ("#e0e7ff", "#3730a3"),
    "param": ("#f3f4f6", "#4b5563"),
    "task": ("#f8fafc", "#334155"),
    "group": ("#e2e8f0", "#334155"),
    "empty": ("#ffffff", "#9ca3af"),
}

# Neutral shapes -> Graphviz shape, Mermaid's opening and closing brackets.
SHAPES: dict[str, tuple[str, str, str]] = {
    "box": ("box", "[", "]"),
    "ellipse": ("ellipse", "([", "])"),
    "component": ("component", "[[", "]]"),
    "cylinder": ("cylinder", "[(", ")]"),
    "parallelogram": ("parallelogram", "[/", "/]"),
    "box3d": ("box3d", "{{", "}}"),
    "plaintext": ("plaintext", "[", "]"),
}

FONT = "Helvetica"


# ---- the neutral drawing ------------------------------------------------------------------


@dataclass
class Node:
    """One box of the drawing. ``label`` lines are separated by ``\\n``."""

    id: str
    label: str
    shape: str = "box"  # a key of SHAPES
    style: str = "stage"  # a key of NODE_COLORS
    tooltip: str = ""
    cluster: str | None = None  # innermost cluster id


@dataclass
class Edge:
    """One arrow; ``style`` and ``color`` follow from ``kind`` (see EDGE_STYLES)."""

    source: str
    target: str
    kind: str  # one of ir.EDGE_KINDS
    label: str = ""
    style: str = "solid"
    color: str = "#1f2937"


@dataclass
class Cluster:
    """A boxed region (a ``repeat`` body, or a plan's group); ``parent`` nests it."""

    id: str
    label: str
    parent: str | None = None


@dataclass
class Drawing:
    """What every output format draws: nodes, edges, nested clusters and a legend."""

    title: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)  # the edge kinds used, in EDGE_STYLES order

    def edge(self, source: str, target: str, kind: str, label: str = "") -> None:
        """Add an edge styled by its kind (an unknown kind is drawn as data)."""
        kind = kind if kind in EDGE_STYLES else "data"
        style, color, _ = EDGE_STYLES[kind]
        self.edges.append(Edge(source, target, kind, label, style, color))

    def finish(self) -> "Drawing":
        """Fill in the legend from the edges drawn."""
        used = {e.kind for e in self.edges}
        self.legend = [k for k in EDGE_STYLES if k in used]
        return self

    def to_json(self) -> dict:
        """The drawing as JSON-ready data."""
        return {"title": self.title,
                "nodes": [asdict(n) for n in self.nodes],
                "edges": [asdict(e) for e in self.edges],
                "clusters": [asdict(c) for c in self.clusters],
                "legend": [{"kind": k, "style": EDGE_STYLES[k][0], "color": EDGE_STYLES[k][1],
                            "meaning": EDGE_STYLES[k][2]} for k in self.legend]}


# ---- the pipeline's own graph ----------------------------------------------------------------


def pipeline_drawing(graph: ir.IR) -> Drawing:
    """The drawing of a pipeline's IR: one node per operation, loops as nested clusters."""
    info = graph.info
    params = []
    for name in info.params:
        op = graph.op(name) if name in graph else None
        if isinstance(op, ir.Param):
            params.append(f"{name}: {op.type}" + ("" if op.required else f" = {_literal(op.default)}"))
        else:
            params.append(name)
    drawing = Drawing(f"pipeline {info.name}({', '.join(params)})")
    for loop in info.loops.values():
        drawing.clusters.append(Cluster(loop.id, _loop_label(graph, loop), loop.parent))
    for node_id, op in graph.items():
        drawing.nodes.append(_op_node(graph, node_id, op))
    # A `repeat` with an empty body has no nodes; Graphviz would drop its cluster.
    filled = {n.cluster for n in drawing.nodes} | {c.parent for c in drawing.clusters}
    for loop_id in info.loops:
        if loop_id not in filled:
            drawing.nodes.append(Node(f"{loop_id} (empty)", "(empty body)", "plaintext", "empty", cluster=loop_id))
    for source, target, port, kind in graph.edges():
        drawing.edge(source, target, kind, _edge_label(str(port), kind))
    return drawing.finish()


def _op_node(graph: ir.IR, node_id: str, op: ir.Op) -> Node:
    """The node for one IR operation: its id, what it does, and its options."""
    lines = [node_id] + _describe(graph, op) + _options(op)
    shape, style = _look(op)
    tip = [f"{op.op} `{node_id}`"]
    if op.span is not None:
        tip.append(f"line {op.span.line}, column {op.span.column}")
    if op.loop is not None:
        tip.append(f"in {op.loop}")
    tip += _details(graph, op)
    return Node(node_id, "\n".join(lines), shape, style, "\n".join(tip), op.loop)


def _look(op: ir.Op) -> tuple[str, str]:
    if isinstance(op, ir.Param):
        return "parallelogram", "param"
    if isinstance(op, ir.Actor):
        return "component", "actor"
    if isinstance(op, ir.Sink):
        return "cylinder", "sink"
    if isinstance(op, (ir.Var, ir.Rebind)):
        return ("box" if op.var_shape == ir.COLLECTION else "ellipse"), "var"
    if isinstance(op, (ir.ActorCall, ir.PoolCall)):
        return "ellipse", "actor_call"
    if op.node_shape == ir.COLLECTION:
        return "box", "stage"
    return "ellipse", "value"


def _describe(graph: ir.IR, op: ir.Op) -> list[str]:
    """What the operation does, in the words of the source language."""
    if isinstance(op, ir.Param):
        return [f"param {op.type}" + (", required" if op.required else f" = {_literal(op.default)}")]
    if isinstance(op, ir.Const):
        return [f"= {_literal(op.value)}"]
    if isinstance(op, ir.Call):
        return [f"{op.fn.dotted}({_arguments(graph, op.args, op.kwargs)})"]
    if isinstance(op, ir.Expr):
        return [_expr_text(graph, op, 0)]
    if isinstance(op, ir.RoundIndex):
        return [f"round index of {op.of_loop}"]
    if isinstance(op, ir.Format):
        return [_literal(op.template)]
    if isinstance(op, ir.Source):
        what = op.fn.dotted if op.fn is not None else op.kind
        lines = [f"source {what}" + (" sharded" if op.sharded else "")]
        if "columns" in op.kwargs:
            lines.append(f"columns {_operand(graph, op.kwargs['columns'])}")
        if op.partitions is None:
            lines.append("a partition per file or row group")
        else:
            count = _operand(graph, op.partitions)
            lines.append(f"{count} partition{'' if count == '1' else 's'}")
        return lines
    if isinstance(op, ir.Elementwise):
        callee = op.fn.dotted if op.fn is not None else f"{op.pool.node}.{op.method}"
        lines = [f"{op.kind} {callee}" + (f" as {op.batch}" if op.batch else "")]
        if op.bindings:
            lines.append("with " + ", ".join(op.bindings))
        return lines
    if isinstance(op, (ir.ReduceByKey, ir.Reduce)):
        return [f"{op.op} {op.fn.dotted}"]
    if isinstance(op, ir.Top):
        return [f"top {_operand(graph, op.n)}" + (f" by {op.by.dotted}" if op.by else "")]
    if isinstance(op, ir.Actor):
        lines = [f"actor{' pool' if op.pool_size is not None else ''} {op.cls.dotted}"]
        if op.pool_size is not None:
            lines.append(f"pool of {_operand(graph, op.pool_size)}")
        lines.append(f"restarts {op.restarts}")
        if op.checkpoint_every is not None:
            lines.append(f"checkpoint every {op.checkpoint_every} calls")
        if op.idempotent:
            lines.append("idempotent " + ", ".join(op.idempotent))
        return lines
    if isinstance(op, ir.ActorCall):
        return [f"{_call_text(graph, op, 0)}, call #{op.seq}"]
    if isinstance(op, ir.PoolCall):
        return [f"{_call_text(graph, op, 0)}, call #{op.seq} on every member"]
    if isinstance(op, ir.Var):
        return [f"var {op.var_shape}"]
    if isinstance(op, ir.Rebind):
        if op.loop is not None and graph.info.loops[op.loop].when is not None:
            return [f"{op.name or op.var} from here on, when {op.loop} runs"]
        return [f"{op.name or op.var} for the next round"]
    if isinstance(op, ir.Sink):
        if op.format is None:
            lines = ["sink, printed"]
        else:
            lines = [f"sink {op.format} {_operand(graph, op.path)}"]
            if op.format in ir.DATASET_FORMATS:
                lines.append("dataset, written by the tasks")
        if op.schedule_dependent:
            lines.append("schedule-dependent")
        return lines
    if isinstance(op, ir.Take):
        return [f"take {_operand(graph, op.n)}"]
    if isinstance(op, ir.SortBy):
        return [f"sort_by {op.by.dotted}" if op.by else "sort_by element", "stable, ties in collection order"]
    if isinstance(op, ir.Sample):
        return [f"sample {_operand(graph, op.fraction)}", f"seed {_operand(graph, op.seed)}"]
    # group_by_key, join, union, distinct, collect, collect_map, count, zip_with_index:
    # the operation says it all.
    return [op.op]


def _options(op: ir.Op) -> list[str]:
    """Fault-tolerance and placement options that differ from the defaults."""
    options = getattr(op, "options", None)
    if not isinstance(options, ir.StageOptions):
        return []
    lines = []
    if options.retries:
        lines.append(f"retries {options.retries}")
    if options.timeout is not None:
        lines.append(f"timeout {options.timeout:g} s")
    if options.effectful:
        lines.append("effectful")
    res = options.resources
    parts = [f"{k} {v:g}" for k, v in (("cpus", res.cpus), ("gpus", res.gpus)) if v is not None]
    if res.memory is not None:
        parts.append(f"memory {_bytes(res.memory)}")
    if parts:
        lines.append(", ".join(parts))
    return lines


def _details(graph: ir.IR, op: ir.Op) -> list[str]:
    """Extra facts for the tooltip: full calls and bindings that do not fit the label."""
    out = []
    if isinstance(op, ir.Source) and (op.args or op.kwargs):
        what = op.fn.dotted if op.fn is not None else op.kind
        out.append(f"{what}({_arguments(graph, op.args, op.kwargs)})")
    if isinstance(op, ir.Actor):
        out.append(f"{op.cls.dotted}({_arguments(graph, op.args, op.kwargs)})")
    if isinstance(op, ir.Elementwise):
        out += [f"with {k} = {_operand(graph, v)}" for k, v in op.bindings.items()]
    return out


def _edge_label(port: str, kind: str) -> str:
    if kind == "carry":
        return "next round"
    for prefix in ("bindings.", "kwargs."):
        if port.startswith(prefix):
            return port[len(prefix):]
    return ""


def _loop_label(graph: ir.IR, loop: ir.Loop) -> str:
    if loop.when is not None:
        return f"when {_operand(graph, loop.when)}"
    text = f"repeat {_operand(graph, loop.count)}"
    if loop.index is not None:
        index = graph.op(loop.index) if loop.index in graph else None
        text += f" as {(index.name if index is not None and index.name else loop.index)}"
    if loop.until is not None:
        text += f" until {_operand(graph, loop.until)}"
    return text


# ---- source-like text for operands -------------------------------------------------------

_BINARY = {"+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "and", "or"}
_MAX_INLINE = 4  # how deep nested expressions are spelled out before naming the node


def _literal(value: Any) -> str:
    """A Python value as the .pipe language writes it."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _operand(graph: ir.IR, operand, depth: int = 0) -> str:
    """An operand as source text: a literal, a user's name, or an inlined expression.

    Nodes the builder made for nested expressions (ids like ``loop1/until`` or
    ``ps.apply``, never plain identifiers) are spelled out, so a label reads like the
    source; user-named nodes are referred to by name.
    """
    if operand is None:
        return "none"
    if isinstance(operand, ir.Lit):
        return _literal(operand.value)
    node = operand.node
    if node.isidentifier() or node not in graph or depth >= _MAX_INLINE:
        return node
    op = graph.op(node)
    if isinstance(op, (ir.Var, ir.Rebind)) and op.name:
        return op.name  # `total@loop2` is the var `total` as this round left it
    if isinstance(op, ir.Format):
        return _literal(op.template)
    if isinstance(op, ir.Expr):
        text = _expr_text(graph, op, depth + 1)
        return f"({text})" if op.operator in _BINARY else text
    if isinstance(op, (ir.ActorCall, ir.PoolCall)):
        return _call_text(graph, op, depth + 1)
    if isinstance(op, ir.Call):
        return f"{op.fn.dotted}({_arguments(graph, op.args, op.kwargs, depth + 1)})"
    if isinstance(op, (ir.Collect, ir.Count)):
        return f"{op.op}({_operand(graph, op.input, depth + 1)})"
    return node


def _expr_text(graph: ir.IR, op: ir.Expr, depth: int) -> str:
    items = [_operand(graph, o, depth) for o in op.operands]
    if op.operator == "list":
        return "[" + ", ".join(items) + "]"
    if op.operator == "not":
        return f"not {items[0]}"
    if op.operator in ("neg", "pos"):
        return ("-" if op.operator == "neg" else "+") + items[0]
    return f" {op.operator} ".join(items)


def _call_text(graph: ir.IR, op: ir.ActorCall | ir.PoolCall, depth: int) -> str:
    callee = f"{op.pool.node}.each" if isinstance(op, ir.PoolCall) else op.actor.node
    return f"{callee}.{op.method}({_arguments(graph, op.args, op.kwargs, depth)})"


def _arguments(graph: ir.IR, args, kwargs, depth: int = 0) -> str:
    items = [_operand(graph, a, depth) for a in args]
    items += [f"{k} = {_operand(graph, v, depth)}" for k, v in kwargs.items()]
    return ", ".join(items)


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("TB", 10**12), ("GiB", 2**30), ("GB", 10**9),
                       ("MiB", 2**20), ("MB", 10**6), ("KiB", 2**10), ("KB", 10**3)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# ---- a backend's lowered graph ---------------------------------------------------------------


def plan_drawing(plan) -> Drawing:
    """The drawing of what a backend runs: ``plan.graph()``, whose nodes are IR operations
    (an ``op`` attribute) or lowered tasks (``label`` and ``group`` attributes). Tasks are
    boxed by group; past :data:`MAX_PLAN_NODES` nodes, each group becomes one node."""
    graph = plan.graph()
    pipeline = plan.ir
    title = f"{plan.backend} plan for pipeline {pipeline.info.name}"
    if all("op" in data for _, data in graph.nodes(data=True)):
        view = pipeline if graph is pipeline.graph else ir.IR(pipeline.info, graph)
        drawing = pipeline_drawing(view)
        drawing.title = title
        return drawing
    return _lowered_drawing(graph, title, pipeline)


def _lowered_drawing(graph, title: str, pipeline: ir.IR) -> Drawing:
    drawing = Drawing(title)
    collapse = graph.number_of_nodes() > MAX_PLAN_NODES
    ids: dict[Any, str] = {}  # graph node -> drawing node id
    taken: set[str] = set()
    groups: dict[str, Node] = {}
    members: dict[str, int] = {}

    def unique(text: str) -> str:
        # Engine keys are often tuples; their text is stable, but two may print alike.
        result, n = text, 1
        while result in taken:
            n += 1
            result = f"{text} ({n})"
        taken.add(result)
        return result

    clusters: dict[str, str] = {}
    for node, data in graph.nodes(data=True):
        group = data.get("group")
        group = None if group is None else str(group)
        if collapse and group is not None:
            if group not in groups:
                groups[group] = Node(unique(f"group {group}"), group, "box3d", "group",
                                     f"group {group}")
                drawing.nodes.append(groups[group])
            members[group] = members.get(group, 0) + 1
            ids[node] = groups[group].id
            continue
        ids[node] = unique(_text(node))
        op = data.get("op")
        if isinstance(op, ir.Op):
            new = _op_node(pipeline, ids[node], op)
            new.cluster = None  # a lowered graph is boxed by group, not by loop
            if data.get("label"):
                new.label = str(data["label"])
        else:
            label = data.get("label")
            new = Node(ids[node], str(label) if label is not None else ids[node], "box", "task", ids[node])
        if group is not None:
            if group not in clusters:
                clusters[group] = f"group {group}"
                drawing.clusters.append(Cluster(clusters[group], group))
            new.cluster = clusters[group]
        drawing.nodes.append(new)
    for group, node in groups.items():
        count = members[group]
        node.label = f"{group}\n{count} task{'' if count == 1 else 's'}"
    counts: dict[tuple[str, str, str], list[str]] = {}
    for source, target, data in graph.edges(data=True):
        kind = data.get("kind") if data.get("kind") in EDGE_STYLES else "data"
        key = (ids[source], ids[target], kind)
        if collapse and key[0] == key[1]:
            continue  # inside one group
        counts.setdefault(key, []).append(str(data.get("label") or ""))
    for (source, target, kind), labels in counts.items():
        if len(labels) == 1 or not collapse:
            for label in labels:
                drawing.edge(source, target, kind, label or ("next round" if kind == "carry" else ""))
        else:
            drawing.edge(source, target, kind, f"{len(labels)} edges")
    return drawing.finish()


def _text(node) -> str:
    return node if isinstance(node, str) else str(node)


# ---- output formats ----------------------------------------------------------------------------


def render(drawing: Drawing, fmt: str) -> str:
    """The drawing as text in ``fmt``: ``dot``, ``mermaid``, ``json`` or ``html``."""
    try:
        renderer = FORMATS[fmt]
    except KeyError:
        raise UsageError(f"unknown graph format `{fmt}`",
                         f"choose one of: {', '.join(FORMATS)}, svg, png") from None
    return renderer(drawing)


def _tree(drawing: Drawing) -> dict[str | None, list[tuple[str, Any]]]:
    """Cluster id (None for the top level) -> its nodes and sub-clusters, in first-use order."""
    parents = {c.id: c.parent for c in drawing.clusters}
    by_id = {c.id: c for c in drawing.clusters}
    items: dict[str | None, list[tuple[str, Any]]] = {None: []}
    placed: set[str] = set()

    def place(cluster_id: str | None) -> None:
        if cluster_id is None or cluster_id in placed:
            return
        placed.add(cluster_id)
        parent = parents.get(cluster_id)
        place(parent)
        items.setdefault(parent, []).append(("cluster", by_id[cluster_id]))
        items.setdefault(cluster_id, [])

    for node in drawing.nodes:
        cluster = node.cluster if node.cluster in by_id else None
        place(cluster)
        items.setdefault(cluster, []).append(("node", node))
    for cluster in drawing.clusters:
        place(cluster.id)
    return items


# DOT


def _dot_id(text: str) -> str:
    """A DOT identifier, always quoted: ids hold `/`, `@`, `.`, `-` and spaces."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_attrs(**attrs: str) -> str:
    return "[" + ", ".join(f"{k}={_dot_id(v)}" for k, v in attrs.items() if v != "") + "]"


def to_dot(drawing: Drawing) -> str:
    """The drawing as Graphviz DOT text."""
    out = [f"digraph {_dot_id(drawing.title)} {{",
           f"  graph {_dot_attrs(label=drawing.title, labelloc='t', fontname=FONT, fontsize='14', rankdir='TB', newrank='true')};",
           f"  node {_dot_attrs(fontname=FONT, fontsize='10', style='filled')};",
           f"  edge {_dot_attrs(fontname=FONT, fontsize='9')};"]
    tree = _tree(drawing)

    def emit(cluster_id: str | None, depth: int) -> None:
        pad = "  " * depth
        for what, item in tree.get(cluster_id, []):
            if what == "node":
                fill, line = NODE_COLORS.get(item.style, NODE_COLORS["stage"])
                shape = SHAPES.get(item.shape, SHAPES["box"])[0]
                out.append(f"{pad}{_dot_id(item.id)} "
                           + _dot_attrs(label=item.label, shape=shape, fillcolor=fill, color=line,
                                        tooltip=item.tooltip, **{"class": item.style}) + ";")
            else:
                out.append(f"{pad}subgraph {_dot_id('cluster_' + item.id)} {{")
                out.append(f"{pad}  graph {_dot_attrs(label=item.label, style='rounded,dashed', color='#6b7280', fontsize='11', labeljust='l')};")
                emit(item.id, depth + 1)
                out.append(f"{pad}}}")

    emit(None, 1)
    for e in drawing.edges:
        attrs = dict(style=e.style, color=e.color, label=e.label, fontcolor=e.color if e.label else "",
                     **{"class": e.kind})
        if e.kind == "carry":
            attrs["constraint"] = "false"  # a back edge must not pull the loop's layout upward
        out.append(f"  {_dot_id(e.source)} -> {_dot_id(e.target)} {_dot_attrs(**attrs)};")
    if drawing.legend:
        out.append(f"  subgraph {_dot_id('cluster_legend')} {{")
        out.append(f"    graph {_dot_attrs(label='edges', style='rounded', color='#9ca3af', fontsize='10')};")
        previous = None
        for kind in drawing.legend:
            style, color, meaning = EDGE_STYLES[kind]
            start, end = f"legend:{kind}", f"legend:{kind}:end"
            # One row per kind (text, then a sample arrow), rows stacked in legend order.
            out.append(f"    subgraph {_dot_id('legend:' + kind + ':row')} {{")
            out.append("      graph [rank=\"same\"];")
            out.append(f"      {_dot_id(start)} {_dot_attrs(label=meaning, shape='plaintext', style='solid', fontsize='9')};")
            out.append(f"      {_dot_id(end)} {_dot_attrs(label='', shape='point', width='0.05', color='#ffffff')};")
            out.append("    }")
            out.append(f"    {_dot_id(start)} -> {_dot_id(end)} {_dot_attrs(style=style, color=color, minlen='2')};")
            if previous is not None:
                out.append(f"    {_dot_id(previous)} -> {_dot_id(start)} [style=\"invis\"];")
            previous = start
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


# Mermaid

# Mermaid's arrow for each edge kind; linkStyle then sets colour and dash pattern.
_MERMAID_ARROWS = {"data": "-->", "value": "-.->", "actor": "==>", "order": "-.->", "carry": "-.->"}
_MERMAID_DASHES = {"solid": "", "dashed": "stroke-dasharray:6 4", "dotted": "stroke-dasharray:2 3", "bold": ""}


def _mermaid_text(text: str) -> str:
    """Text inside a quoted Mermaid label: entity codes for what Mermaid would parse."""
    text = text.replace("#", "#35;")  # first: the entity codes below start with `#`
    for char, code in (('"', "#34;"), ("<", "#60;"), (">", "#62;"), ("&", "#38;"), ("|", "#124;")):
        text = text.replace(char, code)
    return text.replace("\n", "<br/>")


def to_mermaid(drawing: Drawing) -> str:
    """The drawing as a Mermaid flowchart (Markdown, GitHub and the HTML page render it)."""
    out = ["flowchart TB", "  %% " + " ".join(drawing.title.split())]
    ids = {node.id: f"n{i}" for i, node in enumerate(drawing.nodes)}
    cluster_ids = {c.id: f"c{i}" for i, c in enumerate(drawing.clusters)}
    tree = _tree(drawing)

    def emit(cluster_id: str | None, depth: int) -> None:
        pad = "  " * depth
        for what, item in tree.get(cluster_id, []):
            if what == "node":
                _, opening, closing = SHAPES.get(item.shape, SHAPES["box"])
                out.append(f'{pad}{ids[item.id]}{opening}"{_mermaid_text(item.label)}"{closing}')
            else:
                out.append(f'{pad}subgraph {cluster_ids[item.id]}["{_mermaid_text(item.label)}"]')
                emit(item.id, depth + 1)
                out.append(f"{pad}end")

    emit(None, 1)
    links: list[Edge] = []
    for e in drawing.edges:
        label = f'|"{_mermaid_text(e.label)}"|' if e.label else ""
        out.append(f"  {ids[e.source]} {_MERMAID_ARROWS.get(e.kind, '-->')}{label} {ids[e.target]}")
        links.append(e)
    if drawing.legend:
        out.append('  subgraph legend["edges"]')
        for i, kind in enumerate(drawing.legend):
            style, color, meaning = EDGE_STYLES[kind]
            out.append(f'    lg{i}["{_mermaid_text(meaning)}"] {_MERMAID_ARROWS[kind]} lg{i}end(( ))')
            links.append(Edge("", "", kind, style=style, color=color))
        out.append("  end")
    # Class names get a prefix: some style names (`call`, `end`, `style`) are Mermaid keywords.
    for style_class in sorted({n.style for n in drawing.nodes}):
        fill, line = NODE_COLORS.get(style_class, NODE_COLORS["stage"])
        out.append(f"  classDef pc_{style_class} fill:{fill},stroke:{line},color:#111827")
    by_class: dict[str, list[str]] = {}
    for node in drawing.nodes:
        by_class.setdefault(node.style, []).append(ids[node.id])
    for style_class in sorted(by_class):
        out.append(f"  class {','.join(by_class[style_class])} pc_{style_class}")
    if drawing.legend:
        out.append("  classDef pc_legend fill:#ffffff,stroke:#ffffff,color:#374151")
        out.append("  class " + ",".join(f"lg{i},lg{i}end" for i in range(len(drawing.legend))) + " pc_legend")
    styles: dict[str, list[int]] = {}
    for i, link in enumerate(links):
        width = "3px" if link.style == "bold" else "1.5px"
        css = ",".join(x for x in (f"stroke:{link.color}", f"stroke-width:{width}", _MERMAID_DASHES[link.style]) if x)
        styles.setdefault(css, []).append(i)
    for css, indices in styles.items():
        out.append(f"  linkStyle {','.join(map(str, indices))} {css}")
    return "\n".join(out) + "\n"


# JSON and HTML


def to_json(drawing: Drawing) -> str:
    """The drawing as JSON text: title, nodes, edges, clusters and legend."""
    return json.dumps(drawing.to_json(), indent=2) + "\n"


def to_html(drawing: Drawing) -> str:
    """A standalone, offline page: the interactive graph of :mod:`graph_html`."""
    from pipec.compiler.graph_html import page
    return page(drawing)


FORMATS: dict[str, Callable[[Drawing], str]] = {
    "dot": to_dot, "mermaid": to_mermaid, "json": to_json, "html": to_html,
}

IMAGE_FORMATS = ("svg", "png")


def to_image(drawing: Drawing, fmt: str) -> bytes:
    """The drawing as an ``svg`` or ``png`` image, laid out by Graphviz's ``dot`` program.

    Raises :class:`UsageError` when ``dot`` is not installed, and :class:`PipecError`
    when it fails."""
    if fmt not in IMAGE_FORMATS:
        raise UsageError(f"unknown image format `{fmt}`", "choose svg or png")
    dot = shutil.which("dot")
    if dot is None:
        raise UsageError("Graphviz's `dot` is not installed, and it draws svg and png images",
                         "install it (apt-get install graphviz / brew install graphviz), "
                         "or use --format dot|mermaid|html")
    try:
        done = subprocess.run([dot, f"-T{fmt}"], input=to_dot(drawing).encode("utf-8"),
                              capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise PipecError("Graphviz's `dot` took more than 5 minutes; draw fewer nodes or use "
                         "--format mermaid") from None
    except OSError as exc:
        raise PipecError(f"cannot run Graphviz's `dot` ({dot}): {exc}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise PipecError(f"Graphviz's `dot` failed (exit {done.returncode}): {message}")
    return done.stdout
