"""The one Backend interface: ``lower(ir, params) -> Plan``; a Plan explains, draws and runs.

A backend is a small translation table from IR operations to engine calls plus a
declared set of capabilities. Engine imports stay inside each backend module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import networkx as nx

from pipec.compiler import ir
from pipec.compiler.capabilities import FEATURES, features_used
from pipec.dsl.diagnostics import ERROR, Diagnostic
from pipec.dsl.source import Span


@dataclass
class RunResult:
    """What a run produced: plain outputs (sinks without a file), files written, timings."""

    backend: str
    outputs: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: str | None = None


class Progress(Protocol):
    """What a plan reports while it runs (the CLI draws it; tests may record it)."""

    def stage(self, name: str, tasks: int) -> None: ...
    def advance(self, name: str, done: int = 1) -> None: ...
    def round(self, loop: str, index: int, count: int) -> None: ...


class NoProgress:
    def stage(self, name: str, tasks: int) -> None:
        pass

    def advance(self, name: str, done: int = 1) -> None:
        pass

    def round(self, loop: str, index: int, count: int) -> None:
        pass


class Plan(ABC):
    """A pipeline lowered for one engine, for one set of parameters."""

    backend: str

    def __init__(self, graph: ir.IR, params: dict[str, Any]):
        self.ir = graph
        self.params = params

    @abstractmethod
    def explain(self) -> str:
        """The lowered plan as text: what really runs, in order."""

    @abstractmethod
    def to_json(self) -> dict:
        """The lowered plan as JSON data."""

    def graph(self) -> nx.DiGraph:
        """The lowered graph for drawing; nodes carry ``label`` and ``group``."""
        return self.ir.graph

    @abstractmethod
    def run(self, progress: Progress | None = None, run_dir: str | None = None) -> RunResult:
        """Run the plan and return its results."""


class Backend(ABC):
    """An engine. Subclasses set ``name``, ``capabilities`` and implement ``lower``."""

    name: str = ""
    description: str = ""
    capabilities: frozenset[str] = frozenset(FEATURES)
    # feature -> why it is missing and what to do instead
    gap_hints: dict[str, str] = {}

    def __init__(self, address: str | None = None):
        self.address = address

    def check(self, graph: ir.IR) -> list[Diagnostic]:
        """One error per use of a feature this backend lacks, before anything runs."""
        out = []
        for feature, spans in features_used(graph).items():
            if feature in self.capabilities:
                continue
            for span in spans:
                where = Span(span.line, span.column, span.end_line, span.end_column, 0, 0) if span else None
                out.append(Diagnostic(
                    ERROR, f"backend `{self.name}` does not support {FEATURES[feature]}", where,
                    self.gap_hints.get(feature), graph.info.path, code="unsupported"))
        return out

    @abstractmethod
    def lower(self, graph: ir.IR, params: dict[str, Any]) -> Plan:
        """Translate the IR into this engine's plan."""
