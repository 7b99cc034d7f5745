"""The interactive graph page (`pipec graph --format html`, the run report's graph) and
the plain SVG a notebook shows: laid out here, in Python, drawn as SVG, with a few lines
of JavaScript of our own for pan and zoom, search, a node's details on click, collapsing
loops, and colouring nodes by time. Nothing is fetched from the network.

The layout is a layered one (a node one layer below the lowest of its inputs, a loop's
back edges ignored), ordered within a layer by its inputs' positions. It is not
Graphviz, but it needs no program, runs in milliseconds for every run's report, and is
deterministic, like every other drawing.
"""

from __future__ import annotations

import html
import json
from typing import Any

from pipec.compiler.render import EDGE_STYLES, FONT, NODE_COLORS, Drawing

CHAR_W, LINE_H, PAD = 6.6, 14, 8  # text metrics of the 11px font, and a box's padding
GAP_X, GAP_Y, CLUSTER_PAD = 28, 46, 14


def layout(drawing: Drawing) -> dict[str, Any]:
    """Node boxes (x, y, w, h, centre-top origin), cluster boxes and edge paths."""
    preds = _acyclic_inputs(drawing)
    size = {}
    for n in drawing.nodes:
        lines = n.label.split("\n")
        size[n.id] = (max(60.0, max(len(x) for x in lines) * CHAR_W + 2 * PAD), len(lines) * LINE_H + 2 * PAD)
    layer: dict[str, int] = {}
    for node in _topological(preds):
        layer[node] = max((layer[p] + 1 for p in preds[node]), default=0)
    program = {n.id: i for i, n in enumerate(drawing.nodes)}
    rows: dict[int, list[str]] = {}
    for node in sorted(layer, key=lambda x: program[x]):
        rows.setdefault(layer[node], []).append(node)
    x_of: dict[str, float] = {}
    cluster_of = {n.id: n.cluster or "" for n in drawing.nodes}
    boxes: dict[str, dict] = {}
    y = 40.0
    for depth in sorted(rows):
        row = rows[depth]

        def wanted(node: str) -> float:
            inputs = [x_of[p] for p in preds[node] if p in x_of]
            return sum(inputs) / len(inputs) if inputs else program[node] * 10.0
        row.sort(key=lambda node: (cluster_of[node], wanted(node), program[node]))
        height = max(size[n][1] for n in row)
        total = sum(size[n][0] for n in row) + GAP_X * (len(row) - 1)
        x = -total / 2
        for node in row:
            w, h = size[node]
            x_of[node] = x + w / 2
            boxes[node] = {"x": x + w / 2, "y": y, "w": w, "h": h}
            x += w + GAP_X
        y += height + GAP_Y
    left = min((b["x"] - b["w"] / 2 for b in boxes.values()), default=0)
    for b in boxes.values():  # shift so everything is at x >= 20
        b["x"] += 20 - left + 2 * CLUSTER_PAD
    clusters = _cluster_boxes(drawing, boxes)
    width = max([b["x"] + b["w"] / 2 for b in boxes.values()] + [c["x"] + c["w"] for c in clusters.values()] + [200])
    return {"nodes": boxes, "clusters": clusters, "width": width + 40, "height": y + 20}


def _acyclic_inputs(drawing: Drawing) -> dict[str, list[str]]:
    """Each node's inputs (in edge order, each once), loop-carried edges left out, and
    one edge of each remaining cycle (a lowered plan may still hold one): the back edge a
    depth-first walk in node order meets first, until none is left. (Plain Python: this
    runs at the end of every run, and networkx alone takes longer to import.)"""
    succ: dict[str, list[str]] = {n.id: [] for n in drawing.nodes}
    for e in drawing.edges:
        if e.kind != "carry" and e.source != e.target and e.target not in succ[e.source]:
            succ[e.source].append(e.target)
    while (back := _back_edge(succ)) is not None:
        succ[back[0]].remove(back[1])
    preds: dict[str, list[str]] = {n: [] for n in succ}
    for u, targets in succ.items():
        for v in targets:
            preds[v].append(u)
    return preds


