"""A pipeline lowered onto Spark: what ``pipec compile`` and ``pipec graph`` show, and runs.

The plan is the driver's own walk of the pipeline in *dry* mode (see
:mod:`pipec.backends.spark.driver`): the RDDs are really built, so the lineage shown is
Spark's (``toDebugString``, with RDD ids renumbered from 1 and call sites left out so
the text does not depend on the session), and each job, cache, broadcast and driver-side
actor call is listed where it happens, a loop's body once for all its rounds.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from pipec.compiler import ir
from pipec.backends.base import Plan, Progress, RunResult
from pipec.backends.spark.driver import Analysis, SparkDriver


class SparkPlan(Plan):
    backend = "spark"
    resumable = True  # `pipec run --resume RUN`

    def __init__(self, graph: ir.IR, params: dict[str, Any], address: str | None = None, ui: bool = False):
        super().__init__(graph, params)
        self.address = address
        self.ui = ui
        self.analysis = Analysis.of(graph)
        self.max_retries = max((op.options.retries for _, op in graph.items()
                                if isinstance(getattr(op, "options", None), ir.StageOptions)), default=0)
        self._lowered: dict | None = None

    def run(self, progress: Progress | None = None, run_dir: str | None = None, resume: bool = False) -> RunResult:
        """Run on the active SparkContext (or one started for ``address``); with
        ``resume``, continue the run in ``run_dir`` after its last completed round."""
        return SparkDriver(self, progress, run_dir, resume=resume).run()

    # ---- the lowered plan

    def lowered(self) -> dict:
        """Jobs, lineage and driver steps, as JSON data (builds RDDs, runs no job)."""
        if self._lowered is None:
            driver = SparkDriver(self, dry=True)
            driver.capture = _capture
            driver.run()
            self._lowered = driver.lowered
        return self._lowered

    def to_json(self) -> dict:
        return self.lowered()

    def explain(self) -> str:
        data = self.lowered()
        lines = [f"spark plan for pipeline `{data['pipeline']}` on {data['master']}",
                 "(jobs in program order; a loop's body is shown once for all its rounds)"]
        _explain_steps(data["steps"], lines, 1)
        return "\n".join(lines) + "\n"

    def graph(self) -> nx.DiGraph:
        """RDDs (boxed by the job or round that uses them), jobs and driver steps."""
        data = self.lowered()
        g = nx.DiGraph()
        _graph_steps(data["steps"], g, "top level", [None])
        return g


def _explain_steps(steps: list[dict], lines: list[str], depth: int) -> None:
    pad = "  " * depth
    for step in steps:
        if step["kind"] == "loop":
            lines.append(f"{pad}{step['text']}")
            _explain_steps(step["steps"], lines, depth + 1)
        elif step["kind"] == "job":
            lines.append(f"{pad}job: {step['text']}")
            lines.extend(f"{pad}    {line}" for line in step["lineage"])
        else:
            lines.append(f"{pad}{step['text']}")


def _graph_steps(steps: list[dict], g: nx.DiGraph, group: str, last: list) -> None:
    for i, step in enumerate(steps):
        if step["kind"] == "loop":
            _graph_steps(step["steps"], g, f"{step['node']}: each round", last)
            continue
        sid = f"{group}/{i}: {step['node']}"
        if step["kind"] == "job":
            g.add_node(sid, label=f"job {step['node']} ({step['action']}, {step['tasks']} tasks)", group=group)
            for rdd in step["rdds"]:
                rid = f"rdd {rdd['id']}"
                if "label" not in g.nodes.get(rid, {}):
                    label = f"{rdd['class']} {rdd['id']}\n{rdd['name']}" if rdd["name"] else f"{rdd['class']} {rdd['id']}"
                    if rdd["cached"]:
                        label += "\n(cached)"
                    g.add_node(rid, label=label, group=group)
                for dep, shuffle in rdd["deps"]:
                    g.add_edge(f"rdd {dep}", rid, kind="data", label="shuffle" if shuffle else "")
            g.add_edge(f"rdd {step['rdds'][0]['id']}", sid, kind="data")
        else:
            g.add_node(sid, label=step["text"].removeprefix("driver: "), group=group)
        if last[0] is not None:
            g.add_edge(last[0], sid, kind="order")
        last[0] = sid


# ---- lineage -----------------------------------------------------------------------------------


def _capture(driver: SparkDriver) -> dict:
    """Replace each job's RDD by its lineage (text and structure) while the context lives.

    RDDs are numbered #1, #2, ... in the order the plan first shows them (Spark's own ids
    depend on what the session ran before), and a cached RDD's lineage is written out
    once: later jobs that read it say "shown above"."""
    ids: dict[int, str] = {}
    infos: dict[str, dict] = {}
    shown: set[str] = set()

    def number(rid: int) -> str:
        return ids.setdefault(rid, f"#{len(ids) + 1}")

    def convert(steps: list[dict]) -> list[dict]:
        out = []
        for step in steps:
            step = dict(step)
            if step["kind"] == "loop":
                step["steps"] = convert(step["steps"])
            elif step["kind"] == "job":
                root = step.pop("rdd")._jrdd.rdd()
                step["rdds"] = _structure(root, number, infos)
                step["lineage"] = _tree(step["rdds"][0]["id"], infos, shown)
            out.append(step)
        return out

    steps = convert(driver.trace)
    return {"backend": "spark", "pipeline": driver.ir.info.name, "params": driver.params,
            "master": driver.session.master, "steps": steps}


def _structure(jrdd, number, infos: dict[str, dict]) -> list[dict]:
    """The RDD and its ancestors (breadth first): id, class, name, partitions, storage,
    dependencies as (parent id, is a shuffle)."""
    out, seen, queue = [], set(), [jrdd]
    while queue:
        r = queue.pop(0)
        rid = number(r.id())
        if rid in seen:
            continue
        seen.add(rid)
        deps = r.dependencies()
        parents = []
        for i in range(deps.size()):
            dep = deps.apply(i)
            parent = dep.rdd()
            parents.append([number(parent.id()), dep.getClass().getSimpleName() == "ShuffleDependency"])
            queue.append(parent)
        level = r.getStorageLevel()
        info = {"id": rid, "class": r.getClass().getSimpleName(), "name": r.name() or "",
                "partitions": r.getNumPartitions(), "cached": bool(level.useMemory() or level.useDisk()),
                "storage": level.description() if (level.useMemory() or level.useDisk()) else "",
                "deps": parents}
        infos[rid] = info
        out.append(info)
    return out


def _tree(root: str, infos: dict[str, dict], shown: set[str]) -> list[str]:
    """The lineage in ``toDebugString``'s layout: ``(partitions) name Class[#id]``,
    narrow parents below with `` |  ``, shuffle (and union) parents as ``+-`` branches."""
    lines: list[str] = []

    def visit(rid: str, first: str, rest: str, show_parts: bool) -> None:
        info = infos[rid]
        head = f"({info['partitions']}) " if show_parts else ""
        name = f"{info['name']} " if info["name"] else ""
        storage = f" [{info['storage']}]" if info["storage"] else ""
        if info["cached"] and rid in shown:
            lines.append(f"{first}{head}{name}{info['class']}[{rid}]{storage} (lineage shown above)")
            return
        lines.append(f"{first}{head}{name}{info['class']}[{rid}]{storage}")
        if info["cached"]:
            shown.add(rid)
        deps = info["deps"]
        if len(deps) == 1 and not deps[0][1]:
            visit(deps[0][0], rest + " |  ", rest, False)
            return
        for parent, _shuffle in deps:
            visit(parent, rest + " +-", rest + "    ", True)

    visit(root, "", "", True)
    return lines
