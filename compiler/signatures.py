"""Calls into the user's Python modules, checked against what their source defines.

A ``.pipe`` file names Python code through ``use`` aliases (``lr.gradient``,
``lr.ParameterServer``). :class:`Signatures` resolves those names, reports a module that
is missing or does not parse, a function or class it lacks, an actor method the class
lacks, and a call whose arguments do not fit the parameters. It reads the modules as
source through :mod:`pipec.compiler.modules`, never importing them, so static commands
run no user code.
"""

from __future__ import annotations


from pipec.dsl import ast
from pipec.dsl.diagnostics import did_you_mean
from pipec.dsl.source import Span
from pipec.compiler import ir
from pipec.compiler.modules import ClassInfo, FunctionInfo, ModuleIndex, ModuleInfo, ModuleSyntaxError
from pipec.compiler.reporter import Abort, Reporter


class Signatures:
    """The ``use`` aliases of one file and the checks of every call through them.

    Takes the module ``index`` to read from, the ``report`` to record problems in, and the
    ``.pipe`` file's ``path`` (for hints). A check that fails records its error and raises
    :class:`~pipec.compiler.reporter.Abort`.
    """

    def __init__(self, index: ModuleIndex, report: Reporter, path: str):
        self.index = index
        self.report = report
        self.path = path
        self.aliases: dict[str, tuple[str, Span]] = {}  # alias -> (dotted module, the `use`)
        self.used_aliases: set[str] = set()
        self.broken_modules: set[str] = set()  # missing or unreadable, already reported
        self._refs: dict[tuple[str, str], ir.FnRef] = {}  # one frozen FnRef per function named

    # ---- modules

    def use(self, use: ast.Use) -> None:
        """Declare the alias of a ``use`` statement; report a repeated alias and a module
        that cannot be found or read."""
        alias = use.alias.text
        if alias in self.aliases:
            self.report.error(f"alias `{alias}` is already defined", use.alias.span,
                              f"the first `use ... as {alias}` is at line {self.aliases[alias][1].line}",
                              code="duplicate-alias")
            return
        self.aliases[alias] = (use.path.text, use.span)
        self.module(use.path.text, use.path.span)

    def module(self, name: str, span: Span) -> ModuleInfo | None:
        """What the dotted module ``name`` defines, or None when it is missing or has a
        Python syntax error; either is reported once, at ``span`` of its first use."""
        try:
            found = self.index.find(name)
        except ModuleSyntaxError as exc:
            if name not in self.broken_modules:
                self.broken_modules.add(name)
                where = f"{exc.path}:{exc.err.lineno}" if exc.err.lineno else str(exc.path)
                self.report.error(f"module `{name}` has a Python syntax error: {exc.err.msg}", span,
                                  f"see {where}", code="module-syntax-error")
            return None
        if found is None and name not in self.broken_modules:
            self.broken_modules.add(name)  # said once, at its first use
            self.report.error(f"cannot find module `{name}`", span, self._missing_module_hint(name),
                              code="module-not-found")
        return found

    def _missing_module_hint(self, name: str) -> str:
        head = name.split(".")[0]
        if head not in self.aliases and (alias := did_you_mean(head, self.aliases)):
            return alias
        parent, _, last = name.rpartition(".")
        info = self._find_quietly(parent) if parent else None
        if info is not None and last in info.names():
            return f"`{last}` is defined in module `{parent}`; it is not a module"
        return (f"looked for {name.replace('.', '/')}.py next to {self.path} "
                f"and in the folders above it")

    def _find_quietly(self, module: str) -> ModuleInfo | None:
        """What ``module`` defines, or None if it is missing or broken (reported elsewhere)."""
        try:
            return self.index.find(module)
        except ModuleSyntaxError:
            return None

    # ---- functions and classes

    def function(self, path: ast.Dotted, what: str = "function") -> ir.FnRef:
        """The Python function or class a dotted ``path`` names (``m.f`` through the alias
        ``m``, or a full dotted path); ``what`` words the error when it names nothing."""
        parts = list(path.parts)
        if parts[0] in self.aliases:
            self.used_aliases.add(parts[0])
            module_parts = self.aliases[parts[0]][0].split(".")
            if len(parts) == 1:
                self.report.fail(f"`{parts[0]}` is a module alias; name a {what} in it", path.span,
                                 f"e.g. `{parts[0]}.name`", code="wrong-kind")
            parts = module_parts + parts[1:]
        elif len(parts) == 1:
            found_in = [f"{alias}.{parts[0]}" for alias, (module, _) in self.aliases.items()
                        if (info := self._find_quietly(module)) is not None and parts[0] in info.names()]
            self.report.fail(f"`{parts[0]}` is not a {what}", path.span,
                             (f"did you mean `{found_in[0]}`?" if found_in else None)
                             or did_you_mean(parts[0], self.aliases)
                             or "name Python functions by module: `use mymodule as m` then `m.f`", code="wrong-kind")
        module, attr = ".".join(parts[:-1]), parts[-1]
        info = self.module(module, path.span)
        if info is None:
            raise Abort
        if not info.has(attr):
            hint = did_you_mean(attr, info.names())
            self.report.fail(f"module `{module}` has no {what} `{attr}`", path.span,
                             hint or f"{info.path} defines: {', '.join(sorted(info.names())[:8]) or 'nothing'}",
                             code="missing-attribute")
        ref = self._refs.get((module, attr))
        if ref is None:
            ref = self._refs[module, attr] = ir.FnRef(module=module, attr=attr)
        return ref

    def class_info(self, ref: ir.FnRef) -> ClassInfo | None:
        """What the source says about the class ``ref`` names, or None if it is no class there."""
        info = self.index.find(ref.module)
        return info.classes.get(ref.attr) if info else None

    # ---- calls

    def check_method(self, cls_info: ClassInfo | None, ref: ir.FnRef, method: str, span: Span,
                     call: ast.Call | None = None) -> None:
        """Check that the actor class ``ref`` (read as ``cls_info``) has a public ``method``
        and, given the ``call``, that its arguments fit. Silent when the class's methods are
        not all known (a base class, ``__getattr__``)."""
        if cls_info is None or not cls_info.complete:
            return
        fn = cls_info.methods.get(method)
        if fn is None or method.startswith("_"):
            public = [m for m in cls_info.methods if not m.startswith("_")]
            self.report.fail(f"actor class `{ref.attr}` has no method `{method}`", span,
                             did_you_mean(method, public) or f"its methods: {', '.join(public) or 'none'}",
                             code="unknown-method")
        if call is not None:
            self._check_call_shape(fn, call, drop_self=True, label=f"{ref.attr}.{method}")

    def check_signature(self, ref: ir.FnRef, call: ast.Call, extra: tuple[str, ...] = ()) -> None:
        """Check the arguments of ``call`` against the function or class constructor ``ref``;
        ``extra`` are keywords pipec passes itself (a sharded source's ``partition``), which
        the call must not give and which count as given."""
        info = self.index.find(ref.module)
        if info is None or info.path is None:
            return
        if ref.attr in info.classes:
            cls = info.classes[ref.attr]
            if cls.init is not None and cls.complete:
                self._check_call_shape(cls.init, call, drop_self=True, label=ref.attr)
        elif ref.attr in info.functions:
            self._check_call_shape(info.functions[ref.attr], call, label=ref.attr, extra=extra)

    def _check_call_shape(self, fn: FunctionInfo, call: ast.Call, drop_self=False, label="", extra=()) -> None:
        params = fn.params[1:] if drop_self else fn.params
        for kw in call.kwargs:
            if not fn.accepts_keyword(kw.name.text) or kw.name.text in extra:
                self.report.fail(f"`{label}` has no parameter `{kw.name.text}`", kw.name.span,
                                 did_you_mean(kw.name.text, params), code="unknown-keyword")
        if len(call.args) > len(params) and not fn.var_positional:
            self.report.fail(f"`{label}` takes {len(params)} positional argument{'s' if len(params) != 1 else ''}, "
                             f"got {len(call.args)}", call.span, code="wrong-argument-count")
        missing = fn.missing(len(call.args), {k.name.text for k in call.kwargs} | set(extra), skip=int(drop_self))
        if missing:
            self.report.fail(f"`{label}` needs argument {', '.join(f'`{p}`' for p in missing)}", call.span,
                             f"pass it as `{missing[0]} = ...`", code="missing-argument")

    def check_arity(self, ref: ir.FnRef, positional: int, span: Span, keywords=(), optional=(),
                    bindable: bool = False) -> None:
        """Check that the function ``ref`` can be called by an operation with ``positional``
        arguments and the ``keywords`` of ``with k = ...``; ``optional`` keywords may be
        passed by pipec; ``bindable`` adds the ``with`` form to the hint for a missing one."""
        info = self.index.find(ref.module)
        if info is None or info.path is None or ref.attr not in info.functions:
            return
        fn = info.functions[ref.attr]
        for k in keywords:
            if not fn.accepts_keyword(k):
                self.report.fail(f"`{ref.attr}` has no parameter `{k}` for `with {k} = ...`", span,
                                 did_you_mean(k, fn.params[positional:]), code="unknown-keyword")
        if len(fn.params) < positional and not fn.var_positional:
            self.report.fail(f"`{ref.attr}` takes {len(fn.params)} argument{'s' if len(fn.params) != 1 else ''}; "
                             f"it is called with {positional}", span, code="stage-function-arity")
        missing = fn.missing(positional, set(keywords) | set(optional))
        if missing:
            self.report.fail(f"`{ref.attr}` is called with {positional} argument{'s' if positional != 1 else ''} "
                             f"and needs {', '.join(f'`{p}`' for p in missing)} too", span,
                             f"give `{missing[0]}` a default"
                             + (f", or bind it: `with {missing[0]} = ...`" if bindable else ""),
                             code="stage-function-arity")
