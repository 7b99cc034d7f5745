"""AST -> IR: the core lowering, with name resolution and shape checks.

Names are defined before use, in program order, the way a reader reads the file; the
one exception a user can trip over, a name used before its definition, is reported as
such, or as a cycle when the later definition leads back. Each definition is visible in
its own ``repeat`` body and the bodies nested in it; a ``var`` carries a value out of a
loop. All errors found in one pass are reported together.

The builder lowers statements and expressions and asks leaf modules for the rest:
:mod:`~pipec.compiler.scopes` (bindings, regions, why a name is undefined),
:mod:`~pipec.compiler.signatures` (calls into user modules, read from source),
:mod:`~pipec.compiler.options` (stage and actor options),
:mod:`~pipec.compiler.constants` (literals and constant folding),
:mod:`~pipec.compiler.lints` (warnings on the finished IR) and
:mod:`~pipec.compiler.reporter` (diagnostics). None of them imports this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NoReturn

from pipec.dsl import ast
from pipec.dsl.diagnostics import Diagnostic, did_you_mean
from pipec.dsl.parser import STATEMENT_KEYWORDS
from pipec.dsl.source import SourceFile, Span
from pipec.compiler import constants, ir, lints
from pipec.compiler.modules import ModuleIndex
from pipec.compiler.options import actor_options, stage_options
from pipec.compiler.reporter import Abort, Reporter
from pipec.compiler.scopes import Binding, LaterNames, Region
from pipec.compiler.signatures import Signatures

ELEMENTWISE = ("map", "flat_map", "filter", "map_batches", "map_values")
# The file sources and the keyword options each takes, with their types (see the README's
# section on data formats); `partitions` may be left out for them: the files decide.
FILE_SOURCES = {
    "read_text": {},
    "read_jsonl": {},
    "read_parquet": {"columns": list},
    "read_csv": {"columns": list, "header": bool, "delimiter": str},
}
SOURCES = ("range", *FILE_SOURCES)
BATCH_FORMATS = ("pandas", "arrow", "numpy")
VALUE_BUILTINS = ("collect", "count", "top")
COLLECTION_BUILTINS = ("join", "union", "distinct")
# Ordering, sampling and indexing (positions in collection order, see the README).
VALUE_BUILTINS += ("collect_map", "take")
COLLECTION_BUILTINS += ("sort_by", "sample", "zip_with_index")
BUILTINS = SOURCES + VALUE_BUILTINS + COLLECTION_BUILTINS
# Words that read as keywords wherever an expression may start, so a stage or value named
# after one could not be used (`collect(map)` is a syntax error).
KEYWORDS = ELEMENTWISE + ("reduce", "reduce_by_key", "group_by_key", "not", "and", "or", "true", "false", "none")
PARAM_TYPES = ("int", "float", "str", "bool")
SINK_FORMATS = ("json", "jsonl", "text", *ir.DATASET_FORMATS)


@dataclass
class Typed:
    """An expression after resolution: an operand and what it is."""

    operand: ir.Lit | ir.NodeRef
    shape: str
    keyed: bool | None = None
    order: str | None = None
    py_type: type | None = None  # for literals and typed params
    actor: Binding | None = None


class Builder:
    """Builds the IR of one parsed module; collects diagnostics instead of stopping."""

    def __init__(self, module: ast.Module, source: SourceFile, index: ModuleIndex | None = None):
        self.module = module
        self.source = source
        self.index = index or ModuleIndex.for_file(source.path)
        self.report = Reporter(source.path)
        self.diagnostics: list[Diagnostic] = self.report.diagnostics
        self.signatures = Signatures(self.index, self.report, source.path)
        self.name_spans: dict[str, Span] = {}  # node -> where the user named it
        self.ir = ir.IR(ir.PipelineInfo(name=module.pipeline.name.text, path=source.path,
                                        params=[p.name.text for p in module.pipeline.params]))
        self.loops: dict[str, ir.Loop] = {}
        self.region = Region(None, None)
        self.later = LaterNames()  # names defined further down (for hints)
        self.defaults = ir.StageOptions()
        self.actor_seq: dict[str, int] = {}
        self.last_actor_use: dict[str, str] = {}
        self.handle_stages: dict[str, list[str]] = {}  # actor node -> stages using a handle
        self.sinks: list[str] = []
        # parameter -> (least value, what needs it, where): checked when values are given
        self.param_limits: dict[str, list[tuple[int, str, Span]]] = {}
        self._id_counts: dict[str, int] = {}
        self._refs: dict[str, ir.NodeRef] = {}  # node id -> the NodeRef reading it (see _ref)
        self._naming: str | None = None  # the name the current statement defines

    # ---- diagnostics

    def error(self, message: str, span: Span | None, hint: str | None = None, *, code: str) -> None:
        """Record an error at ``span``; building goes on (see :class:`Reporter`)."""
        self.report.error(message, span, hint, code=code)

    def warn(self, message: str, span: Span | None, hint: str | None = None, *, code: str) -> None:
        """Record a warning at ``span``."""
        self.report.warn(message, span, hint, code=code)

    def fail(self, message: str, span: Span | None, hint: str | None = None, *, code: str) -> NoReturn:
        """Record an error at ``span`` and stop the current statement (raises Abort)."""
        self.report.fail(message, span, hint, code=code)

    # ---- entry point

    def build(self) -> ir.IR:
        """Build the IR; inspect ``diagnostics`` for errors before using it."""
        for use in self.module.uses:
            self.signatures.use(use)
        pipeline = self.module.pipeline
        for param in pipeline.params:
            self._guard(self._param, param)
        self.later.collect(pipeline.body)
        defaults = [s for s in pipeline.body if isinstance(s, ast.Defaults)]
        for extra in defaults[1:]:
            self.error("a pipeline has one `defaults` block", extra.span,
                       f"merge it with the one at line {defaults[0].span.line}", code="duplicate-defaults")
        if defaults:
            self.defaults = stage_options(defaults[0].options, ir.StageOptions(), self.report)
        self._block(pipeline.body)
        self._finish()
        self.ir.info = self.ir.info.model_copy(update={
            "loops": self.loops,
            "module_roots": [os.path.relpath(r, os.path.dirname(os.path.abspath(self.source.path)))
                             for r in self.index.found_roots]})
        return self.ir

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except Abort:
            return None

    # ---- params

    def _param(self, param: ast.Param) -> None:
        name, type_name = param.name.text, param.type.text
        first = self.region.lookup(name)
        if first is not None:
            self.fail(f"parameter `{name}` is declared twice", param.name.span,
                      f"the first is at line {first.span.line}, column {first.span.column}; pick another name",
                      code="duplicate-parameter")
        if type_name not in PARAM_TYPES:
            self.fail(f"unknown parameter type `{type_name}`", param.type.span,
                      did_you_mean(type_name, PARAM_TYPES) or "use int, float, str or bool", code="unknown-type")
        default = None
        if param.default is not None:
            default = constants.literal_value(param.default)
            if default is constants.NOT_LITERAL:
                self.fail("a parameter's default must be a literal", param.default.span, code="non-literal-default")
            if not constants.fits(default, type_name):
                self.fail(f"default {constants.show(default)} is not a{'n' if type_name == 'int' else ''} "
                          f"{type_name}", param.default.span, code="type-mismatch")
            if type_name == "float":
                default = float(default)
        self._define(name, param.name.span, "param", self.ir.add(name, ir.Param(
            type=type_name, default=default, required=param.default is None,
            span=ir.SpanModel.of(param.span), name=name)), ir.VALUE,
            py_type={"int": int, "float": float, "str": str, "bool": bool}[type_name])

    # ---- names and nodes

    def _define(self, name: str, span: Span, kind: str, node: str | None, shape: str, **extra) -> Binding:
        if name in KEYWORDS:
            self.error(f"`{name}` is a keyword and cannot be a name", span, f"pick another name, e.g. `{name}_`",
                       code="keyword-as-name")
        existing = self.region.lookup(name)
        if existing is not None:
            self.error(f"`{name}` is already defined", span,
                       f"the first definition is at line {existing.span.line}; pick another name",
                       code="duplicate-name")
        if name in self.signatures.aliases:
            self.error(f"`{name}` is already a module alias", span,
                       f"`use ... as {name}` is at line {self.signatures.aliases[name][1].line}", code="duplicate-name")
        binding = Binding(kind, node, shape, span, self.region.id, **extra)
        if node is not None:
            self.name_spans.setdefault(node, span)
        self.region.names[name] = binding
        return binding

    def _node_id(self, wanted: str) -> str:
        """``wanted``, or ``wanted-2``, ``wanted-3``... when taken (counted, not probed:
        a file with 10,000 calls of ``acc.push`` must not probe 10,000 times each)."""
        if wanted not in self.ir:
            return wanted
        n = self._id_counts.get(wanted, 1)
        while True:
            n += 1
            node = f"{wanted}-{n}"
            if node not in self.ir:
                self._id_counts[wanted] = n
                return node

    def _ref(self, node: str) -> ir.NodeRef:
        """The operand reading ``node``: one frozen NodeRef per node, shared by its readers
        (a parameter read by 10,000 stages is one model, not 10,000 for the collector)."""
        ref = self._refs.get(node)
        if ref is None:
            ref = self._refs[node] = ir.NodeRef(node=node)
        return ref

    def _add(self, node_id: str, op: ir.Op) -> str:
        update = {"loop": self.region.id}
        if op.name is None and node_id == self._naming:
            update["name"] = node_id  # the node the user named (`stage grads = ...`)
        return self.ir.add(self._node_id(node_id), op.model_copy(update=update))

    # ---- statements

    def _block(self, body) -> None:
        for stmt in body:
            try:
                self._stmt(stmt)
            except Abort:
                # Keep the name defined so later uses do not cascade into more errors.
                name = getattr(stmt, "name", None)
                if isinstance(name, ast.Name) and self.region.lookup(name.text) is None \
                        and not isinstance(stmt, ast.Rebind):
                    self.region.names[name.text] = Binding("broken", None, "broken", name.span,
                                                           self.region.id)

    def _stmt(self, stmt) -> None:
        kind = type(stmt).__name__
        name = getattr(stmt, "name", None)
        self._naming = name.text if isinstance(name, ast.Name) and not isinstance(stmt, ast.Rebind) else None
        getattr(self, f"_stmt_{kind.lower()}")(stmt)

    def _stmt_defaults(self, stmt: ast.Defaults) -> None:
        if self.region.id is not None:
            self.error("`defaults` belongs at the top of the pipeline, not inside `repeat`", stmt.span,
                       code="misplaced-defaults")

    def _stmt_source(self, stmt: ast.Source) -> None:
        call = stmt.call
        parts = call.func.parts
        options = stage_options(stmt.options, self.defaults, self.report)
        keyed = None
        if len(parts) == 1:
            kind = parts[0]
            if kind not in SOURCES:
                hint = did_you_mean(kind, SOURCES) or \
                    "a source is range(n), read_text(path), read_jsonl(path), read_parquet(path), " \
                    "read_csv(path) or module.function(...)"
                self.fail(f"unknown source `{kind}`", call.func.span, hint, code="unknown-source")
            if stmt.sharded:
                self.fail("only a Python callable source can be `sharded`", stmt.span,
                          "sharded sources are called once per partition on the workers", code="sharded-not-callable")
            if kind == "range" and stmt.partitions is None:
                self.fail("`range(n)` needs `partitions k`", stmt.span, "add `partitions 4` after the call",
                          code="missing-partitions")
            allowed = FILE_SOURCES.get(kind, {})
            if len(call.args) != 1:
                self.fail(f"`{kind}` takes exactly one {'argument' if kind == 'range' else 'path'}", call.span,
                          code="wrong-argument-count")
            for kw in call.kwargs:
                if kw.name.text not in allowed:
                    self.fail(f"`{kind}` has no option `{kw.name.text}`", kw.name.span,
                              did_you_mean(kw.name.text, tuple(allowed)) or
                              (f"its options are {', '.join(allowed)}" if allowed else f"`{kind}` takes no options"),
                              code="unknown-keyword")
            arg = self._expr(call.args[0])
            self._expect_value(arg, call.args[0], int if kind == "range" else str)
            kwargs = {kw.name.text: self._reader_option(kind, kw, allowed[kw.name.text]) for kw in call.kwargs}
            partitions = self._partitions(stmt.partitions) if stmt.partitions is not None else None
            op = ir.Source(kind=kind, args=[arg.operand], kwargs=kwargs, partitions=partitions, options=options,
                           span=ir.SpanModel.of(stmt.span), name=stmt.name.text)
            keyed = False if kind in ("range", "read_text", "read_parquet", "read_csv") else None
        else:
            if stmt.partitions is None:
                self.fail("a callable source needs `partitions k`", stmt.span, "add `partitions 4` after the call",
                          code="missing-partitions")
            partitions = self._partitions(stmt.partitions)
            fn = self.signatures.function(call.func, what="source function")
            args = [self._value_arg(a) for a in call.args]
            kwargs = {k.name.text: self._value_arg(k.value) for k in call.kwargs}
            self.signatures.check_signature(fn, call, extra=("partition", "partitions") if stmt.sharded else ())
            op = ir.Source(kind="callable", fn=fn, args=args, kwargs=kwargs, partitions=partitions,
                           sharded=stmt.sharded, options=options, span=ir.SpanModel.of(stmt.span),
                           name=stmt.name.text)
        node = self._add(stmt.name.text, op)
        self._define(stmt.name.text, stmt.name.span, "source", node, ir.COLLECTION, keyed=keyed)

    def _reader_option(self, kind: str, kw: ast.Keyword, want: type) -> ir.Lit | ir.NodeRef:
        """A file reader's option (``columns = ["id", "x"]``, ``header = false``, ...),
        checked where it is known before running."""
        typed = self._expr(kw.value)
        if typed.shape != ir.VALUE:
            self._shape_error(typed, ir.VALUE, kw.value)
        name = kw.name.text
        if isinstance(typed.operand, ir.Lit):
            value = typed.operand.value
            if want is list and not (isinstance(value, list) and value and all(isinstance(c, str) for c in value)):
                self.fail(f"`{name}` of `{kind}` is a non-empty list of column names", kw.value.span,
                          f'for instance `{name} = ["id", "x"]`', code="bad-option-value")
            if want is bool and not isinstance(value, bool):
                self.fail(f"`{name}` of `{kind}` is true or false, not {constants.show(value)}", kw.value.span,
                          code="bad-option-value")
            if want is str and not (isinstance(value, str) and len(value) == 1):
                self.fail(f"`{name}` of `{kind}` is one character, not {constants.show(value)}", kw.value.span,
                          'for instance `delimiter = ";"`', code="bad-option-value")
        elif typed.py_type is not None and typed.py_type is not want:
            self.fail(f"`{name}` of `{kind}` needs {_a(want.__name__)}, got {_a(typed.py_type.__name__)}",
                      kw.value.span, code="type-mismatch")
        return typed.operand

    def _partitions(self, expr, what: str = "`partitions`") -> ir.Lit | ir.NodeRef:
        typed = self._expr(expr)
        if isinstance(typed.operand, ir.Lit):
            value = typed.operand.value
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self.fail(f"{what} needs a positive integer, not {constants.show(value)}", expr.span,
                          code="not-positive")
        elif typed.py_type is not int:
            self.fail(f"{what} needs an integer literal or an `int` parameter", expr.span, code="not-an-integer")
        else:
            self._param_at_least(typed, 1, what, expr.span)
        return typed.operand

    def _param_at_least(self, typed: Typed, minimum: int, what: str, span: Span) -> None:
        """A parameter used where ``minimum`` is the least allowed: check its default now and
        remember the limit for the values given later (:func:`pipec.api.bind_params`)."""
        op = self.ir.op(typed.operand.node) if isinstance(typed.operand, ir.NodeRef) else None
        if not isinstance(op, ir.Param):
            return
        self.param_limits.setdefault(op.name, []).append((minimum, what, span))
        if op.default is not None and op.default < minimum:
            self.error(f"{what} needs at least {minimum}, and the default of `{op.name}` is {op.default}", span,
                       f"change the default at line {op.span.line}" if op.span else None, code="value-too-small")

    def _stmt_stage(self, stmt: ast.Stage) -> None:
        options = stage_options(stmt.options, self.defaults, self.report)
        typed = self._expr(stmt.expr, name=stmt.name.text, options=options)
        if typed.shape != ir.COLLECTION:
            self._shape_error(typed, ir.COLLECTION, stmt.expr,
                              f"a stage computes a collection; use `value {stmt.name.text} = ...` "
                              f"for a single object")
        if self._is_alias(typed, stmt.expr):
            self.fail(f"stage `{stmt.name.text}` only renames another collection", stmt.expr.span,
                      "a stage must apply an operation, e.g. `map f over xs`", code="rename-only-stage")
        self._define(stmt.name.text, stmt.name.span, "stage", typed.operand.node, ir.COLLECTION,
                     keyed=typed.keyed, order=typed.order)

    def _is_alias(self, typed: Typed, expr) -> bool:
        return isinstance(constants.unparen(expr), ast.Ref)

    def _stmt_value(self, stmt: ast.Value) -> None:
        typed = self._expr(stmt.expr, name=stmt.name.text)
        if typed.shape != ir.VALUE:
            self._shape_error(typed, ir.VALUE, stmt.expr,
                              f"a value is one object; use `stage {stmt.name.text} = ...` for a collection, "
                              f"or `collect(...)` / `count(...)` / `reduce f over ...` to make one value")
        node = self._materialise(typed, stmt.name.text, stmt.span)
        self._define(stmt.name.text, stmt.name.span, "value", node, ir.VALUE,
                     py_type=typed.py_type)

    def _materialise(self, typed: Typed, name: str, span: Span) -> str:
        if isinstance(typed.operand, ir.NodeRef):
            return typed.operand.node
        return self._add(name, ir.Const(value=typed.operand.value, span=ir.SpanModel.of(span), name=name))

    def _stmt_var(self, stmt: ast.Var) -> None:
        if stmt.name.text in STATEMENT_KEYWORDS:
            # `value = ...` starts a new `value` statement: such a var could never be rebound.
            self.error(f"a var cannot be called `{stmt.name.text}`: `{stmt.name.text} = ...` would start a "
                       f"`{stmt.name.text}` statement, so it could never be rebound", stmt.name.span,
                       f"pick another name, e.g. `{stmt.name.text}_`", code="reserved-name")
        typed = self._expr(stmt.expr, name=f"{stmt.name.text}/init")
        if typed.shape not in (ir.COLLECTION, ir.VALUE):
            self._shape_error(typed, ir.VALUE, stmt.expr, "a var holds a collection or a value")
        init = self._materialise(typed, f"{stmt.name.text}/init", stmt.expr.span)
        node = self._add(stmt.name.text, ir.Var(var_shape=typed.shape, init=self._ref(init),
                                                span=ir.SpanModel.of(stmt.span), name=stmt.name.text))
        self._define(stmt.name.text, stmt.name.span, "var", node, typed.shape,
                     keyed=typed.keyed, order=typed.order, py_type=typed.py_type)

    def _stmt_rebind(self, stmt: ast.Rebind) -> None:
        name = stmt.name.text
        binding = self.region.lookup(name)
        if binding is None:
            self._undefined(name, stmt.name.span, rebinding=True)
        if binding.kind == "broken":
            raise Abort
        if binding.kind != "var":
            self.fail(f"`{name}` is a {binding.kind}, not a `var`, and cannot be rebound", stmt.name.span,
                      f"declare it with `var {name} = ...` before the loop to update it each round",
                      code="rebind-not-var")
        if self.region.id is None:
            self.fail(f"`{name}` is rebound outside a `repeat`", stmt.name.span,
                      "a var is rebound once per round inside a loop; outside, define a new name",
                      code="rebind-outside-loop")
        # A rebind inside `when` blocks belongs to the round of the innermost `repeat`
        # around them: it takes effect where the block runs (see Driver.run_when).
        round_regions = [self.region]
        while self.loops[round_regions[-1].id].when is not None:
            round_regions.append(round_regions[-1].parent)
        if binding.region in {r.id for r in round_regions}:
            self.fail(f"`{name}` is rebound in the block that declares it", stmt.name.span,
                      "declare the var before the `repeat` that updates it", code="rebind-in-declaring-block")
        for region in round_regions:
            if name in region.rebound:
                first = self.ir.op(region.rebound[name]).span
                where = f" (first at line {first.line})" if first is not None else ""
                self.fail(f"`{name}` is rebound twice in one round{where}", stmt.name.span,
                          "compute the final value once and rebind it once", code="rebind-twice")
        typed = self._expr(stmt.expr, name=f"{name}@{self.region.id}/value")
        if typed.shape != binding.shape:
            self._shape_error(typed, binding.shape, stmt.expr,
                              f"`{name}` was declared as a {binding.shape} (line {binding.span.line})")
        value = self._materialise(typed, f"{name}@{self.region.id}/value", stmt.expr.span)
        node = self._add(f"{name}@{self.region.id}", ir.Rebind(
            var=binding.node, var_shape=binding.shape, value=self._ref(value),
            span=ir.SpanModel.of(stmt.span), name=name))
        for region in round_regions:
            region.rebound[name] = node
        # Later reads in this round see the new value (after a `when` block, through the var).
        self.region.names[name] = Binding("var", node, binding.shape, binding.span, self.region.id,
                                          keyed=typed.keyed, order=typed.order)

    def _stmt_actor(self, stmt: ast.Actor) -> None:
        name = stmt.name.text
        cls = self.signatures.function(stmt.ctor.func, what="actor class")
        info = self.signatures.class_info(cls)
        self.signatures.check_signature(cls, stmt.ctor)
        args = [self._value_arg(a) for a in stmt.ctor.args]
        kwargs = {k.name.text: self._value_arg(k.value) for k in stmt.ctor.kwargs}
        size = None
        if stmt.pool and stmt.size is None:
            self.fail(f"actor pool `{name}` needs a size", stmt.span, "write `... x 2` after the constructor",
                      code="pool-without-size")
        if stmt.size is not None and not stmt.pool:
            self.fail(f"`x N` makes a pool; write `actor pool {name} = ...`", stmt.size.span, code="size-without-pool")
        if stmt.size is not None:
            size = self._partitions(stmt.size, "the pool size")
        opts = actor_options(stmt.options, stmt.pool, self.report,
                             lambda method, span: self.signatures.check_method(info, cls, method, span))
        node = self._add(name, ir.Actor(cls=cls, args=args, kwargs=kwargs, pool_size=size, restarts=opts.restarts,
                                        checkpoint_every=opts.checkpoint_every, idempotent=opts.idempotent,
                                        span=ir.SpanModel.of(stmt.span), name=name))
        self._define(name, stmt.name.span, "pool" if stmt.pool else "actor", node, ir.ACTOR,
                     actor_class=cls, pool=stmt.pool)

    def _stmt_callstmt(self, stmt: ast.CallStmt) -> None:
        typed = self._expr(stmt.call)
        if typed.shape == ir.VALUE and isinstance(typed.operand, ir.NodeRef):
            op = self.ir.op(typed.operand.node)
            if isinstance(op, (ir.ActorCall, ir.PoolCall)):
                return
        self.fail("only an actor call can stand alone as a statement", stmt.span,
                  "give the result a name: `value x = ...`", code="bare-expression")

    def _stmt_repeat(self, stmt: ast.Repeat) -> None:
        count = self._expr(stmt.count)
        if count.shape != ir.VALUE:
            self._shape_error(count, ir.VALUE, stmt.count, "`repeat` takes a number of rounds")
        if isinstance(count.operand, ir.Lit):
            v = count.operand.value
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                self.fail(f"`repeat` needs a non-negative integer count, not {constants.show(v)}", stmt.count.span,
                          code="not-positive")
        elif count.py_type not in (int, None):
            self.fail(f"`repeat` needs an integer count, and this is {_a(count.py_type.__name__)}",
                      stmt.count.span, "declare the parameter as `int`", code="type-mismatch")
        else:
            self._param_at_least(count, 0, "`repeat`", stmt.count.span)
        # `when` regions share the table but not the numbering: loop ids stay as they were.
        loop_id = f"loop{sum(1 for loop in self.loops.values() if loop.when is None) + 1}"
        outer = self.region
        self.region = Region(loop_id, outer)
        try:
            index = None
            if stmt.index is not None:
                index = self._add(stmt.index.text, ir.RoundIndex(of_loop=loop_id, name=stmt.index.text,
                                                                 span=ir.SpanModel.of(stmt.index.span)))
                self._define(stmt.index.text, stmt.index.span, "index", index, ir.VALUE, py_type=int)
            # Register the loop before its body so nested loops name it as their parent.
            self.loops[loop_id] = ir.Loop(id=loop_id, parent=outer.id, count=count.operand, index=index,
                                          span=ir.SpanModel.of(stmt.span))
            self._block(stmt.body)
            until = None
            if stmt.until is not None:
                cond = self._guard(self._expr, stmt.until, f"{loop_id}/until")
                if cond is not None:
                    if cond.shape != ir.VALUE:
                        self._guard(self._shape_error, cond, ir.VALUE, stmt.until,
                                    "`until` is checked after each round and needs a boolean value")
                    elif cond.py_type not in (bool, None):
                        self.error(f"`until` needs a boolean, and this is {_a(cond.py_type.__name__)}",
                                   stmt.until.span, "compare it, e.g. `until delta < 0.001`", code="type-mismatch")
                    until = cond.operand
            self.loops[loop_id] = self.loops[loop_id].model_copy(update={"until": until})
        finally:
            self.region = outer

    def _stmt_when(self, stmt: ast.When) -> None:
        if self.region.id is None:
            self.fail("`when` runs its body in some rounds of a loop; here there is no loop", stmt.span,
                      "put it inside `repeat`, or drop the condition: outside a loop everything runs once",
                      code="when-outside-loop")
        when_id = f"when{sum(1 for loop in self.loops.values() if loop.when is not None) + 1}"
        cond = self._guard(self._expr, stmt.cond, f"{when_id}/cond")
        operand = ir.Lit(value=False)
        if cond is not None:
            if cond.shape != ir.VALUE:
                self._guard(self._shape_error, cond, ir.VALUE, stmt.cond, "`when` needs a boolean value")
            elif cond.py_type not in (bool, None):
                self.error(f"`when` needs a boolean, and this is {_a(cond.py_type.__name__)}", stmt.cond.span,
                           "compare it, e.g. `when i % 10 == 0`", code="type-mismatch")
            else:
                operand = cond.operand
        outer = self.region
        self.loops[when_id] = ir.Loop(id=when_id, parent=outer.id, count=ir.Lit(value=1), when=operand,
                                      span=ir.SpanModel.of(stmt.span))
        self.region = Region(when_id, outer)
        try:
            self._block(stmt.body)
        finally:
            self.region = outer

    def _stmt_sink(self, stmt: ast.Sink) -> None:
        typed = self._expr(stmt.expr, name=f"{stmt.name.text}/value")
        if typed.shape not in (ir.COLLECTION, ir.VALUE):
            self._shape_error(typed, ir.VALUE, stmt.expr, "a sink writes a collection or a value")
        fmt, path = None, None
        if stmt.format is not None:
            fmt = stmt.format.text
            if fmt not in SINK_FORMATS:
                self.fail(f"unknown sink format `{fmt}`", stmt.format.span,
                          did_you_mean(fmt, SINK_FORMATS) or "use json, jsonl, text, parquet or csv",
                          code="unknown-sink-format")
            if fmt in ir.DATASET_FORMATS and typed.shape != ir.COLLECTION:
                self.fail(f"a {fmt} sink writes a collection (a dataset folder, one file per partition)",
                          stmt.expr.span, "write a single value with `-> json(...)`", code="wrong-kind")
            target = self._sink_path(stmt)
            self._expect_value(target, stmt.target, str)
            path = target.operand
        source = self._materialise(typed, f"{stmt.name.text}/value", stmt.expr.span)
        if self.region.id is not None:
            self._round_sink(stmt, fmt, path)
        node = self._add(stmt.name.text, ir.Sink(input=self._ref(source), format=fmt, path=path,
                                                 span=ir.SpanModel.of(stmt.span), name=stmt.name.text))
        self._define(stmt.name.text, stmt.name.span, "sink", node, ir.EFFECT)
        self.sinks.append(node)

    def _sink_path(self, stmt: ast.Sink) -> Typed:
        """A sink's path; a string literal's ``{name}`` fields name values in scope (a
        round index, a parameter), filled in each time the sink is written."""
        target = constants.unparen(stmt.target)
        if not (isinstance(target, ast.Literal) and isinstance(target.value, str)) or "{" not in target.raw \
                and "}" not in target.raw:
            return self._expr(stmt.target)
        fields: dict[str, ir.Lit | ir.NodeRef] = {}
        for name, at in _template_fields(target.raw):
            width = 1 if name.startswith("{") or name == "}" else len(name) + 2
            span = Span(target.span.line, target.span.column + at, target.span.line,
                        target.span.column + at + width, target.span.start + at, target.span.start + at + width)
            if not name.isidentifier():
                message = ("an unclosed `{` in the sink path" if name.startswith("{") else
                           "a `}` without its `{` in the sink path" if name == "}" else
                           f"`{{{name}}}` in the sink path is not a name")
                self.fail(message, span, "a field names a round index or a parameter, e.g. `{i}`; write `{{` and "
                                         "`}}` for braces", code="bad-path-template")
            binding = self.region.lookup(name)
            if binding is None:
                hint = did_you_mean(name, {n for n in self.region.visible()
                                           if self.region.lookup(n).shape == ir.VALUE})
                self.fail(f"`{{{name}}}` in the sink path names nothing", span,
                          hint or "a field names a round index (`repeat N as i`), a parameter or a value",
                          code="undefined-name")
            if binding.kind == "broken":
                raise Abort
            if binding.shape != ir.VALUE:
                self.fail(f"`{{{name}}}` names a {binding.kind}; a sink path takes values", span, code="wrong-kind")
            fields[name] = self._ref(binding.node)
        try:
            _template_fields(target.raw)
            text = target.value.format_map({k: "" for k in fields})
        except (ValueError, KeyError, IndexError) as exc:
            self.fail(f"cannot read the sink path's fields: {exc}", target.span, code="bad-path-template")
        if not fields:
            return Typed(ir.Lit(value=text), ir.VALUE, py_type=str)
        node = self._add(f"{stmt.name.text}/path", ir.Format(template=target.value, fields=fields,
                                                              span=ir.SpanModel.of(target.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=str)

    def _round_sink(self, stmt: ast.Sink, fmt: str | None, path) -> None:
        """A sink inside a loop writes one file (or dataset folder) per round: it needs a
        format, and a path naming the index of every `repeat` around it, so no round
        overwrites another."""
        if fmt is None:
            self.fail("a sink inside `repeat` writes a file each round, and this one has no file", stmt.span,
                      'give it one, e.g. `-> json("out/eval-{i}.json")`, or declare a `var` before the loop, '
                      "rebind it inside, and sink it after", code="round-sink-without-file")
        named = set(self.ir.op(path.node).fields.values()) if isinstance(path, ir.NodeRef) and \
            isinstance(self.ir.op(path.node), ir.Format) else set()
        named = {operand.node for operand in named}
        region = self.region.id
        while region is not None:
            loop = self.loops[region]
            if loop.when is None and (loop.index is None or loop.index not in named):
                index = self.ir.op(loop.index).name if loop.index else None
                hint = (f"name the round in the path, e.g. `{{{index}}}`" if index else
                        f"name the round with `repeat ... as i` (line {loop.span.line}) and write `{{i}}` in the path")
                self.fail("a sink inside `repeat` writes a file per round, and its path does not name the round",
                          stmt.target.span, hint, code="round-sink-path")
            region = loop.parent

    # ---- expressions

    def _expr(self, expr, name: str | None = None, options: ir.StageOptions | None = None) -> Typed:
        """Resolve ``expr``. ``name`` names the node it creates (nested nodes get derived
        names); ``options`` are the stage options of the outermost stage operation."""
        method = getattr(self, f"_expr_{type(expr).__name__.lower()}")
        return method(expr, name, options)

    def _nested(self, expr, name: str | None, suffix: str) -> Typed:
        return self._expr(expr, f"{name}/{suffix}" if name else None, None)

    def _expr_paren(self, expr: ast.Paren, name, options) -> Typed:
        return self._expr(expr.inner, name, options)

    def _expr_literal(self, expr: ast.Literal, name, options) -> Typed:
        return Typed(ir.Lit(value=expr.value), ir.VALUE, py_type=type(expr.value))

    def _expr_listexpr(self, expr: ast.ListExpr, name, options) -> Typed:
        items = [self._value_arg(i) for i in expr.items]
        if all(isinstance(i, ir.Lit) for i in items):
            return Typed(ir.Lit(value=[i.value for i in items]), ir.VALUE, py_type=list)
        node = self._add(name or "list", ir.Expr(operator="list", operands=items, span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=list)

    def _expr_ref(self, expr: ast.Ref, name, options) -> Typed:
        parts = expr.path.parts
        head = parts[0]
        binding = self.region.lookup(head)
        if binding is None:
            if head in self.signatures.aliases or len(parts) > 1:
                fn = self.signatures.function(expr.path)
                self.fail(f"`{fn.dotted}` is a function; call it, or pass it to an operation",
                          expr.span, f"e.g. `map {expr.path.text} over xs` or `{expr.path.text}(...)`",
                          code="function-not-called")
            self._undefined(head, expr.path.span)
        if binding.kind == "broken":
            raise Abort
        if len(parts) > 1:
            if binding.kind in ("actor", "pool"):
                self.fail(f"`{expr.path.text}` is an actor method; call it: `{expr.path.text}()`", expr.span,
                          code="method-not-called")
            self.fail(f"`{head}` is a {binding.kind} and has no attributes", expr.span, code="no-attributes")
        if binding.kind == "sink":
            self.fail(f"`{head}` is a sink; sinks produce files, not data", expr.span, code="sink-as-data")
        return Typed(self._ref(binding.node), binding.shape, binding.keyed, binding.order,
                     binding.py_type, binding if binding.shape == ir.ACTOR else None)

    def _undefined(self, name: str, span: Span, rebinding: bool = False) -> NoReturn:
        self.later.explain(name, span, rebinding, self.report)
        hint = did_you_mean(name, self.region.visible() | set(self.signatures.aliases))
        self.fail(f"undefined name `{name}`", span, hint, code="undefined-name")

    def _expr_binop(self, expr: ast.BinOp, name, options) -> Typed:
        left = self._nested(expr.left, name, "left")
        right = self._nested(expr.right, name, "right")
        for side, typed in (("left", left), ("right", right)):
            if typed.shape != ir.VALUE:
                self._shape_error(typed, ir.VALUE, getattr(expr, side),
                                  f"`{expr.op}` works on values; reduce the collection to a value first")
        py_type = constants.result_type(expr.op, left.py_type, right.py_type)
        if isinstance(left.operand, ir.Lit) and isinstance(right.operand, ir.Lit):
            try:
                value = constants.fold(expr.op, left.operand.value, right.operand.value)
            except Exception as exc:  # a constant expression that cannot be computed
                self.fail(f"cannot compute `{expr.op}` here: {constants.reason(exc)}", expr.span, code="constant-error")
            return Typed(ir.Lit(value=value), ir.VALUE, py_type=type(value))
        node = self._add(name or "expr", ir.Expr(operator=expr.op, operands=[left.operand, right.operand],
                                                  span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=py_type)

    def _expr_unaryop(self, expr: ast.UnaryOp, name, options) -> Typed:
        inner = self._nested(expr.operand, name, "operand")
        if inner.shape != ir.VALUE:
            self._shape_error(inner, ir.VALUE, expr.operand, f"`{expr.op}` works on values")
        operator = {"-": "neg", "+": "pos", "not": "not"}[expr.op]
        if isinstance(inner.operand, ir.Lit):
            try:
                value = constants.fold(operator, inner.operand.value)
            except Exception as exc:
                self.fail(f"cannot compute `{expr.op}` here: {constants.reason(exc)}", expr.span, code="constant-error")
            return Typed(ir.Lit(value=value), ir.VALUE, py_type=type(value))
        node = self._add(name or "expr", ir.Expr(operator=operator, operands=[inner.operand],
                                                  span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=bool if operator == "not" else inner.py_type)

    def _expr_call(self, expr: ast.Call, name, options) -> Typed:
        parts = expr.func.parts
        if len(parts) == 1:
            builtin = parts[0]
            if builtin in SOURCES:
                self.fail(f"`{builtin}` makes a source; declare it as a statement", expr.span,
                          f"`source xs = {builtin}(...) partitions 4`", code="source-in-expression")
            if builtin in VALUE_BUILTINS or builtin in COLLECTION_BUILTINS:
                return getattr(self, f"_builtin_{builtin}")(expr, name or builtin, options)
            binding = self.region.lookup(builtin)
            if binding is not None:
                self.fail(f"`{builtin}` is a {binding.kind}, not a function", expr.func.span, code="wrong-kind")
            self.fail(f"unknown function `{builtin}`", expr.func.span,
                      did_you_mean(builtin, BUILTINS)
                      or "name Python functions by module: `use mymodule as m` then `m.f(...)`",
                      code="unknown-function")
        binding = self.region.lookup(parts[0])
        if binding is not None and binding.kind != "broken":
            if binding.shape != ir.ACTOR:
                self.fail(f"`{parts[0]}` is a {binding.kind}, not an actor; it has no methods", expr.func.span,
                          "methods are called on actors declared with `actor name = Class(...)`", code="wrong-kind")
            return self._actor_call(expr, binding, name)
        if binding is not None:
            raise Abort
        fn = self.signatures.function(expr.func)
        self.signatures.check_signature(fn, expr)
        args = [self._value_arg(a) for a in expr.args]
        kwargs = {k.name.text: self._value_arg(k.value) for k in expr.kwargs}
        node = self._add(name or fn.attr, ir.Call(fn=fn, args=args, kwargs=kwargs, span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE)

    def _actor_call(self, expr: ast.Call, actor: Binding, name) -> Typed:
        parts = expr.func.parts
        if len(parts) == 3 and parts[1] == "each":
            return self._pool_call(expr, actor, name)
        if len(parts) != 2:
            self.fail("an actor method call is `actor.method(...)`", expr.func.span, code="bad-method-call")
        method = parts[1]
        if actor.pool:
            self.fail(f"`{parts[0]}` is an actor pool; its members serve stages", expr.func.span,
                      f"use it as `map_batches {expr.func.text} over xs`, call every member with "
                      f"`{parts[0]}.each.{method}(...)`, or declare a single actor",
                      code="pool-called-directly")
        args, kwargs, seq = self._numbered_call(actor, method, expr)
        node = self._add(name or f"{parts[0]}.{method}", ir.ActorCall(
            actor=self._ref(actor.node), method=method, args=args, kwargs=kwargs, seq=seq,
            span=ir.SpanModel.of(expr.span)))
        self._after_actor_use(actor.node, node)
        for stage in self.handle_stages.pop(actor.node, []):
            if stage != node:
                self.ir.add_order(stage, node)
        return Typed(self._ref(node), ir.VALUE)

    def _numbered_call(self, actor: Binding, method: str, expr: ast.Call) -> tuple[list, dict, int]:
        """A graph-level call of ``method`` on ``actor`` (one actor or a whole pool): its
        signature checked, its arguments as operands, and its number among the calls to
        that actor (or pool), in program order."""
        info = self.signatures.class_info(actor.actor_class)
        self.signatures.check_method(info, actor.actor_class, method, expr.func.span, call=expr)
        args = [self._value_arg(a) for a in expr.args]
        kwargs = {k.name.text: self._value_arg(k.value) for k in expr.kwargs}
        seq = self.actor_seq.get(actor.node, 0)
        self.actor_seq[actor.node] = seq + 1
        return args, kwargs, seq

    def _pool_call(self, expr: ast.Call, actor: Binding, name) -> Typed:
        """``pool.each.method(...)``: every member, in program order, numbered per pool."""
        pool_name, _, method = expr.func.parts
        if not actor.pool:
            self.fail(f"`{pool_name}` is a single actor; `.each.` calls every member of a pool", expr.func.span,
                      f"call it as `{pool_name}.{method}(...)`, or declare `actor pool {pool_name} = ... x N`",
                      code="each-without-pool")
        args, kwargs, seq = self._numbered_call(actor, method, expr)
        node = self._add(name or f"{pool_name}.each.{method}", ir.PoolCall(
            pool=self._ref(actor.node), method=method, args=args, kwargs=kwargs, seq=seq,
            span=ir.SpanModel.of(expr.span)))
        self._after_actor_use(actor.node, node)
        return Typed(self._ref(node), ir.VALUE, py_type=list)

    def _after_actor_use(self, actor: str, node: str) -> None:
        previous = self.last_actor_use.get(actor)
        if previous is not None:
            self.ir.add_order(previous, node)
        self.last_actor_use[actor] = node

    def _value_arg(self, expr) -> ir.Lit | ir.NodeRef:
        typed = self._expr(expr)
        if typed.shape == ir.COLLECTION:
            self._shape_error(typed, ir.VALUE, expr,
                              "arguments here are values; turn the collection into one with "
                              "`collect(...)`, `count(...)` or `reduce f over ...`")
        if typed.shape == ir.ACTOR:
            self.fail("an actor can only be passed into a stage with `with name = actor`", expr.span,
                      code="actor-as-value")
        return typed.operand

    def _expect_value(self, typed: Typed, expr, want: type) -> None:
        if typed.shape != ir.VALUE:
            self._shape_error(typed, ir.VALUE, expr, f"expected {_a(want.__name__)}")
        if typed.py_type is not None and typed.py_type is not want and not (want is float and typed.py_type is int):
            self.fail(f"expected {_a(want.__name__)}, got {_a(typed.py_type.__name__)}", expr.span,
                      code="type-mismatch")

    # ---- builtins

    def _args(self, expr: ast.Call, count: int, kw: tuple[str, ...] = ()) -> None:
        fn = expr.func.text
        if len(expr.args) != count:
            self.fail(f"`{fn}` takes {count} argument{'s' if count != 1 else ''}, got {len(expr.args)}", expr.span,
                      code="wrong-argument-count")
        for k in expr.kwargs:
            if k.name.text not in kw:
                self.fail(f"`{fn}` has no keyword `{k.name.text}`", k.name.span,
                          did_you_mean(k.name.text, kw) if kw else None, code="unknown-keyword")

    def _collection_arg(self, expr, name, what: str) -> Typed:
        typed = self._expr(expr, name)
        if typed.shape != ir.COLLECTION:
            self._shape_error(typed, ir.COLLECTION, expr, f"{what} needs a collection")
        return typed

    def _builtin_collect(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 1)
        src = self._collection_arg(expr.args[0], f"{name}/input", "`collect`")
        node = self._add(name, ir.Collect(input=src.operand, span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=list)

    def _builtin_count(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 1)
        src = self._collection_arg(expr.args[0], f"{name}/input", "`count`")
        node = self._add(name, ir.Count(input=src.operand, span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=int)

    def _builtin_top(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 2, ("by",))
        src = self._collection_arg(expr.args[0], f"{name}/input", "`top`")
        n = self._expr(expr.args[1])
        self._expect_value(n, expr.args[1], int)
        by = self._key_function(expr)
        node = self._add(name, ir.Top(input=src.operand, n=n.operand, by=by, span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=list)

    def _builtin_join(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 2)
        left = self._collection_arg(expr.args[0], f"{name}/left", "`join`")
        right = self._collection_arg(expr.args[1], f"{name}/right", "`join`")
        for side, typed in (("first", left), ("second", right)):
            if typed.keyed is False:
                self.fail(f"the {side} input of `join` is not keyed", expr.args[0 if side == "first" else 1].span,
                          "join pairs up (key, value) records; make them with `map`", code="not-keyed")
        node = self._add(name, ir.Join(left=left.operand, right=right.operand, options=options or self.defaults,
                                       span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.COLLECTION, keyed=True, order="key")

    def _builtin_union(self, expr: ast.Call, name, options) -> Typed:
        if len(expr.args) < 2 or expr.kwargs:
            self.fail("`union` takes two or more collections", expr.span, code="wrong-argument-count")
        parts = [self._collection_arg(a, f"{name}/part{i}", "`union`") for i, a in enumerate(expr.args)]
        keyed = True if all(p.keyed for p in parts) else (False if any(p.keyed is False for p in parts) else None)
        node = self._add(name, ir.UnionAll(parts=[p.operand for p in parts], span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.COLLECTION, keyed=keyed)

    def _builtin_distinct(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 1)
        src = self._collection_arg(expr.args[0], f"{name}/input", "`distinct`")
        node = self._add(name, ir.Distinct(input=src.operand, options=options or self.defaults,
                                           span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.COLLECTION, keyed=src.keyed, order="element")

    def _builtin_collect_map(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 1)
        src = self._collection_arg(expr.args[0], f"{name}/input", "`collect_map`")
        if src.keyed is False:
            self.fail("`collect_map` needs (key, value) records, and its input is not keyed", expr.args[0].span,
                      "make pairs first, e.g. `map m.to_pair over xs`", code="not-keyed")
        node = self._add(name, ir.CollectMap(input=src.operand, span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=dict)

    def _builtin_take(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 2)
        src = self._collection_arg(expr.args[0], f"{name}/input", "`take`")
        n = self._expr(expr.args[1])
        self._expect_value(n, expr.args[1], int)
        self._at_least(n, 0, "`take`'s count", expr.args[1])
        node = self._add(name, ir.Take(input=src.operand, n=n.operand, span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.VALUE, py_type=list)

    def _builtin_sort_by(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 1, ("by",))
        src = self._collection_arg(expr.args[0], f"{name}/input", "`sort_by`")
        by = self._key_function(expr)
        node = self._add(name, ir.SortBy(input=src.operand, by=by, options=options or self.defaults,
                                         span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.COLLECTION, keyed=src.keyed)

    def _builtin_sample(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 2, ("seed",))
        src = self._collection_arg(expr.args[0], f"{name}/input", "`sample`")
        fraction = self._expr(expr.args[1])
        self._expect_value(fraction, expr.args[1], float)
        if isinstance(fraction.operand, ir.Lit) and not 0 <= fraction.operand.value <= 1:
            self.fail(f"`sample` keeps a fraction between 0 and 1, not {constants.show(fraction.operand.value)}",
                      expr.args[1].span, "0.1 keeps about one item in ten", code="out-of-range")
        seed = ir.Lit(value=0)
        for k in expr.kwargs:
            typed = self._expr(k.value)
            self._expect_value(typed, k.value, int)
            seed = typed.operand
        node = self._add(name, ir.Sample(input=src.operand, fraction=fraction.operand, seed=seed,
                                         span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.COLLECTION, keyed=src.keyed)

    def _builtin_zip_with_index(self, expr: ast.Call, name, options) -> Typed:
        self._args(expr, 1)
        src = self._collection_arg(expr.args[0], f"{name}/input", "`zip_with_index`")
        node = self._add(name, ir.ZipWithIndex(input=src.operand, span=ir.SpanModel.of(expr.span)))
        return Typed(self._ref(node), ir.COLLECTION, keyed=True)

    def _key_function(self, expr: ast.Call) -> ir.FnRef | None:
        """The ``by = m.f`` of ``expr`` (``top``, ``sort_by``): a function of one element, or None."""
        by = None
        for k in expr.kwargs:
            value = constants.unparen(k.value)
            if not isinstance(value, ast.Ref):
                self.fail("`by` takes a function, e.g. `by = m.score`", k.value.span, code="wrong-kind")
            by = self.signatures.function(value.path)
            self.signatures.check_arity(by, 1, value.span)
        return by

    def _at_least(self, typed: Typed, minimum: int, what: str, expr) -> None:
        """A literal count below ``minimum`` is an error here; a parameter's is checked
        with its default now and its given value later."""
        if isinstance(typed.operand, ir.Lit):
            value = typed.operand.value
            if isinstance(value, int) and not isinstance(value, bool) and value < minimum:
                self.fail(f"{what} needs at least {minimum}, not {constants.show(value)}", expr.span,
                          code="out-of-range")
        else:
            self._param_at_least(typed, minimum, what, expr.span)

    # ---- dataflow

    def _expr_dataflow(self, expr: ast.Dataflow, name, options) -> Typed:
        options = options or self.defaults
        name = name or expr.kind
        src = self._collection_arg(expr.input, f"{name}/input", f"`{expr.kind}`")
        span = ir.SpanModel.of(expr.span)
        if expr.kind == "group_by_key":
            self._need_keyed(src, expr)
            node = self._add(name, ir.GroupByKey(input=src.operand, options=options, span=span))
            return Typed(self._ref(node), ir.COLLECTION, keyed=True, order="key")
        if expr.kind in ("reduce", "reduce_by_key"):
            fn = self.signatures.function(expr.fn)
            self.signatures.check_arity(fn, 2, expr.fn.span)
            if expr.kind == "reduce":
                node = self._add(name, ir.Reduce(fn=fn, input=src.operand, options=options, span=span))
                return Typed(self._ref(node), ir.VALUE)
            self._need_keyed(src, expr)
            node = self._add(name, ir.ReduceByKey(fn=fn, input=src.operand, options=options, span=span))
            return Typed(self._ref(node), ir.COLLECTION, keyed=True, order="key")
        return self._elementwise(expr, src, name, options, span)

    def _need_keyed(self, src: Typed, expr: ast.Dataflow) -> None:
        if src.keyed is False:
            self.fail(f"`{expr.kind}` needs (key, value) records, and its input is not keyed", expr.input.span,
                      "make pairs first, e.g. `map m.to_pair over xs`", code="not-keyed")

    def _elementwise(self, expr: ast.Dataflow, src: Typed, name: str, options, span) -> Typed:
        if expr.kind == "map_values":
            self._need_keyed(src, expr)
        fn, pool, method = None, None, None
        head = self.region.lookup(expr.fn.parts[0])
        if head is not None and head.shape == ir.ACTOR:
            if not head.pool:
                self.fail(f"`{expr.fn.parts[0]}` is a single actor; a stage is served by an actor pool",
                          expr.fn.span,
                          f"declare `actor pool {expr.fn.parts[0]} = ... x N`, or pass it as a handle with "
                          f"`with server = {expr.fn.parts[0]}`", code="single-actor-as-pool")
            if len(expr.fn.parts) != 2:
                self.fail("a pool method is `pool.method`", expr.fn.span, code="bad-method-call")
            method = expr.fn.parts[1]
            self.signatures.check_method(self.signatures.class_info(head.actor_class), head.actor_class, method,
                                         expr.fn.span)
            pool = self._ref(head.node)
        elif head is not None and head.kind != "broken":
            self.fail(f"`{expr.fn.parts[0]}` is a {head.kind}, not a function", expr.fn.span,
                      "name a Python function as `module.function`", code="wrong-kind")
        elif head is not None:
            raise Abort
        else:
            fn = self.signatures.function(expr.fn)
        bindings: dict[str, ir.Lit | ir.NodeRef] = {}
        handles: list[Binding] = []
        for kw in expr.bindings:
            key = kw.name.text
            if key in bindings:
                self.error(f"`{key}` is bound twice", kw.name.span, code="duplicate-binding")
            if key == "partition" and expr.kind == "map_batches":
                self.error("`partition` is passed by pipec to map_batches functions that accept it",
                           kw.name.span, "pick another name", code="reserved-name")
            typed = self._expr(kw.value, f"{name}/{key}")
            if typed.shape == ir.COLLECTION:
                self._shape_error(typed, ir.VALUE, kw.value,
                                  "a collection cannot be broadcast to every partition; "
                                  "`collect(...)` it into a value, or `join` the two collections")
            if typed.shape == ir.ACTOR:
                if typed.actor is not None and typed.actor.pool:
                    self.fail("an actor pool cannot be passed as a handle", kw.value.span,
                              "pass a single actor, or use the pool as `map_batches pool.method over xs`",
                              code="pool-as-handle")
                handles.append(typed.actor)
            bindings[key] = typed.operand
        batch = None
        if expr.batch is not None:
            batch = expr.batch.text
            if expr.kind != "map_batches":
                self.fail(f"`as {batch}` belongs to `map_batches`; `{expr.kind}` works on one element at a time",
                          expr.batch.span, f"use `map_batches` to get the partition as {batch}",
                          code="misplaced-batch-form")
            if batch not in BATCH_FORMATS:
                self.fail(f"unknown batch form `{batch}`", expr.batch.span,
                          did_you_mean(batch, BATCH_FORMATS) or "use pandas, arrow or numpy",
                          code="unknown-batch-form")
        if fn is not None:
            self.signatures.check_arity(fn, 1, expr.fn.span, keywords=tuple(bindings),
                                        optional=("partition",) if expr.kind == "map_batches" else (), bindable=True)
        node = self._add(name, ir.Elementwise(kind=expr.kind, fn=fn, pool=pool, method=method, input=src.operand,
                                              bindings=bindings, options=options, span=span, batch=batch))
        if pool is not None:
            self._after_actor_use(pool.node, node)
        for actor in handles:
            self._handle_stage(actor, node)
        keyed = True if expr.kind == "map_values" else (src.keyed if expr.kind == "filter" else None)
        order = src.order if expr.kind in ("filter", "map_values") else None
        return Typed(self._ref(node), ir.COLLECTION, keyed=keyed, order=order)

    def _handle_stage(self, actor: Binding, node: str) -> None:
        self._after_actor_use(actor.node, node)
        self.handle_stages.setdefault(actor.node, []).append(node)
        # No warning that a retried task calls the actor again: calls through handles carry
        # idempotency keys, so a task run again applies nothing twice (see the README).

    # ---- shapes

    def _shape_error(self, typed: Typed, wanted: str, expr, hint: str | None = None):
        got = typed.shape
        article = {"collection": "a collection", "value": "a value", "actor": "an actor",
                   "effect": "a sink"}
        self.fail(f"expected {article[wanted]}, found {article.get(got, got)}", expr.span, hint, code="wrong-kind")

    # ---- after the whole body

    def _finish(self) -> None:
        lints.unused_aliases(self.signatures.aliases, self.signatures.used_aliases, self.report)
        # Statements that failed are missing from the graph, so a lint would see false gaps.
        if not self.report.has_errors:
            lints.unused_results(self.ir, self.loops, self.name_spans, self.report)
            lints.mark_schedule_dependent(self.ir, self.sinks, self.name_spans, self.report)


# ---- helpers ------------------------------------------------------------------------------


def _template_fields(raw: str) -> list[tuple[str, int]]:
    """The ``{name}`` fields of a string literal's source text ``raw`` (quotes included),
    each with its offset in ``raw``; ``{{`` and ``}}`` are braces. An unclosed field comes
    back with the text after its ``{`` (never an identifier)."""
    out, i = [], 1
    while i < len(raw) - 1:
        ch = raw[i]
        if ch in "{}" and raw[i + 1:i + 2] == ch:
            i += 2
            continue
        if ch == "{":
            end = raw.find("}", i)
            if end < 0 or end >= len(raw) - 1:
                out.append(("{" + raw[i + 1:-1], i))
                break
            out.append((raw[i + 1:end], i))
            i = end + 1
            continue
        if ch == "}":
            out.append(("}", i))
        i += 1
    return out


def _a(word: str) -> str:
    """``word`` with its indefinite article: "an int", "a str"."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"

