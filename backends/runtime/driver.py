"""The driver loop every backend shares: blocks, rounds, vars, values, actors, sinks.

A backend subclasses :class:`Driver` and implements the collection operations
(``collection_<op>``) and how a collection becomes a Python list (``gather``). Values,
actor calls, loops and sinks mean the same everywhere and live here once.
"""

from __future__ import annotations

import os
import pickle
import time
import uuid
from dataclasses import fields, is_dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from pipec.compiler import ir
from pipec.compiler.schedule import Block, blocks
from pipec.backends.physical.planner import (FILE_FORMATS, Arg, DriverStep, GraphStep, LoopStep, Planner, Ref,
                                             Rounds, StepLowering, TaskSpec, order_of, read_by_stages_only)
from pipec.dsl.diagnostics import PipelineRuntimeError, UsageError
from pipec.dsl.source import SourceFile, Span
from pipec.backends.base import Machine, NoProgress, Progress, RunResult, notify, resource_gaps
from pipec.backends.runtime import datasets, preflight, semantics, sources, storage
from pipec.backends.runtime import resume as resuming
from pipec.backends.runtime.interpreter import StageFailure, run_finisher
from pipec.backends.runtime.actors import SKIPPED, ReplayLog, write_each_log
from pipec.backends.runtime.sinks import RoundFiles, StagedSinks
from pipec.backends.runtime.tasks import (ensure_path, failing_element, forget_stale_modules, fn_of, user_frame,
                                          user_traceback)


# The share of a run's time its resume records may take on the driver.
RECORD_BUDGET = 0.05
# A value the driver reads whose pickle is at most this big is folded on the driver from
# its partials (see PlannedDriver.folded_on_driver): a few partials of this size cost less
# to fetch than the combine task's hops between processes.
FOLD_UPTO = 1 << 16


