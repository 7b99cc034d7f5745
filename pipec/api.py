"""The Python API for notebooks and tests: ``load(path) -> Pipeline``.

>>> p = load("examples/wordcount.pipe")
>>> p.check()                      # warnings; raises CompileError on errors
>>> p.ir                           # the networkx-backed IR
>>> p.run(backend="local", params={"n": 5}).outputs
"""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pipec.dsl import ast
from pipec.dsl.diagnostics import (ERROR, Diagnostic, SemanticError, UnsupportedOnBackend, UsageError,
                             did_you_mean)
from pipec.dsl.parser import MAX_NESTING, parse
from pipec.dsl.source import SourceFile
from pipec.compiler import ir
from pipec.compiler.build import Builder
from pipec.compiler.modules import ModuleIndex

if TYPE_CHECKING:
    from pipec.backends.base import Backend


@dataclass(repr=False)
class Pipeline:
    """A parsed and built pipeline. Building never imports user code. In a notebook it
    draws itself (an SVG of its graph)."""

    source: SourceFile
    module: ast.Module
    ir: ir.IR
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # parameter -> (least value, what needs it, where it is used), from the builder
    param_limits: dict[str, list] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.ir.info.name

    def __repr__(self) -> str:
        params = ", ".join(self.ir.info.params)
        return f"<Pipeline {self.name}({params}) from {self.source.path}: {len(self.ir)} nodes>"

    def graph(self, format: str = "svg", backend: "str | Backend | None" = None,
              params: Mapping[str, Any] | None = None) -> str:
        """The pipeline's graph as text (what `pipec graph` writes): ``format`` is
        ``svg`` (drawn without Graphviz), ``html`` (the interactive offline page),
        ``dot``, ``mermaid`` or ``json``; with ``backend``, its lowered plan."""
        from pipec.compiler import graph_html, render
        if backend is not None:
            drawing = render.plan_drawing(self.lower(backend, params))
        else:
            drawing = render.pipeline_drawing(self.ir)
        if format == "svg":
            return graph_html.to_svg(drawing)
        return render.render(drawing, format)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"image/svg+xml": self.graph("svg"), "text/plain": repr(self)}

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]

    def check(self, backend: "str | Backend | None" = None) -> list[Diagnostic]:
        """Raise :class:`CompileError` if the pipeline (or ``backend``, a name or a
        configured Backend, with its capabilities and engine facts) rejects it; otherwise
        return the warnings. Checking is static: a backend named here needs no engine
        installed (`pipec check --backend spark` works without PySpark)."""
        diagnostics = list(self.diagnostics)
        if isinstance(backend, str):
            from pipec.backends import backend_class
            backend = backend_class(backend)()
        if backend is not None:
            diagnostics += self.backend(backend).check(self.ir)
        errors = [d for d in diagnostics if d.is_error]
        if errors:
            gap = all(d.code == "unsupported" for d in errors)
            raise (UnsupportedOnBackend if gap else SemanticError)(diagnostics, self.source)
        return diagnostics

    def params(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Bind parameters: defaults, overridden by ``given`` (strings are parsed by type)."""
        return bind_params(self, given or {})

    @staticmethod
    def backend(backend: "str | Backend | None" = None, **options) -> "Backend":
        """A configured Backend: ``backend`` itself, or the one registered under that name
        (the default engine for None) made with ``options`` (``address``, ...)."""
        from pipec.backends import DEFAULT_BACKEND, get_backend
        from pipec.backends.base import Backend
        if isinstance(backend, Backend):
            return backend
        return get_backend(backend or DEFAULT_BACKEND, **options)

    def lower(self, backend: "str | Backend | None" = None, params: Mapping[str, Any] | None = None, **options):
        """The backend's plan for these parameters (what `pipec compile` shows); checks
        first, so every refusal comes before anything is lowered."""
        engine = self.backend(backend, **options)
        self.check(engine)
        plan = engine.lower(self.ir, self.params(params))
        plan.source = self.source
        return plan

    def run(self, backend: "str | Backend | None" = None, params: Mapping[str, Any] | None = None,
            progress=None, run_dir: str | None = None, resume: bool = False,
            storage_options: Mapping[str, dict] | None = None, **options):
        """Run the pipeline on ``backend`` (made with engine ``options``: ``address``, a
        Dask ``client``, ...); ``resume`` continues the run in ``run_dir`` (a folder or a
        storage URL). ``storage_options`` maps a protocol to fsspec options for this run
        (``{"s3": {"endpoint_url": ..., "key": ..., "secret": ...}}``): the driver uses
        them, every engine ships them to the run's workers and actors (never into the
        plan, the logs, the summary or the report), and they are gone when the run ends.
        Returns a :class:`pipec.backends.base.RunResult`; the run folder keeps
        ``summary.json`` and ``report.html`` (``result.report``)."""
        from pipec.backends.runtime import storage
        engine = self.backend(backend, **options)
        if resume and not engine.can("resume"):
            raise UsageError(f"backend `{engine.name}` cannot resume a run",
                             "run it again without --resume, or on a backend that can (`pipec backends`)")
        plan = self.lower(engine, params)
        from pipec.runs import RunEvents
        with storage.configured(storage_options):
            return run_plan(self, plan, RunEvents(progress) if progress is not None else None, run_dir, resume)


def run_plan(pipeline: Pipeline, plan, events=None, run_dir: str | None = None, resume: bool = False):
    """Run ``plan`` (lowered from ``pipeline``) reporting to ``events`` (a
    :class:`pipec.runs.RunEvents`; a quiet one when None), and keep the run's summary
    and report in its folder, however it ends. A run interrupted after all its sinks
    were written counts as finished. Returns the RunResult; the exception that ended
    the run is raised again."""
    from pipec.runs import QuietRunEvents, keep
    events = events if events is not None else QuietRunEvents()
    try:
        result = plan.run(progress=events, run_dir=run_dir, resume=resume)
    except KeyboardInterrupt:
        events.finish("finished" if sinks_all_written(pipeline, events) else "interrupted")
        keep(events, pipeline)
        raise
    except BaseException as exc:
        events.finish("failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        keep(events, pipeline)
        raise
    events.finish("finished")
    report = keep(events, pipeline, result)
    result.report = str(report) if report else None
    return result


def sinks_all_written(pipeline: Pipeline, events) -> bool:
    """Whether every file sink of ``pipeline`` was committed in the run ``events`` saw
    (a pipeline with file sinks only; plain outputs die with the driver)."""
    sinks = {n: op for n, op in pipeline.ir.items() if isinstance(op, ir.Sink)}
    return bool(sinks) and all(op.format is not None and n in events.sinks for n, op in sinks.items())


def load(path: str | Path) -> Pipeline:
    """Read, parse and build ``path``. Raises on syntax errors; semantic errors are kept in
    ``diagnostics`` and raised by :meth:`Pipeline.check` (so tools can show all of them)."""
    source = SourceFile.read(path)
    return load_source(source)


def load_source(source: SourceFile, index: ModuleIndex | None = None,
                module: ast.Module | None = None) -> Pipeline:
    """Parse and build ``source`` (see :func:`load`). ``index`` finds the user's modules
    (read as source; by default from the file's folder upwards); ``module`` is the AST
    of ``source`` when the caller parsed it already (the language server parses only the
    statements an edit changed)."""
    with _few_collections(), _stack_for_nesting():
        if module is None:
            module = parse(source)
        builder = Builder(module, source, index)
        graph = builder.build()
    return Pipeline(source, module, graph, builder.diagnostics, builder.param_limits)


@contextmanager
def _few_collections():
    """Parsing and building allocate many small objects that all stay alive and make
    almost no garbage; the cyclic garbage collector would walk them again and again
    (with a raised threshold still 0.6 s of 1.8 s for a 10,000-stage file, most of it in
    full collections once the heap is large). So it is off while the front end runs,
    and back as it was after (nesting keeps it off until the outermost one ends)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _stack_for_nesting():
    """The builder recurses up to about 5 frames per level of nesting, which the parser
    caps at MAX_NESTING: make room for that above however deep the caller already is."""
    old = sys.getrecursionlimit()
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    sys.setrecursionlimit(max(old, depth + 5 * MAX_NESTING + 100))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _convert(value: Any, type_name: str):
    if not isinstance(value, str):
        if type_name == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        ok = {"int": int, "float": float, "str": str, "bool": bool}[type_name]
        if isinstance(value, ok) and not (type_name == "int" and isinstance(value, bool)):
            return value
        raise ValueError
    if type_name == "bool":
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError
    if type_name == "int":
        return int(value.replace("_", ""), 10)
    if type_name == "float":
        result = float(value.replace("_", ""))
        return result
    return value


def bind_params(pipeline: Pipeline, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``given``; errors point at the parameter's declaration."""
    declared = {p.name.text: p for p in pipeline.module.pipeline.params}
    diagnostics: list[Diagnostic] = []
    for name in given:
        if name not in declared:
            hint = did_you_mean(name, declared) or (
                f"`{pipeline.name}` takes: {', '.join(declared)}" if declared else f"`{pipeline.name}` takes no parameters")
            diagnostics.append(Diagnostic(ERROR, f"unknown parameter `{name}`", pipeline.module.pipeline.name.span,
                                          hint, pipeline.source.path, "unknown-parameter"))
    values: dict[str, Any] = {}
    for name, param in declared.items():
        op = pipeline.ir.op(name) if name in pipeline.ir else None
        if not isinstance(op, ir.Param):
            continue
        if name in given:
            try:
                values[name] = _convert(given[name], op.type)
            except (ValueError, TypeError):
                diagnostics.append(Diagnostic(
                    ERROR, f"parameter `{name}` is {'an' if op.type == 'int' else 'a'} {op.type}, "
                           f"and {given[name]!r} is not", param.span,
                    f"for example --param {name}={_example(op.type)}", pipeline.source.path, "bad-parameter-value"))
                continue
            for minimum, what, span in pipeline.param_limits.get(name, ()):
                if values[name] < minimum:
                    diagnostics.append(Diagnostic(
                        ERROR, f"parameter `{name}` is {values[name]}, and {what} needs at least {minimum}", span,
                        f"pass --param {name}={minimum} or more", pipeline.source.path, "parameter-too-small"))
                    break
        elif op.required:
            diagnostics.append(Diagnostic(ERROR, f"parameter `{name}` has no default and was not given",
                                          param.span, f"pass --param {name}={_example(op.type)}",
                                          pipeline.source.path, "missing-parameter"))
        else:
            values[name] = op.default
    if diagnostics:
        raise SemanticError(diagnostics, pipeline.source)
    return values


def _example(type_name: str) -> str:
    return {"int": "10", "float": "0.5", "str": "text", "bool": "true"}[type_name]


def parse_param_args(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line to a dict; raises UsageError on bad items."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--param expects name=value, got {item!r}", "e.g. --param epochs=5")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise UsageError(f"--param name {key!r} is not a valid name")
        out[key] = value
    return out