def _back_edge(succ: dict[str, list[str]]) -> tuple[str, str] | None:
    """The first edge closing a cycle, walking depth first from each node in order."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in succ:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(succ[root]))]
        while stack:
            node, targets = stack[-1]
            for v in targets:
                if state.get(v) == 1:
                    return node, v
                if v not in state:
                    state[v] = 1
                    stack.append((v, iter(succ[v])))
                    break
            else:
                state[node] = 2
                stack.pop()
    return None


def _topological(preds: dict[str, list[str]]) -> list[str]:
    """The nodes of an acyclic graph, each after all its inputs."""
    waiting = {n: len(p) for n, p in preds.items()}
    readers: dict[str, list[str]] = {n: [] for n in preds}
    for v, inputs in preds.items():
        for u in inputs:
            readers[u].append(v)
    ready = [n for n, k in waiting.items() if k == 0]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for v in readers[node]:
            waiting[v] -= 1
            if waiting[v] == 0:
                ready.append(v)
    return order


def _cluster_boxes(drawing: Drawing, boxes: dict[str, dict]) -> dict[str, dict]:
    """Each cluster's box around its nodes and sub-clusters (innermost first)."""
    parent = {c.id: c.parent for c in drawing.clusters}
    members: dict[str, list[str]] = {c.id: [] for c in drawing.clusters}
    for n in drawing.nodes:
        c = n.cluster
        while c is not None and c in members:
            members[c].append(n.id)
            c = parent.get(c)

    def depth(c: str) -> int:
        d = 0
        while parent.get(c) is not None:
            c, d = parent[c], d + 1
        return d
    out = {}
    for c in drawing.clusters:
        inside = [boxes[m] for m in members[c.id] if m in boxes]
        if not inside:
            continue
        pad = CLUSTER_PAD * (1 + max((depth(o) - depth(c.id) for o in members if _within(o, c.id, parent)),
                                     default=0))
        x0 = min(b["x"] - b["w"] / 2 for b in inside) - pad
        x1 = max(b["x"] + b["w"] / 2 for b in inside) + pad
        y0 = min(b["y"] for b in inside) - pad - 12
        y1 = max(b["y"] + b["h"] for b in inside) + pad
        out[c.id] = {"x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0, "label": c.label, "members": members[c.id]}
    return out


def _within(inner: str, outer: str, parent: dict) -> bool:
    c = inner
    while c is not None:
        if c == outer:
            return True
        c = parent.get(c)
    return False


def _edge_path(a: dict, b: dict, kind: str) -> str:
    x1, y1 = a["x"], a["y"] + a["h"]
    x2, y2 = b["x"], b["y"]
    if kind == "carry" or y2 <= y1:  # a back edge goes round the right-hand side
        x1, y1 = a["x"] + a["w"] / 2, a["y"] + a["h"] / 2
        x2, y2 = b["x"] + b["w"] / 2, b["y"] + b["h"] / 2
        bend = max(x1, x2) + 60
        return f"M{x1:.1f},{y1:.1f} C{bend:.1f},{y1:.1f} {bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
    mid = (y1 + y2) / 2
    return f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"


_DASH = {"solid": "", "dashed": "6 4", "dotted": "2 3", "bold": ""}


def heat(seconds: float, most: float) -> str:
    """A fill from pale yellow (no time) to red (the slowest node)."""
    t = 0.0 if most <= 0 else min(1.0, seconds / most)
    r, g, b = 255, int(247 - 170 * t), int(220 - 180 * t)
    return f"#{r:02x}{g:02x}{b:02x}"


def to_svg(drawing: Drawing, lines: dict[str, tuple[int, str]] | None = None,
           timings: dict[str, float] | None = None) -> str:
    """The drawing as one SVG element. ``lines`` (node -> its line number and text in
    the .pipe file) and ``timings`` (node -> seconds) go into data attributes, for the
    page's script; nodes with a time carry their heat colour."""
    lay = layout(drawing)
    lines = lines or {}
    timings = timings or {}
    most = max(timings.values(), default=0.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="graph" viewBox="0 0 {lay["width"]:.0f} {lay["height"]:.0f}" '
           f'width="{lay["width"]:.0f}" height="{lay["height"]:.0f}" font-family="{FONT}, Arial, sans-serif" '
           'font-size="11">',
           "<defs>" + "".join(
               f'<marker id="arrow-{k}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
               f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
               for k, (_, color, _) in EDGE_STYLES.items()) + "</defs>",
           f'<text x="12" y="20" font-size="14" font-weight="bold">{html.escape(drawing.title)}</text>',
           '<g id="viewport">']
    for cid, c in sorted(lay["clusters"].items(), key=lambda kv: -kv[1]["w"] * kv[1]["h"]):
        members = html.escape(json.dumps(c["members"]))
        out.append(f'<g class="cluster" data-id="{html.escape(cid)}" data-members="{members}">'
                   f'<rect x="{c["x"]:.1f}" y="{c["y"]:.1f}" width="{c["w"]:.1f}" height="{c["h"]:.1f}" rx="8" '
                   'fill="none" stroke="#6b7280" stroke-dasharray="5 3"/>'
                   f'<text class="cluster-label" x="{c["x"] + 8:.1f}" y="{c["y"] + 14:.1f}" fill="#374151" '
                   f'style="cursor:pointer">{html.escape(c["label"])} [-]</text></g>')
    for e in drawing.edges:
        a, b = lay["nodes"].get(e.source), lay["nodes"].get(e.target)
        if a is None or b is None:
            continue
        dash = _DASH.get(e.style, "")
        out.append(f'<path class="edge {e.kind}" data-source="{html.escape(e.source)}" '
                   f'data-target="{html.escape(e.target)}" d="{_edge_path(a, b, e.kind)}" fill="none" '
                   f'stroke="{e.color}" stroke-width="{2.5 if e.style == "bold" else 1.3}"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + f' marker-end="url(#arrow-{e.kind})">'
                   + (f"<title>{html.escape(e.label)}</title>" if e.label else "") + "</path>")
    for n in drawing.nodes:
        b = lay["nodes"][n.id]
        fill, stroke = NODE_COLORS.get(n.style, NODE_COLORS["stage"])
        line, text = lines.get(n.id, (None, ""))
        attrs = {"data-id": n.id, "data-details": n.tooltip, "data-fill": fill}
        if line is not None:
            attrs.update({"data-line": str(line), "data-source": text})
        if n.id in timings:
            attrs["data-seconds"] = f"{timings[n.id]:.4f}"
            attrs["data-heat"] = heat(timings[n.id], most)
        rx = b["h"] / 2 if n.shape == "ellipse" else 4
        out.append(f'<g class="node {html.escape(n.style)}" '
                   + " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items()) + ' style="cursor:pointer">'
                   f'<rect x="{b["x"] - b["w"] / 2:.1f}" y="{b["y"]:.1f}" width="{b["w"]:.1f}" height="{b["h"]:.1f}" '
                   f'rx="{rx:.1f}" fill="{attrs.get("data-heat", fill)}" stroke="{stroke}"/>')
        out.append(f'<text x="{b["x"]:.1f}" y="{b["y"] + PAD + 10:.1f}" text-anchor="middle">'
                   + "".join(f'<tspan x="{b["x"]:.1f}" dy="{0 if i == 0 else LINE_H}">{html.escape(t)}</tspan>'
                             for i, t in enumerate(n.label.split("\n"))) + "</text></g>")
    out.append("</g></svg>")
    return "\n".join(out)


_STYLE = """
#graph-box { border: 1px solid #d1d5db; height: 70vh; overflow: hidden; position: relative; background: #fff; }
#graph-box svg { width: 100%; height: 100%; cursor: grab; }
#graph-tools { margin: .5em 0; display: flex; gap: 1em; align-items: center; }
#details { font-family: monospace; white-space: pre-wrap; background: #f9fafb; border: 1px solid #e5e7eb;
           padding: .6em; min-height: 3em; }
.node.dim { opacity: .25; } .edge.dim { opacity: .15; }
.node.match rect { stroke-width: 3; stroke: #dc2626; }
.node.selected rect { stroke-width: 3; stroke: #2563eb; }
.hidden { display: none; }
"""

# Pan and zoom on the viewport group, search, details on click, collapse loops, colour
# by time: plain DOM calls, no library.
_SCRIPT = r"""
(function () {
  const svg = document.getElementById("graph");
  const view = document.getElementById("viewport");
  let scale = 1, tx = 0, ty = 0, drag = null;
  function apply() { view.setAttribute("transform", `translate(${tx},${ty}) scale(${scale})`); }
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const k = ev.deltaY < 0 ? 1.15 : 1 / 1.15;
    const box = svg.getBoundingClientRect();
    const vb = svg.viewBox.baseVal;
    const px = (ev.clientX - box.left) * vb.width / box.width, py = (ev.clientY - box.top) * vb.height / box.height;
    tx = px - (px - tx) * k; ty = py - (py - ty) * k; scale *= k; apply();
  }, {passive: false});
  svg.addEventListener("mousedown", (ev) => { drag = [ev.clientX, ev.clientY, tx, ty]; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    const box = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal;
    tx = drag[2] + (ev.clientX - drag[0]) * vb.width / box.width;
    ty = drag[3] + (ev.clientY - drag[1]) * vb.height / box.height; apply();
  });
  const nodes = Array.from(document.querySelectorAll("#graph .node"));
  const edges = Array.from(document.querySelectorAll("#graph .edge"));
  const details = document.getElementById("details");
  nodes.forEach((n) => n.addEventListener("click", (ev) => {
    ev.stopPropagation();
    nodes.forEach((m) => m.classList.remove("selected"));
    n.classList.add("selected");
    const d = n.dataset;
    let text = d.details || d.id;
    if (d.line) text = `line ${d.line}: ${d.source}\n\n` + text;
    if (d.seconds) text += `\n\ntime: ${Number(d.seconds).toFixed(3)} s`;
    details.textContent = text;
  }));
  const search = document.getElementById("search");
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    nodes.forEach((n) => {
      const hit = q && (n.dataset.id.toLowerCase().includes(q) || n.textContent.toLowerCase().includes(q));
      n.classList.toggle("match", !!hit);
      n.classList.toggle("dim", !!q && !hit);
    });
  });
  function refreshEdges() {
    const hidden = new Set(nodes.filter((n) => n.classList.contains("hidden")).map((n) => n.dataset.id));
    edges.forEach((e) => e.classList.toggle("hidden", hidden.has(e.dataset.source) || hidden.has(e.dataset.target)));
  }
  document.querySelectorAll("#graph .cluster-label").forEach((label) => label.addEventListener("click", (ev) => {
    ev.stopPropagation();
    const group = label.parentNode;
    const members = new Set(JSON.parse(group.dataset.members));
    const collapse = !group.classList.contains("collapsed");
    group.classList.toggle("collapsed", collapse);
    label.textContent = label.textContent.replace(/ \[[-+]\]( \(\d+ nodes\))?$/, "")
      + (collapse ? ` [+] (${members.size} nodes)` : " [-]");
    nodes.forEach((n) => { if (members.has(n.dataset.id)) n.classList.toggle("hidden", collapse); });
    refreshEdges();
  }));
  const byTime = document.getElementById("by-time");
  if (byTime) byTime.addEventListener("change", () => {
    nodes.forEach((n) => {
      const rect = n.querySelector("rect");
      rect.setAttribute("fill", byTime.checked && n.dataset.heat ? n.dataset.heat : n.dataset.fill);
    });
  });
  document.getElementById("reset").addEventListener("click", () => { scale = 1; tx = 0; ty = 0; apply(); });
})();
"""


def section(drawing: Drawing, graph=None, source_text: str | None = None,
            timings: dict[str, float] | None = None) -> str:
    """The graph with its tools and details panel, as an HTML fragment (the report puts
    it in its page). ``graph`` is the IR, for each node's .pipe line."""
    lines: dict[str, tuple[int, str]] = {}
    if graph is not None:
        text = (source_text or "").splitlines()
        for node, op in graph.items():
            if op.span is not None:
                lines[node] = (op.span.line, text[op.span.line - 1].strip() if op.span.line <= len(text) else "")
    timed = {k: v for k, v in (timings or {}).items() if any(n.id == k for n in drawing.nodes)}
    tools = ('<div id="graph-tools"><input id="search" type="search" placeholder="search nodes">'
             '<button id="reset" type="button">reset view</button>'
             + ('<label><input id="by-time" type="checkbox" checked> colour by time</label>' if timed else "")
             + "<span>drag to pan, wheel to zoom, click a node for its line, a loop's label to collapse it</span>"
               "</div>")
    svg = to_svg(drawing, lines, timed)
    return (f"<style>{_STYLE}</style>{tools}<div id=\"graph-box\">{svg}</div>"
            f'<div id="details">click a node</div><script>{_SCRIPT}</script>')


def page(drawing: Drawing, graph=None, source_text: str | None = None,
         timings: dict[str, float] | None = None) -> str:
    """A standalone page: the interactive graph, and a table of every node's details."""
    title = html.escape(drawing.title)
    rows = "\n".join(
        f"<tr><td><code>{html.escape(n.id)}</code></td><td>{html.escape(n.label).replace(chr(10), '<br>')}</td>"
        f"<td>{html.escape(n.tooltip).replace(chr(10), '<br>')}</td></tr>" for n in drawing.nodes)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: {FONT}, Arial, sans-serif; margin: 1.5em; color: #111827; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #d1d5db; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }}
</style>
</head>
<body>
<h1>{title}</h1>
{section(drawing, graph, source_text, timings)}
<details>
<summary>nodes</summary>
<table>
<tr><th>id</th><th>label</th><th>details</th></tr>
{rows}
</table>
</details>
</body>
</html>
"""
