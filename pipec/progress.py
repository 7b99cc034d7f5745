"""What `pipec run` shows: the run header, progress while it runs, the summary after it.

On a terminal, progress is drawn live with rich (round k of N with elapsed time and an
estimate, one bar per stage inside the round); piped into a log, it is one plain,
timestamped line per round (per stage for a pipeline without loops); ``quiet`` shows
nothing but the summary's outputs. Every name shown is the pipeline's own (see
:class:`Names`): `repeat epochs`, `stage grads`, `value total`, never `loop1`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from pipec.backends.base import RunResult
from pipec.compiler import ir
from pipec.backends.runtime.semantics import to_jsonable


class Names:
    """The pipeline's own words for its nodes and loops, for people to read."""

    def __init__(self, graph: ir.IR, source_text: str | None = None):
        self.ir = graph
        if source_text is None:
            try:
                with open(graph.info.path, encoding="utf-8") as f:
                    source_text = f.read()
            except OSError:
                source_text = ""
        self.lines = source_text.splitlines()

    def node(self, node: str) -> str:
        """``stage grads``, ``value total``, ``ps.weights() for grads``; an engine's own
        group name that is no IR node comes back as it is."""
        if node not in self.ir:
            return node
        op = self.ir.op(node)
        if isinstance(op, (ir.ActorCall, ir.PoolCall)):
            call = (f"{op.pool.node}.each.{op.method}()" if isinstance(op, ir.PoolCall)
                    else f"{op.actor.node}.{op.method}()")
            owner = node.split("/")[0]
            return f"{call} for {owner}" if "/" in node and owner in self.ir else call
        kind = ("source" if isinstance(op, ir.Source) else "actor" if isinstance(op, ir.Actor) else
                "sink" if isinstance(op, ir.Sink) else "var" if isinstance(op, (ir.Var, ir.Rebind)) else
                "param" if isinstance(op, ir.Param) else
                "stage" if op.node_shape == ir.COLLECTION else "value")
        if op.name is None and "/" in node:  # a step the compiler made for a named one
            return f"{op.op} for {node.split('/')[0]}"
        return f"{kind} {op.name or node}"

    def loop(self, loop: str) -> str:
        """A loop as its source says it (``repeat epochs``), with its line."""
        info = self.ir.info.loops.get(loop)
        if info is None or info.span is None:
            return loop
        text = self.lines[info.span.line - 1] if 0 < info.span.line <= len(self.lines) else ""
        text = text.strip().rstrip("{").strip()
        return f"{text or 'repeat'} (line {info.span.line})"

    def does_work(self, node: str) -> bool:
        """Whether a node is worth a row in a timing table (not a parameter or constant)."""
        if node not in self.ir:
            return True
        return not isinstance(self.ir.op(node), (ir.Param, ir.Const, ir.RoundIndex, ir.Var, ir.Rebind, ir.Expr))


def _color_on(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _seconds(s: float) -> str:
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(s), 60)
    return f"{m}:{s:02d} min" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d} h"