class Driver:
    """Runs one plan. Subclasses provide the engine-specific collection operations."""

    backend = "driver"

    def __init__(self, plan, progress: Progress | None = None, run_dir: str | None = None, resume: bool = False):
        """A run of ``plan`` (a :class:`pipec.backends.base.Plan`), drawn on ``progress``,
        kept in ``run_dir``; ``resume`` continues the run kept there."""
        self.plan = plan
        self.ir = plan.ir
        self.params = plan.params
        # Whether a run writes a record at the end of every round of a top-level loop, so
        # that `pipec run --resume RUN` can continue it after its driver died (see
        # resume.py): the backend declares `resume`. Such a backend hosts its actors in
        # VersionedHosts and implements var_partitions and var_from_partitions.
        self.resumable = "resume" in plan.capabilities
        self.progress = progress or NoProgress()
        self.run_id = uuid.uuid4().hex[:12]
        # The run folder (records, snapshots, the staged-sinks manifest): a local folder or
        # a storage URL (s3://...), so that a cluster needs no shared disk.
        self.run_dir = str(run_dir) if run_dir else str(Path(".pipec") / "runs" / self.run_id)
        # Where engine logs go: a local file is appended line by line, which object stores
        # cannot do, so a run folder elsewhere keeps its logs in a local one.
        self.log_dir = (Path(storage.local_path(self.run_dir)) if storage.is_local(self.run_dir)
                        else Path(".pipec") / "runs" / self.run_id)
        self.env: dict[str, Any] = {}
        self.round_index: dict[str, int] = {}
        self.result = RunResult(backend=self.backend, run_dir=str(self.run_dir))
        self.logs: dict[str, ReplayLog] = {}
        self.pool_logs: dict[str, list] = {}  # pool -> its calls to every member, in order (never trimmed)
        self._source = plan.source  # the .pipe text for errors; read from the file only when missing
        self.resume = resume
        self.record: resuming.Record | None = None  # what a resumed run continues from
        self._resumed: resuming.Record | None = None  # its record as read in preflight
        self.records = resuming.RecordWriter(self.run_dir)
        self.sinks = StagedSinks(self.run_dir, self.run_id)  # committed together at the end
        self.round_files = RoundFiles(self.run_dir, self.run_id)  # sinks in loops: committed per round
        self._recorded_at, self._record_cost = 0.0, 0.0  # when the last record was made, what it cost
        self.top_index = 0  # the top-level item running now
        self._preflown = False

    # ---- entry

    def run(self) -> RunResult:
        start = time.perf_counter()
        roots = self.ir.info.module_paths()
        ensure_path(roots)
        forget_stale_modules(_user_modules(self.ir), roots)
        self.preflight()
        self.sinks.clean_leftovers()
        if self.resumable:
            self.prepare_run_dir()
        notify(self.progress, "run_started", storage.name(self.run_dir), str(self.run_dir), self.backend)
        self.setup()
        try:
            notify(self.progress, "engine_ready", self.engine_info())
            self.run_top(blocks(self.ir))
            self.settle_actors()
            self.commit_sinks()
            if self.resumable:
                self.finish_records()
        finally:
            self.sinks.abort()  # nothing staged is left once a run ends, well or badly
            self.round_files.abort()
            self.close_records()
            self.teardown()
        self.result.seconds = time.perf_counter() - start
        return self.result

    def preflight(self) -> None:
        """Before anything is computed: every file source exists, every sink and a run
        folder on storage can be written (see preflight.py); else a PreflightError at the
        source or sink; the optional packages the formats need are installed. Done once: a
        backend calls it before starting its engine (a bad bucket should not cost a cluster
        start), and ``run`` calls it for the others."""
        if not self._preflown:
            self.check_extras()
            preflight.check(self.ir, self.params, self.run_dir, self.source_file())
            if self.resumable and self.resume:
                self._resumed = self._record_to_resume()
            self._preflown = True

    def check_extras(self) -> None:
        """Before anything runs: the optional packages the pipeline's formats need are
        installed, or a usage error names the extra that brings them."""
        needs = set()
        for node, op in self.ir.items():
            if isinstance(op, ir.Source) and op.kind in ("read_parquet", "read_csv") or ir.is_dataset_sink(op):
                needs |= {("pyarrow", "parquet"), ("fsspec", "parquet")}
            if isinstance(op, ir.Elementwise) and op.batch is not None:
                needs.add(("pyarrow", "parquet"))
                if op.batch == "pandas":
                    needs.add(("pandas", "pandas"))
        for package, extra in sorted(needs):
            try:
                datasets.require(package, extra)
            except datasets.MissingExtra as exc:
                raise UsageError(str(exc), f"install it with `pip install 'pipec[{extra}]'`") from None

    def list_source(self, node: str, op: ir.Source) -> tuple:
        """The :class:`datasets.Listing` of file source ``node``: its pieces, whether its
        path names one file, a CSV dataset's column types (the driver reads metadata
        only: listings, Parquet footers, the first block of a CSV dataset). A missing
        path, a corrupt file or files that differ are errors at the source's line."""
        path = self.value(op.args[0])
        options = {name: self.value(operand) for name, operand in op.kwargs.items()}
        try:
            return datasets.list_pieces(FILE_FORMATS[op.kind], path, options.get("columns"), options)
        except datasets.MissingExtra as exc:
            raise UsageError(str(exc), f"install it with `pip install 'pipec[{exc.extra}]'`") from None
        except FileNotFoundError as exc:
            raise self.error(node, f"cannot read {path}: {exc.strerror or exc}", op.span,
                             "a source reads a file, a folder or a glob (`data/*.parquet`); relative paths "
                             "start where pipec runs") from None
        except OSError as exc:
            raise self.cannot_read(node, op, path, exc) from None
        except ValueError as exc:
            raise self.error(node, str(exc), op.span) from None

    def stage_dataset(self, node: str, op: ir.Sink) -> str:
        """The staging folder dataset sink ``node``'s tasks write into: committed with the
        run's other sinks (see StagedSinks), or inside a loop with its round (RoundFiles)."""
        path = self.value(op.path)
        try:
            if op.loop is not None:
                return self.round_files.stage_dataset(node, path)
            return self.sinks.stage_dataset(path)
        except FileExistsError:
            raise self.error(node, f"{path} was written in an earlier round of this run", op.span,
                             "name every round index in the path, e.g. `{i}`") from None
        except OSError as exc:
            raise self.error(node, f"cannot write {path}: {exc.strerror or exc}", op.span) from None

    def commit_sinks(self) -> None:
        """The run succeeded: every sink it staged becomes its file, together."""
        try:
            self.sinks.commit()
        except OSError as exc:
            hint = (f"the commit had started: the next run in {self.run_dir} (`pipec run --resume "
                    f"{self.run_dir}`) finishes it" if self.sinks.committing else None)
            raise self.error(self.ir.info.name, f"cannot write the sinks: {exc.strerror or exc}", None, hint) from None
        for node, path in self.result.files.items():
            notify(self.progress, "sink_written", node, path)

    def run_top(self, top: Block) -> None:
        """The pipeline's top level. A resumable backend runs it item by item (a record
        names the item it was at); a resumed run fast-forwards over what ran before its
        record and continues the recorded loop after its last completed round."""
        if not self.resumable:
            self.run_block(top)
            return
        record = self.record
        for index, item in enumerate(self.top_items(top)):
            self.top_index = index
            if record is not None and index < record.top_index:
                self.fast_forward(item)
            elif record is not None and index == record.top_index:
                if record.done:
                    self.result.rounds[item.loop.id] = record.rounds
                else:
                    self.run_loop(item, first=record.rounds)
            else:
                self.run_item(item)

    def top_items(self, top: Block) -> list:
        """What the top level runs, in order: nodes and loops (Blocks), and whatever steps
        of its own a backend groups them into (see ``run_item``)."""
        return top.items

    def run_item(self, item) -> None:
        """One top-level item: a loop, a node, or a backend's own step."""
        if isinstance(item, Block):
            self.run_loop(item)
        else:
            self.run_node(item)

    def setup(self) -> None:
        """Engine-specific start (after user modules are importable)."""

    def teardown(self) -> None:
        """Engine-specific cleanup; runs even when the pipeline failed."""

    def engine_info(self) -> dict[str, Any]:
        """What the run header shows once the engine is up: ``workers`` (a count or
        None), ``dashboard`` (the engine's UI address or None) and ``versions`` (engine
        package -> version). A backend fills in what its engine knows."""
        return {"workers": None, "dashboard": None, "versions": {}}

    # ---- blocks and loops

    def run_block(self, block: Block) -> None:
        for item in block.items:
            if isinstance(item, Block):
                self.run_loop(item)
            else:
                self.run_node(item)

    def run_loop(self, block: Block, first: int = 0) -> None:
        """Rounds ``first`` .. of a loop (``first`` > 0 when a resumed run continues it)."""
        loop = block.loop
        if loop.when is not None:
            self.run_when(block)
            return
        count = self.value(loop.count)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise self.error(loop.id, f"`repeat` needs a non-negative integer count, got {count!r}", loop.span)
        rounds = first
        if first == 0 and count > 0 and self.resumable and loop.parent is None:
            # A record before the first round: a driver that dies in it can be resumed too.
            self.save_progress(loop, 0, False)
        for i in range(first, count):
            self.progress.round(loop.id, i, count)
            self.round_index[loop.id] = i
            self.start_round(block)
            ok = False
            try:
                self.run_block(Block(None, block.items))
                for rebind in block.rebinds(self.ir):
                    op = self.ir.op(rebind)
                    self.env[op.var] = self.env[rebind]
                self.end_round(block)
                ok = True
            finally:
                self.close_round(block)
                notify(self.progress, "round_end", loop.id, i, count, ok)
            rounds = i + 1
            stop = loop.until is not None and self.until(loop)  # checked on the last round too
            done = stop or rounds == count
            if done and not stop and loop.until is not None and loop.id not in self.result.capped:
                self.result.capped.append(loop.id)
            self.round_done(loop, rounds, done)
            if done:
                break
        self.result.rounds[loop.id] = rounds

    def run_when(self, block: Block) -> None:
        """A ``when`` block: its body runs once, in this round, if its condition is true;
        then the vars it rebinds take their new values."""
        loop = block.loop
        cond = self.value(loop.when)
        if not isinstance(cond, bool):
            raise self.error(loop.id, f"`when` must give true or false, got {type(cond).__name__}", loop.span,
                             "compare it, e.g. `when i % 10 == 0`")
        if cond:
            self.run_block(Block(None, block.items))
            # A var rebound in the block holds its new value from here on, in this round
            # and the next; in a round where the block does not run, it keeps its value.
            for rebind in block.rebinds(self.ir):
                self.env[self.ir.op(rebind).var] = self.env[rebind]

    def until(self, loop: ir.Loop) -> bool:
        """Whether a `repeat ... until` loop stops after the round just run."""
        done = self.value(loop.until)
        if not isinstance(done, bool):
            raise self.error(loop.id, f"`until` must give true or false, got {type(done).__name__}", loop.span)
        return done

    def round_done(self, loop: ir.Loop, rounds: int, done: bool) -> None:
        """After each round of a top-level loop: record it, for a resume. A record costs
        what it fetches (a collection var comes whole from the cluster) and the CPU its
        pickling takes (storing it is I/O off the driver's path, and a record waiting for
        a slow store is replaced by the next one), so rounds are skipped while the last
        record's cost is above RECORD_BUDGET of the time since; small records (values,
        actor calls) are written every round."""
        if not (self.resumable and loop.parent is None):
            return
        self.result.rounds[loop.id] = rounds
        start = time.perf_counter()
        cost = self._record_cost + self.records.seconds
        if start - self._recorded_at >= cost / RECORD_BUDGET:
            self.save_progress(loop, rounds, done)
            self._recorded_at = time.perf_counter()
            self._record_cost = self._recorded_at - start

    def start_round(self, block: Block) -> None:
        """Hook before each round (a backend opens per-round state here)."""

    def end_round(self, block: Block) -> None:
        """Hook after each round (backends drop per-round data here)."""

    def close_round(self, block: Block) -> None:
        """Hook after each round, also when it failed (per-round state is released)."""

    # ---- nodes

    def run_node(self, node: str) -> None:
        op = self.ir.op(node)
        start = time.perf_counter()
        handler = getattr(self, f"op_{op.op}", None) or getattr(self, f"collection_{op.op}")
        self.env[node] = handler(node, op)
        self.result.timings[node] = self.result.timings.get(node, 0.0) + time.perf_counter() - start

    def value(self, operand: ir.Lit | ir.NodeRef | None) -> Any:
        if operand is None:
            return None
        if isinstance(operand, ir.Lit):
            return operand.value
        return self.materialize(self.env[operand.node])

    def materialize(self, value: Any) -> Any:
        """A value the driver can use. Backends that keep values on the cluster until the
        driver needs one (a reduction result, say) fetch it here; the default has it."""
        return value

    def source_file(self) -> SourceFile:
        """The .pipe text errors point into (read from the file when not given)."""
        if self._source is None:
            try:
                self._source = SourceFile.read(self.ir.info.path)
            except Exception:
                self._source = SourceFile(self.ir.info.path, "")
        return self._source

    def error(self, where: str, message: str, span: ir.SpanModel | None = None, hint: str | None = None):
        s = Span(span.line, span.column, span.end_line, span.end_column, 0, 0) if span else None
        return PipelineRuntimeError(where, message, s, self.source_file(), hint)

    def refuse_over_resources(self, machines: list[Machine], holder: str, hint: str) -> None:
        """At the start of a run on a cluster known only now (joined by address): refuse,
        before any task, a stage asking for more than any of its ``machines`` has (its
        tasks would wait forever). The same rule ``Backend.check`` applies before a run
        where the engine is known then (see base.resource_gaps)."""
        gaps = resource_gaps(self.ir, machines, holder)
        if gaps:
            node, op, message = gaps[0]
            raise self.error(node, message, op.span, hint)

    def user_error(self, where: str, exc: BaseException, span: ir.SpanModel | None, partition: int | None = None):
        place = f" (partition {partition})" if partition is not None else ""
        frame = user_frame(exc)
        hint = f"raised at {frame}" if frame else None
        error = self.error(where, f"{type(exc).__name__}: {exc}{place}{failing_element(exc)}", span, hint)
        error.user_traceback = user_traceback(exc)
        return error

    def stage_failed(self, failure: "StageFailure", span: ir.SpanModel | None = None) -> PipelineRuntimeError:
        """The error the user sees for a StageFailure raised by the interpreter in a task;
        it points at ``span``, by default at the failing node."""
        node = failure.node
        base = node.split(".")[0]  # `ps.apply`: an actor's method
        op = self.ir.op(base) if base in self.ir else None
        span = span or (op.span if op is not None else None)
        if failure.kind == "error":
            place = f" (partition {failure.partition})" if failure.partition is not None else ""
            error = self.error(node, f"{failure.error}: {failure.message}{place}{failure.element}", span,
                               f"raised at {failure.frame}" if failure.frame else failure.hint)
            error.user_traceback = failure.traceback
            return error
        return self.error(node, failure.message, span, failure.hint)

    # ---- values

    def op_param(self, node: str, op: ir.Param):
        return self.params[node]

    def op_const(self, node: str, op: ir.Const):
        return op.value

    def op_format(self, node: str, op: ir.Format):
        values = {name: self.value(operand) for name, operand in op.fields.items()}
        try:
            return op.template.format_map(values)
        except Exception as exc:
            raise self.error(node, f"cannot fill in the sink path: {type(exc).__name__}: {exc}", op.span) from None

    def op_round_index(self, node: str, op: ir.RoundIndex):
        return self.round_index[op.of_loop]

    def op_expr(self, node: str, op: ir.Expr):
        values = [self.value(o) for o in op.operands]
        try:
            return semantics.apply_operator(op.operator, *values)
        except Exception as exc:
            raise self.error(node, f"{type(exc).__name__}: {exc}", op.span) from None

    def op_call(self, node: str, op: ir.Call):
        fn = fn_of(op.fn)
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None

    def op_var(self, node: str, op: ir.Var):
        return self.env[op.init.node]

    def op_rebind(self, node: str, op: ir.Rebind):
        return self.env[op.value.node]

    def reduced(self, node: str, op: ir.Reduce, partials: list):
        """The value of ``reduce``: the per-partition ``partials`` (in partition order)
        combined in the fixed order every backend shares. Over an empty collection it is
        an error at the reduction."""
        try:
            result = semantics.combine_partials(fn_of(op.fn), partials)
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        if result is semantics.EMPTY:
            raise self.error(node, "`reduce` over an empty collection has no value", op.span,
                             "filter less, or give the reduction an initial element in the data")
        return result

    def read_source(self, node: str, op: ir.Source, k: int, args: list, kwargs: dict) -> list[list]:
        """A ``read_text``, ``read_jsonl`` or plain callable source read whole on the driver
        (its items must be counted to be cut) and cut into ``k`` blocks; a failure is
        reported at the source."""
        try:
            if op.kind == "read_text":
                items = sources.read_lines(args[0])
            elif op.kind == "read_jsonl":
                items = sources.read_jsonl(args[0])
            else:
                items = list(fn_of(op.fn)(*args, **kwargs))
        except OSError as exc:
            raise self.cannot_read(node, op, args[0] if args else "", exc) from None
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None
        return semantics.split(items, k)

    def cannot_read(self, node: str, op: ir.Source, path: str, exc: OSError) -> PipelineRuntimeError:
        return self.error(node, f"cannot read {path}: {exc.strerror or exc}", op.span)

    def op_collect(self, node: str, op: ir.Collect):
        return semantics.ordered(self.gather(op.input.node), self.order_of(op.input.node))

    def op_count(self, node: str, op: ir.Count):
        return self.count(op.input.node)

    def op_top(self, node: str, op: ir.Top):
        items = semantics.ordered(self.gather(op.input.node), self.order_of(op.input.node))
        n = self.value(op.n)
        try:
            return semantics.top(items, n, fn_of(op.by))
        except Exception as exc:
            raise self.user_error(node, exc, op.span) from None

    def op_collect_map(self, node: str, op: ir.CollectMap):
        items = semantics.ordered(self.gather(op.input.node), self.order_of(op.input.node))
        try:
            return semantics.collect_map(items)
        except semantics.DuplicateKey as exc:
            raise self.error(node, str(exc), op.span,
                             "a map holds one value per key: combine them first with `reduce_by_key` "
                             "or `group_by_key`") from None
        except TypeError as exc:  # not pairs, or a key a dict cannot hold (a list)
            hint = "use tuples as keys" if "keys a dict" in str(exc) else "make pairs first, e.g. `map m.to_pair over xs`"
            raise self.error(node, str(exc), op.span, hint) from None

    def op_take(self, node: str, op: ir.Take):
        try:
            items = semantics.ordered(self.gather(op.input.node), self.order_of(op.input.node))
        except TypeError as exc:  # a keyed result's record that is not a pair
            raise self.error(node, str(exc), op.span) from None
        return semantics.take(items, self.value(op.n))

    def op_sink(self, node: str, op: ir.Sink):
        if ir.is_dataset_sink(op):
            return self.sink_dataset(node, op)
        src = op.input.node
        is_collection = self.ir.op(src).node_shape == ir.COLLECTION
        value = self.materialize(self.env[src])
        if is_collection:
            value = semantics.ordered(self.gather(src), self.order_of(src))
        if op.format is None:
            self.result.outputs[node] = value
            return value
        path = self.value(op.path)
        if op.loop is not None:
            return self.write_round_file(node, op, value, path, is_collection)
        try:
            written = self.sinks.stage(value, op.format, path, is_collection)
        except (TypeError, ValueError) as exc:
            raise self.error(node, f"cannot write {op.format}: {exc}", op.span) from None
        except OSError as exc:
            raise self.error(node, f"cannot write {path}: {exc.strerror or exc}", op.span) from None
        self.result.files[node] = str(written)
        return str(written)

    def write_round_file(self, node: str, op: ir.Sink, value, path: str, is_collection: bool) -> str:
        """A sink inside a loop: this round's file, committed now (see RoundFiles)."""
        try:
            fresh = self.round_files.write(node, value, op.format, path, is_collection)
        except FileExistsError:
            raise self.error(node, f"{path} was written in an earlier round of this run", op.span,
                             "name every round index in the path, e.g. `{i}`") from None
        except (TypeError, ValueError) as exc:
            raise self.error(node, f"cannot write {op.format}: {exc}", op.span) from None
        except OSError as exc:
            raise self.error(node, f"cannot write {path}: {exc.strerror or exc}", op.span) from None
        return self._round_written(node, path, fresh)

    def _round_written(self, node: str, path: str, fresh: bool) -> str:
        """Sink ``node`` of a loop has this round's file or dataset at ``path`` (``fresh``:
        written now, not by an earlier driver of a resumed run)."""
        self.result.files[node] = path
        if fresh:
            self.result.round_files.setdefault(node, []).append(path)
            notify(self.progress, "sink_written", node, path)
        return path

    def sink_dataset(self, node: str, op: ir.Sink) -> str:
        """A dataset sink after its tasks wrote the parts (a planned backend's graph did,
        its value being their names)."""
        return self.dataset_written(node, op, self.materialize(self.env[node]))

    def dataset_written(self, node: str, op: ir.Sink, names: list[str]) -> str:
        """The tasks of dataset sink ``node`` wrote the parts ``names``: staged for the
        commit at the end of the run, or inside a loop committed now, with its round."""
        path = self.value(op.path)
        if op.loop is None:
            self.result.files[node] = self.sinks.dataset_written(path, names)
            return path
        try:
            fresh = self.round_files.commit_dataset(node, path, names)
        except OSError as exc:
            raise self.error(node, f"cannot write {path}: {exc.strerror or exc}", op.span) from None
        return self._round_written(node, path, fresh)

    def order_of(self, node: str) -> str | None:
        """The canonical order of a collection's output (None: partition order)."""
        return order_of(self.ir, node)

    # ---- actors

    def op_actor(self, node: str, op: ir.Actor):
        if op.pool_size is not None:
            size = self.value(op.pool_size)
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:  # a size made at run time
                raise self.error(node, f"an actor pool needs a positive number of members, got {size!r}", op.span)
            saved = self.record.actors.get(node) if self.record is not None else None
            # The members start from their constructor plus the calls to every member so
            # far (a resumed run: those its record holds; later ones died with the driver).
            self.pool_logs[node] = list(saved["each"]) if saved is not None else []
            if self.pool_logs[node] or saved is not None:  # resumed: not the dead driver's later calls
                self.save_each_log(node)
            return self.start_pool(node, op, size)
        self.logs[node] = ReplayLog(op.checkpoint_every)
        saved = self.record.actors.get(node) if self.record is not None else None
        if saved is not None:
            # The actor restores the snapshot the record names as it starts (periodic, or
            # taken after a graph that called it through handles; none: its constructor).
            try:
                resuming.restore_snapshot(self.snapshot_path(node), saved["snapshot"])
            except OSError as exc:
                raise self.error(node, f"cannot restore actor `{node}` from its snapshot: {exc.strerror or exc} "
                                       f"({getattr(exc, 'filename', None) or self.snapshot_path(node)})", op.span,
                                 "the actors' workers wrote it where this driver cannot read: give the run a folder "
                                 "every machine reaches (--run-dir s3://bucket/runs/NAME)") from None
        handle = self.start_actor(node, op)
        if saved is not None:
            self.env[node] = handle  # the replayed calls reach the actor through it
            self.replay_saved_calls(node, op, saved)
        return handle

    def replay_saved_calls(self, node: str, op: ir.Actor, saved: dict) -> None:
        """A resumed actor: apply again, in order, the calls the record holds since its
        snapshot (their first application died with the driver)."""
        log = self.logs[node]
        log.snapshot = saved["snapshot"]  # what the next record names until a newer one is durable
        for seq, method, args, kwargs in saved["log"]:
            log.entries.append((seq, method, args, kwargs))
            try:
                self.call_actor(node, seq, method, args, kwargs)
            except PipelineRuntimeError:
                raise
            except Exception as exc:
                raise self.user_error(f"{node}.{method}", exc, op.span) from None
            log.confirm(seq)
            notify(self.progress, "actor_call", node, seq, method, True)
        log.next_seq = saved["next_seq"]

    def op_actor_call(self, node: str, op: ir.ActorCall):
        actor = op.actor.node
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        seq = self.logs[actor].record(op.method, args, kwargs)
        return self.apply_call(node, op, seq, args, kwargs)

    def apply_call(self, node: str, op: ir.ActorCall, seq: int, args: list, kwargs: dict):
        """Graph-level call ``seq`` of ``op`` (numbered and logged already) applied now;
        gives its result, once it is confirmed in the replay log."""
        actor = op.actor.node
        [result] = self._answers(node, f"{actor}.{op.method}", op.span, seq, "restore",
                                 lambda: [self.call_actor(actor, seq, op.method, args, kwargs)])
        self.logs[actor].confirm(seq)
        notify(self.progress, "actor_call", actor, seq, op.method, False)
        return result

    def _answers(self, node: str, what: str, span, seq: int, recovery: str, call) -> list:
        """The answers ``call()`` gives to graph-level call ``seq`` of ``what``
        (``ps.weights``, ``models.each.reload``): an exception user code raised becomes
        a run-time error at ``span``; an answer that says the host had applied the number
        already and kept no result (after a ``recovery``) is an error of ``node``."""
        try:
            answers = call()
        except PipelineRuntimeError:
            raise
        except Exception as exc:
            raise self.user_error(what, exc, span) from None
        if any(isinstance(a, str) and a == SKIPPED for a in answers):
            raise self.error(node, f"call {seq} was not applied again after a {recovery}", span)
        return answers

    def op_pool_call(self, node: str, op: ir.PoolCall):
        pool = op.pool.node
        args = [self.value(a) for a in op.args]
        kwargs = {k: self.value(v) for k, v in op.kwargs.items()}
        log = self.pool_logs[pool]
        seq = len(log)
        log.append((seq, op.method, args, kwargs))
        self.save_each_log(pool)  # before any member applies it: one restarted meanwhile replays it
        answers = self._answers(node, f"{pool}.each.{op.method}", op.span, seq, "restart",
                                lambda: self.call_pool(pool, seq, op.method, args, kwargs))
        notify(self.progress, "actor_call", pool, seq, f"each.{op.method}", False)
        return answers

    def each_path(self, pool: str) -> str:
        """Where pool ``pool``'s calls to every member are kept: absolute, members read it."""
        return storage.absolute(storage.join(self.run_dir, "actors", f"{pool}.each"))

    def save_each_log(self, pool: str) -> None:
        try:
            write_each_log(self.each_path(pool), self.pool_logs[pool])
        except OSError as exc:
            raise self.error(pool, f"cannot write {self.each_path(pool)}: {exc.strerror or exc}") from None

    def snapshot_path(self, actor: str) -> str:
        """Where actor ``actor`` keeps its snapshot: absolute, since workers read it too."""
        return storage.absolute(storage.join(self.run_dir, "actors", f"{actor}.snapshot"))

    def settle_actors(self) -> None:
        """The run's work is done: every snapshot an actor is still writing in the
        background is finished (none is left half-written when the engine stops), so the
        last record names the newest."""
        for actor, log in self.logs.items():
            try:
                self.flush_actor(actor)
            except OSError as exc:
                raise self.error(actor, f"cannot write the snapshot of actor `{actor}`: {exc.strerror or exc}") from None
            log.flushed()

    def flush_actor(self, actor: str) -> None:
        """Wait until actor ``actor`` has written every snapshot it started (see
        ActorHost.flush); an actor lost meanwhile needs nothing more."""

    # ---- resuming a run whose driver died

    def prepare_run_dir(self) -> None:
        """Read the record of the run being resumed, or clear the run folder of an earlier
        run's state (a fresh run must not restore its actors from old snapshots)."""
        if self.resume:
            record = self._resumed
            if record is not None:
                try:
                    self.record = resuming.with_calls(self.run_dir, record)
                except FileNotFoundError as exc:  # a journal segment gone: the calls cannot be replayed
                    raise UsageError(f"run {self.run_dir} cannot be resumed: {exc}", "its folder lost files "
                                     "since it stopped; run the pipeline again without --resume") from None
                self.result.files.update(record.files)
                self.result.outputs.update(record.outputs)
                self.result.round_files.update(self.round_files.recover())
                self.result.capped.extend(getattr(record, "capped", []))
                return
        resuming.clear(self.run_dir)
        storage.make_folder(self.run_dir)  # the run folder exists from the start

    def _record_to_resume(self) -> resuming.Record | None:
        """The record of the run being resumed (None if it stopped before its first), or a
        usage error if it cannot be resumed by this run: read in ``preflight``, so that a
        refusal costs no engine start."""
        if resuming.finished(self.run_dir):
            raise UsageError(f"run {self.run_dir} finished already; there is nothing to resume",
                             "run the pipeline again without --resume")
        record = resuming.read_record(self.run_dir)
        if record is None:
            return None
        if record.backend != self.backend:
            raise UsageError(f"run {self.run_dir} ran on backend `{record.backend}`",
                             f"resume it with --backend {record.backend}")
        if record.fingerprint != self.fingerprint:
            raise UsageError(f"run {self.run_dir} was started with a different pipeline or different parameters",
                             "resume with the same file and --param values")
        return record

    def finish_records(self) -> None:
        """The run completed: every record is on disk, and the run is marked finished
        (there is nothing left to resume)."""
        try:
            self.records.close()
        except OSError as exc:
            raise self._record_error(exc) from None
        resuming.finish(self.run_dir)

    def _record_error(self, exc: OSError) -> PipelineRuntimeError:
        return self.error(self.ir.info.name, f"cannot write the resume record in {self.run_dir}: "
                                             f"{exc.strerror or exc}")

    def close_records(self) -> None:
        """Wait for records still being written (a failed run keeps its last record)."""
        try:
            self.records.close()
        except OSError:
            pass  # the run failed already, or finish_records reported it

    @cached_property
    def fingerprint(self) -> str:
        """What a record must match: the pipeline and its parameters."""
        return resuming.fingerprint(self.ir, self.params)

    def save_progress(self, loop: ir.Loop, rounds: int, done: bool) -> None:
        """The record at the end of a round of a top-level loop: top-level values, loop
        variables, and per actor its newest snapshot and the calls made since."""
        env, vars_ = {}, {}
        for node, value in list(self.env.items()):
            if node not in self.ir:
                continue  # the driver's own (a hoisted split): made again on resume
            op = self.ir.op(node)
            if isinstance(op, ir.Var):
                vars_[node] = (resuming.CollectionValue(self.var_partitions(node))
                               if op.var_shape == ir.COLLECTION else self.materialize(value))
            elif op.loop is None and op.node_shape == ir.VALUE:
                env[node] = self.materialize(value)
        actors = {actor: {"next_seq": log.next_seq, "snapshot": log.snapshot, "log": list(log.entries)}
                  for actor, log in self.logs.items()}
        actors.update({pool: {"each": list(log), "next_seq": len(log), "snapshot": None}
                       for pool, log in self.pool_logs.items()})
        record = resuming.Record(
            pipeline=self.ir.info.name, backend=self.backend, fingerprint=self.fingerprint, top_index=self.top_index,
            loop=loop.id, rounds=rounds, done=done, env=env, vars=vars_, actors=actors,
            loops_done=dict(self.result.rounds), files=dict(self.result.files), outputs=dict(self.result.outputs),
            capped=list(self.result.capped))
        try:
            self.records.write(record)
        except OSError as exc:
            raise self._record_error(exc) from None

    def fast_forward(self, item) -> None:
        """A top-level item that ran before the recorded round: restored from the record,
        or run again where that is how it comes back (actors are started and restored,
        collections recomputed from their pure stages)."""
        record = self.record
        if isinstance(item, Block):
            self.result.rounds[item.loop.id] = record.loops_done.get(item.loop.id, 0)
            return
        if not isinstance(item, str):  # a backend's own step (a graph of pure work): run again
            self.run_item(item)
            return
        op = self.ir.op(item)
        if isinstance(op, ir.Var):
            value = record.vars[item]
            if isinstance(value, resuming.CollectionValue):
                value = self.var_from_partitions(item, value.parts)
            self.env[item] = value
        elif isinstance(op, ir.Sink):
            self.run_node(item)  # staged again: sinks are committed when the run ends
        elif item in record.env:
            self.env[item] = record.env[item]
        else:
            self.run_node(item)

    def var_partitions(self, var: str) -> list[list]:
        """The items of collection var ``var``, partition by partition (for a record)."""
        raise NotImplementedError

    def var_from_partitions(self, var: str, parts: list[list]):
        """Collection var ``var`` made again from a record's partitions."""
        raise NotImplementedError

    # ---- what a backend provides

    def start_actor(self, node: str, op: ir.Actor):
        raise NotImplementedError

    def start_pool(self, node: str, op: ir.Actor, size: int):
        raise NotImplementedError

    def call_actor(self, actor: str, seq: int, method: str, args: list, kwargs: dict):
        raise NotImplementedError

    def call_pool(self, pool: str, seq: int, method: str, args: list, kwargs: dict) -> list:
        """Call ``seq`` on every member of ``pool`` (members replay :meth:`each_path` as
        they start); the members' answers, member 0 first."""
        raise NotImplementedError

    def gather(self, node: str) -> list:
        """A collection's items, partition after partition."""
        raise NotImplementedError

    def count(self, node: str) -> int:
        return len(self.gather(node))


