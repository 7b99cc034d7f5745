"""The one Backend interface: ``lower(ir, params) -> Plan``; a Plan explains, draws and runs.

A backend is a small translation table from IR operations to engine calls plus a
declared set of capabilities. Engine imports stay inside each backend module.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipec.compiler import ir
from pipec.compiler.capabilities import FEATURES, features_used
from pipec.dsl.diagnostics import ERROR, Diagnostic
from pipec.dsl.source import Span

if TYPE_CHECKING:  # networkx costs ~70 ms to import; only plan drawing needs it
    import networkx as nx


@dataclass
class RunResult:
    """What a run produced: plain outputs (sinks without a file), files written, timings."""

    backend: str
    outputs: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)
    # `repeat N until c` loops that stopped at their cap N with `c` never true
    capped: list[str] = field(default_factory=list)
    # sinks inside loops: sink -> every file it wrote, one per round it ran (``files`` has the last)
    round_files: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: str | None = None
    report: str | None = None  # the run's report.html, once kept (pipec.runs.keep)

    def read(self, sink: str) -> Any:
        """What file sink ``sink`` wrote, read back: a ``.json`` file's value, a
        ``.jsonl`` file's list, a text file's lines, a parquet or csv dataset as a
        pandas DataFrame. Plain sinks (no file) are in ``outputs``."""
        if sink not in self.files:
            known = ", ".join(self.files) or "none"
            raise KeyError(f"no file sink `{sink}` (file sinks of this run: {known})")
        import json
        from pathlib import Path
        path = Path(self.files[sink])
        if path.is_dir() or path.suffix in (".parquet", ".csv"):
            import pandas as pd
            if path.suffix == ".csv" or any(path.glob("*.csv")):
                files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
                return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
            return pd.read_parquet(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return text.splitlines()

    def __repr__(self) -> str:
        rounds = ", ".join(f"{n} rounds" for n in self.rounds.values())
        return (f"<RunResult {self.backend} {self.seconds:.2f} s: {len(self.outputs)} outputs, "
                f"{len(self.files)} files{', ' + rounds if rounds else ''}>")

    def _repr_html_(self) -> str:
        """A notebook's view: outputs, files and the slowest steps, in one table."""
        from html import escape
        rows = [("output", k, repr(v)[:80]) for k, v in self.outputs.items()]
        rows += [("file", k, v) for k, v in self.files.items()]
        rows += [("rounds", k, str(v)) for k, v in self.rounds.items()]
        rows += [("time", k, f"{v:.3f} s") for k, v in sorted(self.timings.items(), key=lambda kv: -kv[1])[:8]]
        if self.report:
            rows.append(("report", "report.html", self.report))
        body = "".join(f"<tr><td>{escape(a)}</td><td><code>{escape(b)}</code></td><td>{escape(c)}</td></tr>"
                       for a, b, c in rows)
        return (f"<p><b>{escape(self.backend)}</b> run, {self.seconds:.2f} s</p>"
                f"<table><tr><th></th><th>name</th><th>value</th></tr>{body}</table>")


class Progress(Protocol):
    """What a plan reports while it runs (the CLI draws it; tests may record it).

    ``stage``, ``advance`` and ``round`` are required; the run hooks of
    :data:`RUN_HOOKS` are optional (the driver calls them through :func:`notify`), so a
    recorder that only counts tasks keeps working."""

    def stage(self, name: str, tasks: int) -> None: ...
    def advance(self, name: str, done: int = 1) -> None: ...
    def round(self, loop: str, index: int, count: int) -> None: ...


# Optional Progress hooks, with what the shared driver passes them:
#   run_started(run_id, run_dir, backend)      before the driver's own work
#   engine_ready(info)                         the engine is up: a dict with workers,
#                                              dashboard (a URL or None), versions
#   round_end(loop, index, count, ok)          after round ``index`` (``ok``: it completed)
#   actor_call(actor, seq, method, replayed)   a graph-level call applied (or replayed)
#   sink_written(node, path)                   a sink's file, once committed
#   fault(message)                             the engine lost a worker, an actor was
#                                              restarted and its calls replayed, ...
RUN_HOOKS = ("run_started", "engine_ready", "round_end", "actor_call", "sink_written", "fault")