class RunView:
    """The run header and progress on ``stream``: ``mode`` is ``live`` (rich bars; a
    terminal), ``plain`` (timestamped lines) or ``quiet`` (nothing); ``auto`` picks
    live on a terminal and plain otherwise. Use it as a context manager around the run.
    """

    def __init__(self, names: Names, stream: TextIO = sys.stderr, mode: str = "auto"):
        self.names = names
        self.stream = stream
        self.mode = ("live" if stream.isatty() else "plain") if mode == "auto" else mode
        self.enabled = self.mode == "live"  # someone watches task by task
        self.color = _color_on(stream)
        self._bar = None
        self._round_tasks: dict[str, int] = {}
        self._stage_tasks: dict[str, int] = {}
        self._loop_start: dict[str, float] = {}
        self._round_start: dict[str, float] = {}
        self._open_rounds: list[str] = []
        self._stage_open: dict[str, list] = {}  # name -> [tasks, done, start]
        self.t0 = time.perf_counter()

    # ---- lifecycle

    def __enter__(self):
        if self.mode == "live":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=Console(file=self.stream, no_color=not self.color), transient=True)
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        return False

    def say(self, text: str) -> None:
        """One line above the bars (or a plain line); nothing when quiet."""
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _stamp(self, text: str) -> None:
        self.say(text if self.mode == "live" else f"{_clock()} {text}")

    def header(self, run_id: str, pipeline: str, backend: str, starting: str, resume: str | None = None,
               resumable: bool = False) -> None:
        """Printed before the engine starts: the run, where it runs, what starts or is
        joined (``starting``, e.g. "starting an embedded dask engine"); ``resumable``: how
        to continue it if it stops."""
        bold, off = ("\033[1m", "\033[0m") if self.color else ("", "")
        note = ("  (continuing from its last completed round)" if resume else
                f"  (if it stops, continue it with --resume {run_id})" if resumable else "")
        self.say(f"{bold}run {run_id}{off}  pipeline {pipeline} on {backend}{note}")
        self.say(f"  {starting} ...")

    # ---- the driver's hooks

    def engine_ready(self, info: dict) -> None:
        parts = []
        if info.get("workers"):
            parts.append(f"{info['workers']} worker{'s' if info['workers'] != 1 else ''}")
        if info.get("dashboard"):
            parts.append(f"dashboard {info['dashboard']}")
        self.say("  engine ready" + (": " + ", ".join(parts) if parts else "")
                 + f"  ({_seconds(time.perf_counter() - self.t0)})")

    def round(self, loop: str, index: int, count: int) -> None:
        now = time.perf_counter()
        self._loop_start.setdefault(loop, now)
        self._round_start[loop] = now
        if loop not in self._open_rounds:
            self._open_rounds.append(loop)
        if self._bar is not None:
            label = f"{self.names.loop(loop)}  round {index + 1}/{count}"
            if loop not in self._round_tasks:
                self._round_tasks[loop] = self._bar.add_task(label, total=count, completed=index)
            else:
                self._bar.update(self._round_tasks[loop], description=label, total=count, completed=index)

    def round_end(self, loop: str, index: int, count: int, ok: bool) -> None:
        now = time.perf_counter()
        if loop in self._open_rounds:
            self._open_rounds.remove(loop)
        if not ok:
            return
        done = index + 1
        if self._bar is not None and loop in self._round_tasks:
            self._bar.update(self._round_tasks[loop], completed=done)
        if self.mode == "plain" and not self._open_rounds:  # inner loops' rounds are inside this line
            elapsed = now - self._loop_start.get(loop, now)
            took = now - self._round_start.get(loop, now)
            left = elapsed / done * (count - done)
            cap = "at most " if self._stops_early(loop) else "about "
            eta = f", {cap}{_seconds(left)} left" if done < count else ""
            self._stamp(f"{self.names.loop(loop)}: round {done}/{count} in {_seconds(took)} "
                        f"(elapsed {_seconds(elapsed)}{eta})")

    def _stops_early(self, loop: str) -> bool:
        """Whether ``loop`` is a `repeat N until c`: N rounds is only its cap."""
        info = self.names.ir.info.loops.get(loop)
        return info is not None and info.until is not None

    def fault(self, message: str) -> None:
        self._stamp(f"note: {message}")

    def stage(self, name: str, tasks: int) -> None:
        self._stage_open[name] = [tasks, 0, time.perf_counter()]
        if self._bar is not None:
            label = f"  {self.names.node(name)}"
            if name in self._stage_tasks:
                self._bar.reset(self._stage_tasks[name], total=tasks, description=label)
            else:
                self._stage_tasks[name] = self._bar.add_task(label, total=tasks)

    def advance(self, name: str, done: int = 1) -> None:
        if self._bar is not None and name in self._stage_tasks:
            self._bar.advance(self._stage_tasks[name], done)
        state = self._stage_open.get(name)
        if state is None:
            return
        state[1] += done
        if state[1] >= state[0] and self.mode == "plain" and not self._open_rounds:
            took = time.perf_counter() - state[2]
            self._stamp(f"{self.names.node(name)}: {state[0]} task{'s' if state[0] != 1 else ''} in {_seconds(took)}")
            del self._stage_open[name]


def print_summary(result: RunResult, pipeline, as_json: bool = False, out: TextIO | None = None,
                  err: TextIO | None = None, report: Any = None, verbose: int = 0, quiet: bool = False) -> None:
    """Plain outputs on stdout (JSON), files and timings on stderr, in the pipeline's own
    names; ``report`` is the run's report.html, named last."""
    out, err = out or sys.stdout, err or sys.stderr
    names = Names(pipeline.ir, pipeline.source.text)
    if as_json:
        json.dump({"backend": result.backend, "seconds": round(result.seconds, 3),
                   "outputs": to_jsonable(result.outputs), "files": result.files,
                   "rounds": result.rounds, "capped": result.capped,
                   "timings": {k: round(v, 4) for k, v in result.timings.items()},
                   "run_dir": result.run_dir, "report": str(report) if report else None},
                  out, indent=2, sort_keys=True)
        out.write("\n")
        return
    for name, value in result.outputs.items():
        out.write(f"{name} = {json.dumps(to_jsonable(value), sort_keys=True)}\n")
    for loop in result.capped:
        err.write(f"warning: {names.loop(loop)} stopped at its cap of {result.rounds.get(loop)} rounds; "
                  "its `until` condition never became true\n")
    if quiet:
        return
    green, off = ("\033[32m", "\033[0m") if _color_on(err) else ("", "")
    err.write(f"{green}pipeline `{pipeline.name}` finished{off} on {result.backend} in {result.seconds:.2f} s\n")
    for name, path in result.files.items():
        err.write(f"  wrote {path}  ({names.node(name)})\n")
    for loop, rounds in result.rounds.items():
        err.write(f"  {names.loop(loop)}: {rounds} round{'s' if rounds != 1 else ''}\n")
    busy = {k: v for k, v in result.timings.items() if k in pipeline.ir and names.does_work(k)}
    slowest = sorted(busy.items(), key=lambda kv: -kv[1])[:None if verbose else 8]
    if slowest:
        err.write("  time per step, summed over rounds (slowest first):\n")
        labels = [names.node(k) for k, _ in slowest]
        width = max(len(label) for label in labels)
        for label, (_, seconds) in zip(labels, slowest):
            err.write(f"    {label:<{width}}  {seconds:8.3f} s\n")
    if report:
        err.write(f"  report: {report}\n")