class LiveContext:
    """Partition counts and pool sizes as they are in this run, for the planner's
    StepLowering (a plan made before running uses the static ones)."""

    def __init__(self, driver: "PlannedDriver"):
        self.driver = driver

    def value(self, operand):
        return self.driver.value(operand)

    def listing(self, node: str, op: ir.Source) -> tuple:
        return self.driver.list_source(node, op)

    def staging(self, node: str, op: ir.Sink) -> str:
        return self.driver.stage_dataset(node, op)

    def partitions(self, node: str, operand) -> int:
        k = self.driver.value(operand)
        if not isinstance(k, int) or isinstance(k, bool):
            raise self.driver.error(node, f"`partitions` needs an integer, got {k!r}", self.driver.ir.op(node).span)
        return max(0, k)

    def nparts(self, node: str) -> int:
        return self.driver.nparts(node)

    def hoist(self, name: str, k: int) -> None:
        self.driver.splits[name] = k

    def hoisted(self, name: str) -> int | None:
        """The bucket count of hoisted split ``name``, while the driver holds it."""
        return self.driver.splits.get(name) if name in self.driver.env else None

    def pool_size(self, pool: str) -> int:
        return self.driver.pool_size(pool)


class PlannedDriver(Driver):
    """A driver that runs the shared physical plan: every block as the planner's steps
    (graphs of tasks, driver nodes, loops). A subclass implements ``run_graph`` with its
    engine's calls."""

    planner: Planner

    def __init__(self, plan, progress: Progress | None = None, run_dir: str | None = None, resume: bool = False):
        super().__init__(plan, progress, run_dir, resume)
        self.planner = plan.physical.planner
        self.splits: dict[str, int] = {}  # hoisted split -> its bucket count (see planner.HoistedSplit)
        self.small: set[str] = set()  # values last read small by the driver: folded on the driver

    def run_block(self, block: Block) -> None:
        for item in self.top_items(block):
            self.run_item(item)

    def top_items(self, block: Block) -> list:
        """The block's planned steps: graphs, and driver nodes and loops as the shared
        driver knows them (so records and resuming work on them unchanged)."""
        return [step.node if isinstance(step, DriverStep) else step.block if isinstance(step, LoopStep) else step
                for step in self.planner.steps_for(block.items)]

    def run_item(self, item) -> None:
        if isinstance(item, GraphStep):
            self.run_graph(item)
        else:
            super().run_item(item)

    def run_graph(self, step: GraphStep) -> None:
        """Submit one graph step's tasks and keep what later steps read."""
        raise NotImplementedError

    def filled(self, arg):
        """``arg`` (a step of the plan, or a task's arguments) with this run's values for
        the planner's placeholders: an :class:`Arg` becomes its value (a file name made
        absolute: workers may run elsewhere), :class:`Rounds` the current round indices.
        Refs, and steps without placeholders, come back as they are."""
        if isinstance(arg, Arg):
            value = self.value(arg.operand)
            return storage.absolute(value) if arg.path and isinstance(value, str) else value  # URLs as they are
        if isinstance(arg, Rounds):
            return tuple(self.round_index.get(loop, 0) for loop in arg.loops)
        if isinstance(arg, Ref) or isinstance(arg, type):
            return arg
        if is_dataclass(arg):
            changes = {f.name: self.filled(getattr(arg, f.name)) for f in fields(arg)}
            if all(changes[name] is getattr(arg, name) for name in changes):
                return arg
            return replace(arg, **changes)
        if isinstance(arg, (tuple, list)):
            out = [self.filled(a) for a in arg]
            return arg if all(a is b for a, b in zip(out, arg)) else type(arg)(out)
        if isinstance(arg, dict):
            return {k: self.filled(v) for k, v in arg.items()}
        return arg

    # ---- a small value the driver reads: its last combine runs on the driver

    def observed(self, node: str, nbytes: int | None) -> None:
        """The driver fetched value ``node``, ``nbytes`` big pickled (None: bigger than
        FOLD_UPTO): while it stays small, later graphs fold it on the driver."""
        if nbytes is not None and nbytes <= FOLD_UPTO:
            self.small.add(node)
        else:
            self.small.discard(node)

    def folded_on_driver(self, step: GraphStep, lowering: StepLowering, in_graph: set[str]) -> dict[str, TaskSpec]:
        """The last combine of each value of ``step`` that the driver fetched before and
        found small (paramserver's total: 10 floats, every round), as node -> the combine's
        spec: the driver gathers its partials and folds them itself (:meth:`fold_on_driver`),
        in partition order, with the same function. The combine task on a worker, the
        transfer of the other workers' partials to it and the fetch of its result cost
        more hops between processes than the work. Only combines whose partials are all
        results of tasks in this graph (``in_graph``: their keys), whole or one output of a
        shared scan, and whose value no task of the graph reads (it would wait for a
        combine that never runs)."""
        out = {}
        read = None
        for node in step.exports:
            ref = lowering.values.get(node)
            if ref is None or node not in self.small:
                continue
            if read is None:
                read = {dep.key for spec in lowering.specs.values() for dep in spec.deps}
            if ref.key in read:
                continue
            spec = lowering.specs.get(ref.key)
            if spec is not None and spec.body == "finish" and spec.deps and \
                    all(dep.key in in_graph and dep.buckets is None for dep in spec.deps):
                out[node] = spec
        return out

    def fold_on_driver(self, on_driver: dict[str, TaskSpec], partial: Callable[[Ref], Any]) -> dict[str, Any]:
        """Each value of ``on_driver`` (see :meth:`folded_on_driver`) folded from its
        partials, ``partial(ref)`` being the value of one; node -> value. A fold that fails
        is the error its combine task would have given."""
        values = {}
        for node, spec in on_driver.items():
            start = time.perf_counter()
            self.progress.stage(spec.group, 1)
            partials = [partial(dep) for dep in spec.deps]
            try:
                values[node] = run_finisher(self.filled(spec.args[0]), partials)
            except StageFailure as exc:
                raise self.stage_failed(exc) from None
            self.observed(node, pickled_size(values[node], FOLD_UPTO))
            self.progress.advance(spec.group)
            self.result.timings[spec.group] = self.result.timings.get(spec.group, 0.0) + time.perf_counter() - start
        return values

    def read_by_stages_only(self, node: str) -> bool:
        """See :func:`pipec.backends.physical.planner.read_by_stages_only`."""
        return read_by_stages_only(self.ir, node)

    def nparts(self, node: str) -> int:
        """How many partitions collection ``node`` holds in this run."""
        raise NotImplementedError

    def pool_size(self, pool: str) -> int:
        """How many members actor pool ``pool`` has in this run."""
        raise NotImplementedError


class _Over(Exception):
    pass


class _Measure:
    """A file that counts what is written to it, and stops a pickle past ``limit`` bytes."""

    def __init__(self, limit: int):
        self.size, self.limit = 0, limit

    def add(self, n: int) -> None:
        self.size += n
        if self.size > self.limit:
            raise _Over

    def write(self, data) -> None:
        self.add(memoryview(data).nbytes)


def pickled_size(value: Any, limit: int) -> int | None:
    """How many bytes ``value`` pickles to, or None when that is more than ``limit`` (or it
    does not pickle). Costs at most about ``limit`` bytes of pickling: a big value is
    given up on early, and a numpy array's data is counted without being copied."""
    out = _Measure(limit)
    try:
        pickle.Pickler(out, protocol=5, buffer_callback=lambda buffer: out.add(buffer.raw().nbytes)).dump(value)
    except Exception:  # _Over, or a value that does not pickle
        return None
    return out.size


def _user_modules(graph: ir.IR) -> set[str]:
    """The Python modules ``graph``'s functions and actor classes come from."""
    return {ref.module for _, op in graph.items() for ref in (getattr(op, f, None) for f in ("fn", "by", "cls"))
            if isinstance(ref, ir.FnRef)}