def notify(progress: Any, hook: str, *args) -> None:
    """Call ``progress.<hook>(*args)`` when ``progress`` has that optional hook."""
    fn = getattr(progress, hook, None)
    if fn is not None:
        fn(*args)


class NoProgress:
    def stage(self, name: str, tasks: int) -> None:
        pass

    def advance(self, name: str, done: int = 1) -> None:
        pass

    def round(self, loop: str, index: int, count: int) -> None:
        pass


@dataclass(frozen=True)
class Machine:
    """What one place tasks run on offers them: cores, GPUs, memory in bytes."""

    cpus: int
    gpus: int
    memory: int

    @classmethod
    def this_one(cls) -> "Machine":
        """This machine: the cores this process may use, the NVIDIA GPUs it sees (as
        CUDA_VISIBLE_DEVICES or the driver lists them), its physical memory."""
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 4 * 2**30
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
        else:
            try:
                gpus = len(os.listdir("/proc/driver/nvidia/gpus"))
            except OSError:
                gpus = 0
        return cls(cores, gpus, int(total))


def resource_gaps(graph: ir.IR, machines: list[Machine], holder: str) -> list[tuple[str, ir.Op, str]]:
    """The stages of ``graph`` asking for more cpus, gpus or memory than any one of
    ``machines`` (the places a task can run, each a ``holder``: "worker of the cluster")
    has: their tasks would wait forever. Each as (node, op, what it needs and why it
    cannot have it). Used before a run where the engine is known (``Backend.check``) and
    when a run joins a cluster (the driver asks the cluster what its machines have)."""
    out = []
    for node, op in graph.items():
        options = getattr(op, "options", None)
        if not isinstance(options, ir.StageOptions):
            continue
        r = options.resources
        asks = [(want, field) for want, field in ((r.gpus, "gpus"), (r.cpus, "cpus"), (r.memory, "memory")) if want]
        if not asks or any(all(getattr(m, f) >= want for want, f in asks) for m in machines):
            continue
        most = {f: max((getattr(m, f) for m in machines), default=0) for _, f in asks}
        each = f"each {holder} has" if len(machines) == 1 else f"the most a {holder} has is"
        wanted = []
        for want, f in asks:
            if want <= most[f]:
                continue
            if f == "gpus":
                wanted.append(("a GPU" if want == 1 else f"{want:g} GPUs",
                               f"no {holder} has a GPU" if not most[f] else f"{each} {most[f]:g}"))
            elif f == "cpus":
                wanted.append((f"{want:g} cpus", f"{each} {most[f]:g}"))
            else:
                wanted.append((f"{want / 2**30:.1f} GiB of memory", f"{each} {most[f] / 2**30:.1f} GiB"))
        if not wanted:  # each alone is there, never all on one machine
            wanted.append((" and ".join(f"{want:g} {f}" for want, f in asks), f"no single {holder} has all of it"))
        out.extend((node, op, f"stage `{op.name or node}` needs {what}: {why}") for what, why in wanted)
    return out


