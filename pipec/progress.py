"""Progress while a pipeline runs, and the summary after it.

Progress is drawn only on a terminal (with rich); piped or captured output gets the
summary alone, so logs and tests stay clean.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from pipec.backends.base import RunResult
from pipec.compiler import ir
from pipec.backends.runtime.semantics import to_jsonable


class TerminalProgress:
    """Per-stage task counts and the current round, on a TTY; nothing otherwise."""

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()
        self._bar = None
        self._tasks: dict[str, int] = {}
        self._round = ""

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(file=self.stream), transient=True)
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False

    def stage(self, name: str, tasks: int) -> None:
        if self._bar is None:
            return
        label = f"{name}{self._round}"
        if name in self._tasks:
            self._bar.reset(self._tasks[name], total=tasks, description=label)
        else:
            self._tasks[name] = self._bar.add_task(label, total=tasks)

    def advance(self, name: str, done: int = 1) -> None:
        if self._bar is not None and name in self._tasks:
            self._bar.advance(self._tasks[name], done)

    def round(self, loop: str, index: int, count: int) -> None:
        self._round = f"  [round {index + 1}/{count}]"


def print_summary(result: RunResult, pipeline, as_json: bool = False, out: TextIO = sys.stdout,
                  err: TextIO = sys.stderr) -> None:
    """Plain outputs on stdout (JSON), files and timings on stderr."""
    if as_json:
        json.dump({"backend": result.backend, "seconds": round(result.seconds, 3),
                   "outputs": to_jsonable(result.outputs), "files": result.files,
                   "rounds": result.rounds, "capped": result.capped,
                   "timings": {k: round(v, 4) for k, v in result.timings.items()}}, out, indent=2, sort_keys=True)
        out.write("\n")
        return
    for name, value in result.outputs.items():
        out.write(f"{name} = {json.dumps(to_jsonable(value), sort_keys=True)}\n")
    err.write(f"pipeline `{pipeline.name}` finished on {result.backend} in {result.seconds:.2f} s\n")
    for name, path in result.files.items():
        err.write(f"  wrote {path}  ({name})\n")
    for loop, rounds in result.rounds.items():
        err.write(f"  {loop}: {rounds} round{'s' if rounds != 1 else ''}\n")
    for loop in result.capped:
        until = pipeline.ir.info.loops[loop].until
        what = f"`{until.node}`" if hasattr(until, "node") else "its condition"
        err.write(f"warning: {loop} stopped at its cap of {result.rounds.get(loop)} rounds; {what} never became true\n")
    busy = {k: v for k, v in result.timings.items() if k in pipeline.ir.graph and _does_work(pipeline.ir.op(k))}
    slowest = sorted(busy.items(), key=lambda kv: -kv[1])[:8]
    if slowest:
        err.write("  time by operation (slowest first):\n")
        width = max(len(k) for k, _ in slowest)
        for name, seconds in slowest:
            err.write(f"    {name:<{width}}  {seconds:8.3f} s\n")


def _does_work(op: ir.Op) -> bool:
    """Operations worth listing in the timing summary (not parameters or constants)."""
    return not isinstance(op, (ir.Param, ir.Const, ir.RoundIndex, ir.Var, ir.Rebind, ir.Expr))
