"""A run's ``report.html``: one self-contained page (no network) made from its summary.

It shows what ran where (engine, versions, workers, dashboard link), a timeline of
rounds and of the stages inside them (a Gantt chart, task completions as ticks), time
per step, the actor call ledger, the sinks written with their sizes, and the pipeline's
interactive graph coloured by time. Where an engine's own UI knows more (Spark's stages,
Ray's actors), the report links to it.
"""

from __future__ import annotations

import html
import time

from pipec.compiler import graph_html, render

ROW_H, LEFT, WIDTH = 18, 230, 760


def report_html(summary: dict, pipeline) -> str:
    """The page for ``summary`` (see :func:`pipec.runs.summary_of`) of ``pipeline``."""
    e = html.escape
    title = f"run {summary.get('run')}: pipeline {summary['pipeline']} on {summary.get('backend')}"
    engine = summary.get("engine") or {}
    facts = [("status", summary["status"] + (f": {summary['error']}" if summary.get("error") else "")),
             ("file", summary["file"]),
             ("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary["started_at"]))),
             ("seconds", f"{summary['seconds']:.3f}"),
             ("workers", str(engine.get("workers") or "?"))]
    facts += [(name, version) for name, version in sorted((engine.get("versions") or {}).items())]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts)
    if engine.get("dashboard"):
        url = e(engine["dashboard"])
        rows += f'<tr><th>dashboard</th><td><a href="{url}">{url}</a> (while the engine runs)</td></tr>'
    timings = {t["node"]: t["seconds"] for t in summary["timings"]}
    drawing = render.pipeline_drawing(pipeline.ir)
    parts = [f"<h1>{e(title)}</h1>", f"<table class=facts>{rows}</table>",
             "<h2>Timeline</h2>", timeline_svg(summary),
             "<h2>Time per step</h2>", _table(["step", "seconds (all rounds)"],
                                               [(t["name"], f"{t['seconds']:.3f}") for t in summary["timings"]]),
             "<h2>Actor calls</h2>", _ledger(summary["calls"]),
             "<h2>Sinks written</h2>", _table(["sink", "path", "bytes"],
                                              [(s["name"], s["path"], "" if s["bytes"] is None else f"{s['bytes']:,}")
                                               for s in summary["sinks"]]) if summary["sinks"] else
             "<p>none (a run's sinks are written together when it finishes)</p>",
             "<h2>Restarts and workers lost</h2>", _table(
                 ["at (s)", "round", "what happened"],
                 [(f"{f['at']:.3f}", "" if f["round"] is None else f["round"] + 1, f["message"])
                  for f in summary["faults"]]) if summary["faults"] else
             "<p>none seen by pipec (a task retried inside its worker, or re-run by Spark, is not counted "
             "here: see the engine's own UI)</p>",
             "<h2>Graph</h2>", graph_html.section(drawing, pipeline.ir, pipeline.source.text, timings)]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 1.5em; color: #111827; }}
table {{ border-collapse: collapse; font-size: .9em; margin-bottom: 1em; }}
td, th {{ border: 1px solid #d1d5db; padding: .25em .6em; text-align: left; }}
.gantt text {{ font-size: 11px; }}
</style></head><body>
{"".join(parts)}
</body></html>
"""


def _table(head: list[str], rows: list[tuple]) -> str:
    e = html.escape
    return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            + "</table>")


def _ledger(calls: list[dict]) -> str:
    if not calls:
        return "<p>no graph-level actor calls</p>"
    rows = [(c["actor"], c["seq"], c["method"], "" if c["round"] is None else c["round"] + 1,
             "replayed" if c["replayed"] else "applied", f"{c['at']:.3f}") for c in calls]
    return _table(["actor", "sequence number", "method", "round", "", "at (s)"], rows)


def timeline_svg(summary: dict) -> str:
    """A Gantt chart: one row per loop (its rounds as alternating bars), one row per stage
    (a bar per round it ran in, its tasks' completions as ticks), on one time axis."""
    e = html.escape
    end = max([summary["seconds"]] + [r["end"] or 0 for r in summary["rounds"]]
              + [s["end"] or 0 for s in summary["stages"]]) or 1.0
    scale = WIDTH / end
    lanes: list[tuple[str, list]] = []
    ready = (summary.get("engine") or {}).get("ready_at")
    if ready:
        lanes.append(("engine starting", [(0.0, ready, "until the engine was ready", "#d1d5db", [])]))
    loops = summary.get("loops", {})
    for loop, label in loops.items():
        bars = [(r["start"], r["end"], f"round {r['index'] + 1}/{r['count']}",
                 "#93c5fd" if r["index"] % 2 else "#60a5fa", [])
                for r in summary["rounds"] if r["loop"] == loop and r["end"] is not None]
        if bars:
            lanes.append((label, bars))
    by_stage: dict[str, list] = {}
    for s in summary["stages"]:
        tip = f"{s['tasks']} tasks" + (f", round {s['round'] + 1}" if s["round"] is not None else "")
        by_stage.setdefault(s["label"], []).append((s["start"], s["end"], tip, "#fdba74", s["ticks"]))
    lanes += list(by_stage.items())
    height = ROW_H * len(lanes) + 30
    out = [f'<svg class="gantt" xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 20}" height="{height}">']
    for i, (label, bars) in enumerate(lanes):
        y = i * ROW_H
        out.append(f'<text x="4" y="{y + 13}">{e(label[:34])}</text>')
        for start, stop, tip, color, ticks in bars:
            x0 = LEFT + start * scale
            w = max(1.0, ((stop if stop is not None else end) - start) * scale)
            out.append(f'<rect class="bar" x="{x0:.1f}" y="{y + 2}" width="{w:.1f}" height="{ROW_H - 4}" '
                       f'fill="{color}"><title>{e(label)}: {e(tip)}, {start:.3f}-{(stop or end):.3f} s</title></rect>')
            for t in ticks:
                out.append(f'<line x1="{LEFT + t * scale:.1f}" x2="{LEFT + t * scale:.1f}" y1="{y + 3}" '
                           f'y2="{y + ROW_H - 3}" stroke="#9a3412"/>')
    axis = len(lanes) * ROW_H + 4
    out.append(f'<line x1="{LEFT}" x2="{LEFT + WIDTH}" y1="{axis}" y2="{axis}" stroke="#374151"/>')
    for k in range(6):
        x = LEFT + WIDTH * k / 5
        out.append(f'<text x="{x:.1f}" y="{axis + 14}" text-anchor="middle">{end * k / 5:.2f} s</text>')
    out.append("</svg>")
    if not lanes:
        return "<p>no stages ran on the engine</p>"
    return "".join(out)