class Plan(ABC):
    """A pipeline lowered for one engine, for one set of parameters.

    ``explain``, ``to_json`` and ``graph`` need no running engine; ``run`` is the same on
    every backend: an engine says which driver runs its plan (``driver``) and which engine
    session a run holds (``engine``), nothing else."""

    backend: str
    # The driver class that runs this plan, as "module:Class": imported only by ``run``,
    # so that explaining a plan never imports its engine.
    driver: str = ""

    def __init__(self, graph: ir.IR, params: dict[str, Any]):
        self.ir = graph
        self.params = params
        # The .pipe text, for run-time errors with a caret (set by Pipeline.lower; a plan
        # made from the IR alone reads the file when an error needs it).
        self.source = None
        self.last_driver = None  # the driver of the last run that finished (tests read its events)

    @abstractmethod
    def explain(self) -> str:
        """The lowered plan as text: what really runs, in order."""

    @abstractmethod
    def to_json(self) -> dict:
        """The lowered plan as JSON data."""

    def graph(self) -> nx.DiGraph:
        """The lowered graph for drawing; nodes carry ``label`` and ``group``."""
        return self.ir.graph

    @property
    def capabilities(self) -> frozenset[str]:
        """What the backend this plan was lowered for declares it supports."""
        from pipec.backends import backend_class
        return backend_class(self.backend).capabilities

    def run(self, progress: Progress | None = None, run_dir: str | None = None, resume: bool = False) -> RunResult:
        """Run the plan and return its results. ``run_dir`` is the run folder (snapshots,
        records); ``resume`` continues the run in it after its last completed round, for
        a backend whose capabilities include ``resume``. What can be checked before the
        engine starts is (a bad bucket should not cost a cluster start); then the driver
        runs inside the engine session."""
        module, _, name = self.driver.partition(":")
        driver = getattr(importlib.import_module(module), name)(self, progress, run_dir, resume)
        driver.preflight()
        with self.engine(driver):
            result = driver.run()
        self.last_driver = driver
        return result

    def engine(self, driver) -> contextlib.AbstractContextManager:
        """The engine session ``driver`` runs in: started and stopped around the run,
        joined, or borrowed from the caller. None by default (the driver's ``setup``
        starts what it needs)."""
        return contextlib.nullcontext()


class Backend(ABC):
    """An engine. Subclasses set ``name``, ``capabilities`` and implement ``lower``.

    ``check`` makes every static refusal, before anything runs (``lower`` refuses
    nothing); capabilities are data, ``resume`` among them."""

    name: str = ""
    description: str = ""
    capabilities: frozenset[str] = frozenset(FEATURES)
    # feature -> why it is missing and what to do instead
    gap_hints: dict[str, str] = {}
    # The module whose presence says the engine is installed, and the pip extra that
    # installs it (None: nothing to install).
    engine_module: str | None = None
    extra: str | None = None
    # Where the engine keeps an actor and an actor pool's members: "workers" (processes
    # it may lose, from which pipec restores them) or "driver" (the run's own process:
    # losing it is losing the run, which `resume` continues).
    actor_host: str = "workers"
    pool_host: str = "workers"

    def __init__(self, address: str | None = None):
        self.address = address

    def check(self, graph: ir.IR) -> list[Diagnostic]:
        """Every reason this backend refuses ``graph``, as diagnostics at the source
        positions that need what is missing. Subclasses add engine facts (resources a
        worker cannot offer, say) to the capability gaps found here."""
        out = []
        for feature, spans in features_used(graph).items():
            if feature in self.capabilities:
                continue
            for span in spans:
                out.append(self.refusal(graph, span, f"backend `{self.name}` does not support {FEATURES[feature]}",
                                        self.gap_hints.get(feature)))
        return out

    def refusal(self, graph: ir.IR, span: ir.SpanModel | None, message: str, hint: str | None) -> Diagnostic:
        """An "unsupported" error at ``span`` of ``graph``'s file."""
        where = Span(span.line, span.column, span.end_line, span.end_column, 0, 0) if span else None
        return Diagnostic(ERROR, message, where, hint, graph.info.path, code="unsupported")

    def over_resources(self, graph: ir.IR, has: "Machine", holder: str) -> list[Diagnostic]:
        """Stages asking for more cpus, gpus or memory than one ``holder`` (a place a
        task can run: "worker of the local cluster") has, ``has``: they would wait
        forever, so each is an error at the stage (see :func:`resource_gaps`)."""
        return [self.refusal(graph, op.span, message, "ask for less, or run on a cluster that has it (--address)")
                for _, op, message in resource_gaps(graph, [has], holder)]

    def can(self, feature: str) -> bool:
        """Whether this backend supports ``feature`` (a key of capabilities.FEATURES)."""
        return feature in self.capabilities

    @abstractmethod
    def lower(self, graph: ir.IR, params: dict[str, Any]) -> Plan:
        """Translate the IR into this engine's plan (``check`` has accepted it)."""
