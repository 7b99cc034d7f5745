"""Parse `.pipe` text into the AST of :mod:`pipec.dsl.ast`.

The grammar is ``grammar/pipe.lark``. Lark runs in LALR mode and each rule's AST node is
built as the parser reduces it (:func:`_install`): no parse tree is made and walked
again, which halves the time of a 10,000-stage file. Every failure becomes a
:class:`pipec.dsl.diagnostics.PipeSyntaxError` with a position.
"""

from __future__ import annotations

import ast as pyast
import re
import threading
from functools import lru_cache

from lark import Lark, Token
from lark import __version__ as lark_version
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from pipec.dsl import ast
from pipec.dsl.diagnostics import ERROR, Diagnostic, PipeSyntaxError
from pipec.dsl.lalr import Fallback, driver
from pipec.dsl.source import SourceFile, Span, fast_constructor, make_span
from pipec.grammar import grammar_text

# Deeper nesting than this is refused with a located error instead of exhausting the
# Python stack in later passes (all of them recurse over expressions).
MAX_NESTING = 200

# What one parse collects and reads, per thread: the comments found, the text being
# parsed, how deeply each node built so far nests.
_parsing = threading.local()


def _span(meta) -> Span:
    return make_span(meta.line, meta.column, meta.end_line, meta.end_column, meta.start_pos, meta.end_pos)


def _tok_span(tok: Token) -> Span:
    return make_span(tok.line, tok.column, tok.end_line, tok.end_column, tok.start_pos, tok.end_pos)


# The nodes made most often, made without the dataclass's __init__ (see fast_constructor).
_make_name, _make_dotted, _make_ref = (fast_constructor(c) for c in (ast.Name, ast.Dotted, ast.Ref))


def _name(tok: Token) -> ast.Name:
    return _make_name(str(tok), _tok_span(tok))


def _split_options(items, kinds):
    return tuple(i for i in items if isinstance(i, ast.Option) and i.kind in kinds)


class _Refused(Exception):
    """A construct the grammar accepts but pipec cannot take (too deep, a huge number)."""

    def __init__(self, message: str, span: Span, hint: str | None = None, *, code: str):
        self.message, self.span, self.hint, self.code = message, span, hint, code


class _ToAst:
    """Lark rule -> AST node. One method per grammar rule or alias: it gets the rule's
    position (``meta``: line, column, start_pos, end_line, end_column, end_pos) and the
    rule's children, already built (tokens, AST nodes, None for an absent optional part).

    It also measures how deeply expressions and loops nest (later passes recurse over
    them) and stops at MAX_NESTING with the position of the offending node.
    """

    @property
    def _depth(self) -> dict[int, int]:
        return _parsing.depth

    def _nest(self, node, *children):
        depth = 1 + max((self._depth.get(id(c), 0) for c in children), default=0)
        if depth > MAX_NESTING:
            span = node.span
            raise _Refused(f"nested too deeply (more than {MAX_NESTING} levels)",
                           Span(span.line, span.column, span.line, span.column + 1, span.start, span.start + 1),
                           "split the expression into named stages or values", code="too-deep")
        self._depth[id(node)] = depth
        return node

    def start(self, meta, *items):
        *uses, pipeline = items
        return ast.Module(tuple(uses), pipeline, (), _span(meta))

    def use(self, meta, path, alias):
        return ast.Use(path, _name(alias), _span(meta))

    def pipeline(self, meta, name, params, *body):
        return ast.Pipeline(_name(name), params or (), tuple(body), _span(meta))

    def params(self, meta, *params):
        return tuple(params)

    def param(self, meta, name, type_, default):
        return ast.Param(_name(name), _name(type_), default, _span(meta))

    # ---- statements

    def defaults_stmt(self, meta, *options):
        return ast.Defaults(tuple(options), _span(meta))

    def source_stmt(self, meta, name, call, *rest):
        sharded = bool(rest) and isinstance(rest[0], Token) and rest[0].type == "SHARDED"
        if sharded:
            rest = rest[1:]
        partitions, *options = rest
        return ast.Source(_name(name), call, sharded, partitions, tuple(options), _span(meta))

    def stage_stmt(self, meta, name, expr, *options):
        return ast.Stage(_name(name), expr, tuple(options), _span(meta))

    def value_stmt(self, meta, name, expr):
        return ast.Value(_name(name), expr, _span(meta))

    def var_stmt(self, meta, name, expr):
        return ast.Var(_name(name), expr, _span(meta))

    def rebind_stmt(self, meta, name, expr):
        return ast.Rebind(_name(name), expr, _span(meta))

    def actor_stmt(self, meta, *items):
        pool = isinstance(items[0], Token) and items[0].type == "POOL"
        if pool:
            items = items[1:]
        name, ctor, size, block = items
        return ast.Actor(_name(name), ctor, pool, size, block or (), _span(meta))

    def actor_block(self, meta, *options):
        return tuple(options)

    def call_stmt(self, meta, call):
        return ast.CallStmt(call, _span(meta))

    def repeat_stmt(self, meta, count, index, until, *body):
        node = ast.Repeat(count, _name(index) if index else None, until, tuple(body), _span(meta))
        # The expressions of the body count too: later passes recurse through loop and
        # expression alike, so 150 loops around a 150-deep expression are 300 levels.
        parts = [getattr(stmt, slot) for stmt in body for slot in stmt.__slots__]
        return self._nest(node, count, until, *body, *parts)

    def sink_stmt(self, meta, name, expr, fmt, target):
        return ast.Sink(_name(name), expr, _name(fmt) if fmt else None, target, _span(meta))

    def when_stmt(self, meta, cond, *body):
        node = ast.When(cond, tuple(body), _span(meta))
        parts = [getattr(stmt, slot) for stmt in body for slot in stmt.__slots__]
        return self._nest(node, cond, *body, *parts)

    # ---- options

    def restarts_opt(self, meta, n):
        return ast.Option("restarts", self.int(meta, n), _span(meta))

    def checkpoint_opt(self, meta, n):
        return ast.Option("checkpoint", self.int(meta, n), _span(meta))

    def idempotent_opt(self, meta, *names):
        return ast.Option("idempotent", tuple(_name(n) for n in names), _span(meta))

    def retries_opt(self, meta, n):
        return ast.Option("retries", self.int(meta, n), _span(meta))

    def timeout_opt(self, meta, n):
        return ast.Option("timeout", n, _span(meta))

    def effectful_opt(self, meta):
        return ast.Option("effectful", None, _span(meta))

    def resources_opt(self, meta, *resources):
        return ast.Option("resources", tuple(resources), _span(meta))

    def resource(self, meta, name, value):
        return (_name(name), value)

    # ---- expressions

    def elementwise(self, meta, kind, fn, input_, batch, *bindings):
        bindings = tuple(b for b in bindings if b is not None)
        node = ast.Dataflow(str(kind), fn, input_, bindings, _span(meta), _name(batch) if batch else None)
        return self._nest(node, input_, *(b.value for b in bindings))

    def reducer(self, meta, kind, fn, input_):
        return self._nest(ast.Dataflow(str(kind), fn, input_, (), _span(meta)), input_)

    def group_by_key(self, meta, input_):
        return self._nest(ast.Dataflow("group_by_key", None, input_, (), _span(meta)), input_)

    def binding(self, meta, name, value):
        return ast.Keyword(_name(name), value, _span(meta))

    kwarg = binding

    def _bin(op):
        def method(self, meta, left, right):
            return self._nest(ast.BinOp(op, left, right, _span(meta)), left, right)
        return method

    or_op, and_op = _bin("or"), _bin("and")
    add, sub, mul, div, floordiv, mod, pow = (
        _bin("+"), _bin("-"), _bin("*"), _bin("/"), _bin("//"), _bin("%"), _bin("**"))

    def compare(self, meta, left, op, right):
        return self._nest(ast.BinOp(str(op), left, right, _span(meta)), left, right)

    def not_op(self, meta, operand):
        return self._nest(ast.UnaryOp("not", operand, _span(meta)), operand)

    def neg(self, meta, operand):
        return self._nest(ast.UnaryOp("-", operand, _span(meta)), operand)

    def pos(self, meta, operand):
        return self._nest(ast.UnaryOp("+", operand, _span(meta)), operand)

    def ref(self, meta, path):
        return _make_ref(path, path.span)

    def call(self, meta, func, *args):
        args = [a for a in args if a is not None]
        named = next((i for i, a in enumerate(args) if isinstance(a, ast.Keyword)), len(args))
        late = next((a for a in args[named:] if not isinstance(a, ast.Keyword)), None)
        if late is not None:  # Python's rule, so a call reads the same in both languages
            raise _Refused("a positional argument after a keyword argument", late.span,
                           f"put it before `{args[named].name.text} = ...`, or name it too", code="argument-order")
        kwargs = tuple(a for a in args if isinstance(a, ast.Keyword))
        positional = tuple(a for a in args if not isinstance(a, ast.Keyword))
        node = ast.Call(func, positional, kwargs, _span(meta))
        return self._nest(node, *positional, *(k.value for k in kwargs))

    def paren(self, meta, inner):
        return self._nest(ast.Paren(inner, _span(meta)), inner)

    def list_expr(self, meta, *items):
        items = tuple(i for i in items if i is not None)
        return self._nest(ast.ListExpr(items, _span(meta)), *items)

    def dotted(self, meta, *names):
        return _make_dotted(tuple([str(n) for n in names]), _span(meta))

    # ---- literals

    def int(self, meta, tok):
        try:
            value = int(str(tok))
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            digits = len(str(tok).replace("_", ""))
            raise _Refused(f"integer literal is too long ({digits} digits)", _tok_span(tok),
                           "pass a number this large from Python, not as a literal", code="literal-too-long") from None
        return ast.Literal(value, str(tok), _tok_span(tok))

    def float(self, meta, tok):
        return ast.Literal(float(str(tok)), str(tok), _tok_span(tok))

    def string(self, meta, tok):
        try:
            value = pyast.literal_eval(str(tok))
        except (ValueError, SyntaxError):
            # An escape Python rejects (e.g. "\N{bogus}"): keep the text, the checker
            # never sees a half-decoded string.
            value = str(tok)[1:-1]
        return ast.Literal(value, str(tok), _tok_span(tok))

    def true(self, meta):
        return ast.Literal(True, "true", _span(meta))

    def false(self, meta):
        return ast.Literal(False, "false", _span(meta))

    def none(self, meta):
        return ast.Literal(None, "none", _span(meta))


def _keep_comment(tok: Token) -> None:
    _parsing.found.append(ast.Comment(str(tok), _tok_span(tok)))


class _KeywordOrName:
    """A post-lexer: a keyword directly followed by `=` is a name being bound.

    After a stage both an option (`retries 3`) and the next statement may follow, after an
    actor its pool size (`x 2`), after `actor` the word `pool`: there the contextual lexer
    reads `retries` as the keyword even in `retries = count(xs)`, the rebind of a var
    called `retries`. None of these keywords is ever followed by `=`, so looking at the
    text right after the word settles it without a second token of lookahead (which
    LALR(1) does not have)."""

    KEYWORDS = frozenset({"RETRIES", "TIMEOUT", "EFFECTFUL", "RESOURCES", "X", "WITH", "POOL"})
    BOUND = re.compile(r"[ \t\r\n]*=(?!=)")
    always_accept = ()

    def process(self, stream):
        text = _parsing.text
        for tok in stream:
            yield self.rename(text, tok)

    @classmethod
    def rename(cls, text: str, tok: Token) -> Token:
        """``tok`` of ``text``, or a NAME in its place if it is a keyword being bound."""
        if tok.type in cls.KEYWORDS and cls.BOUND.match(text, tok.end_pos):
            return Token.new_borrow_pos("NAME", tok.value, tok)
        return tok


class _Held:
    """A rule's result on the LALR parser's value stack, with the rule's position (what
    lark's ``propagate_positions`` would give its tree: from the first to the last token
    the rule matched, keywords and brackets included) and the last token it matched."""

    __slots__ = ("value", "line", "column", "start_pos", "end_line", "end_column", "end_pos", "last")


def _reducer(rule, method):
    """The parser's callback for ``rule``: it gets the values of the symbols the rule
    matched (tokens and _Held), and keeps what lark's tree builder would keep (no
    filtered-out tokens, the items of inlined ``_rules``, None for each absent ``[...]``
    with maybe_placeholders) for ``method``. An inlined rule's value is that list; a
    ``?rule`` left with one child is that child."""
    expansion, options = rule.expansion, rule.options
    if options.empty_indices:  # where absent optional parts were: how many Nones go before each symbol
        nones_at = [len(ones) for ones in "".join(str(int(b)) for b in options.empty_indices).split("0")]
    else:
        nones_at = [0] * (len(expansion) + 1)
    include, pending = [], 0
    for i, sym in enumerate(expansion):
        pending += nones_at[i]
        if options.keep_all_tokens or not (sym.is_term and sym.filter_out):
            include.append((i, not sym.is_term and sym.name.startswith("_"), pending))
            pending = 0
    trailing = pending + nones_at[len(expansion)]
    inline = rule.origin.name.startswith("_")
    single = bool(options.expand1 and not rule.alias)
    # A `?rule` of one rule symbol passes that rule's result on: same value, same place.
    passing = single and len(expansion) == 1 and len(include) == 1 and not include[0][1] and not trailing
    name = rule.alias or rule.origin.name

    # An inlined repetition (`__pipeline_star_1: __pipeline_star_1 stmt`) grows the list
    # of the one before it in place: copying it at each step is quadratic in the items.
    grow = inline and bool(include) and include[0][0] == 0 and include[0][1] and include[0][2] == 0 \
        and expansion[0].name == rule.origin.name

    def reduce(children):
        if passing and type(children[0]) is _Held:
            return children[0]
        held = _Held()
        held.line = held.column = held.start_pos = held.end_line = held.end_column = held.end_pos = held.last = None
        for c in children:  # a token or a _Held, both with positions (None if it matched nothing)
            if c.line is not None:
                held.line, held.column, held.start_pos = c.line, c.column, c.start_pos
                break
        for c in reversed(children):
            if c.line is not None:
                held.end_line, held.end_column, held.end_pos = c.end_line, c.end_column, c.end_pos
                held.last = c.last if type(c) is _Held else c
                break
        values = []
        parts = include
        if grow and type(children[0]) is _Held:  # the first item is the list so far
            values, parts = children[0].value, include[1:]
        for i, expand, nones in parts:
            if nones:
                values += [None] * nones
            c = children[i]
            if type(c) is not _Held:
                values.append(c)
            elif expand:
                values += c.value
            else:
                values.append(c.value)
        if trailing:
            values += [None] * trailing
        if inline:
            held.value = values
        elif single and len(values) == 1:
            held.value = values[0]
        elif method is None:
            raise AttributeError(f"the parser has no method for grammar rule `{name}`")
        else:
            held.value = method(held, *values)
        return held
    # The lean driver (pipec.dsl.lalr) skips the call where the rule passes a _Held on,
    # and calls the rule's reducer written out (made when it first meets the rule).
    reduce.passes_on = _Held if passing else None
    reduce.written_out = lambda: _written_out(rule, method, include, trailing, inline, single, passing, grow)
    return reduce


def _written_out(rule, method, include, trailing, inline, single, passing, grow):
    """The reducer of :func:`_reducer` for ``rule``, written out for its symbols: which
    child is a token (always with a position) and which a _Held (maybe without, if it
    matched nothing) is known here, so the loops over the children become a few
    assignments. It gives what the general one gives, for the lean driver's hot loop."""
    expansion = rule.expansion
    size = len(expansion)
    terminal = [sym.is_term for sym in expansion]
    code = ["def reduce(children):"]
    if passing:
        code += ["    if type(children[0]) is _Held:", "        return children[0]"]
    if size:
        code.append(f"    {''.join(f'c{i}, ' for i in range(size))}= children")
    code.append("    held = new(_Held)")

    def first(order, assign):
        """``assign(i)`` for the first child in ``order`` with a position, else None."""
        lines, opener = [], "if"
        for i in order:
            if terminal[i]:
                lines += (["    else:"] + ["    " + a for a in assign(i)]) if lines else assign(i)
                return lines
            lines += [f"    {opener} c{i}.line is not None:"] + ["    " + a for a in assign(i)]
            opener = "elif"
        none = assign(None)
        return (lines + ["    else:"] + ["    " + a for a in none]) if lines else none

    def start(i):
        if i is None:
            return ["    held.line = held.column = held.start_pos = None"]
        return [f"    held.line, held.column, held.start_pos = c{i}.line, c{i}.column, c{i}.start_pos"]

    def end(i):
        if i is None:
            return ["    held.end_line = held.end_column = held.end_pos = held.last = None"]
        last = f"c{i}" if terminal[i] else f"c{i}.last"
        return [f"    held.end_line, held.end_column, held.end_pos = c{i}.end_line, c{i}.end_column, c{i}.end_pos",
                f"    held.last = {last}"]

    code += first(range(size), start)
    code += first(reversed(range(size)), end)
    items, expands = [], False
    parts = include[1:] if grow else include
    for i, expand, nones in parts:
        items += ["None"] * nones
        if terminal[i]:
            items.append(f"c{i}")
        elif expand:
            items.append(f"*c{i}.value")
            expands = True
        else:
            items.append(f"c{i}.value")
    items += ["None"] * trailing
    listed = "[" + ", ".join(items) + "]"
    if grow:
        code += ["    values = c0.value", f"    values += {listed}"]
    else:
        code.append(f"    values = {listed}")
    if inline:
        code.append("    held.value = values")
    else:
        if single:
            code += ["    if len(values) == 1:", "        held.value = values[0]", "        return held"]
        if method is None:
            code.append(f"    raise AttributeError('the parser has no method for grammar rule `{rule.alias or rule.origin.name}`')")
        else:
            code.append("    held.value = method(held, *values)")
    code.append("    return held")
    scope = {"_Held": _Held, "new": object.__new__, "method": method}
    exec("\n".join(code) + "\n", scope)
    return scope["reduce"]


def _install(lark: Lark) -> Lark:
    """Make ``lark``'s LALR parser build the AST while it parses (see the module
    docstring): each rule's callback becomes :func:`_reducer` of its _ToAst method."""
    builder = _ToAst()
    callbacks = lark._callbacks  # the one dict the LALR parser reads its callbacks from
    if lark.parser.parser.parser.callbacks is not callbacks:
        raise RuntimeError(f"lark {lark_version} keeps its parser's callbacks elsewhere; pipec needs updating")
    for rule in lark.rules:
        callbacks[rule] = _reducer(rule, getattr(builder, rule.alias or rule.origin.name, None))
    return lark


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return _install(Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        lexer_callbacks={"COMMENT": _keep_comment},
        postlex=_KeywordOrName(),
        cache=True,  # grammar analysis cached in the temp folder: ~10 ms instead of ~130 ms
    ))


@lru_cache(maxsize=1)
def _lean():
    """The lean loop, or None when this Lark keeps its tables where the loop does not look
    (a newer release): Lark's own loop then parses every file, only slower."""
    try:
        return driver(_parser(), _KeywordOrName.rename, _KeywordOrName.KEYWORDS)
    except (AttributeError, KeyError, TypeError, RuntimeError):
        return None


def parse(source: SourceFile) -> ast.Module:
    """Parse a whole file. Raises :class:`PipeSyntaxError` with the position of the problem."""
    _parsing.found = []
    _parsing.text = source.text
    _parsing.depth = {}
    try:
        lean, module = _lean(), None
        if lean is not None:
            try:  # the lean loop over Lark's tables (see pipec.dsl.lalr), twice as fast
                module = lean(source.text).value
            except Fallback:  # not valid: Lark's own loop finds the error and says it
                _parsing.found, _parsing.depth = [], {}
        if module is None:
            module = _parser().parse(source.text).value
    except UnexpectedInput as exc:
        raise PipeSyntaxError([_describe(exc, source)], source) from None
    except _Refused as exc:
        found = Diagnostic(ERROR, exc.message, exc.span, exc.hint, source.path, exc.code)
        raise PipeSyntaxError([found], source) from None
    finally:
        comments, _parsing.found, _parsing.depth = tuple(_parsing.found), [], {}
    return ast.Module(module.uses, module.pipeline, comments, module.span)


def parse_text(text: str, path: str = "<input>") -> ast.Module:
    """Parse ``text`` as if it were the file ``path``."""
    return parse(SourceFile(path, text))


# ---- errors -----------------------------------------------------------------------------

_FRIENDLY = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "COMPARE": "a comparison",
    "ELEMENTWISE": "`map`, `flat_map`, `filter`, `map_batches` or `map_values`",
    "REDUCER": "`reduce` or `reduce_by_key`",
    "SHARDED": "`sharded`",
    "POOL": "`pool`",
    "$END": "the end of the file",
}

# Keywords that start an expression: used where a name was meant, they read as keywords.
_EXPRESSION_KEYWORDS = ("ELEMENTWISE", "REDUCER", "GROUP_BY_KEY", "NOT")

# The words that open a statement (the compiler refuses a var called like one, since
# `value = ...` is a `value` statement missing its name), and their terminals.
STATEMENT_KEYWORDS = ("source", "stage", "value", "var", "actor", "repeat", "sink", "defaults", "when")
_STATEMENT_TERMINALS = frozenset(word.upper() for word in STATEMENT_KEYWORDS)

_STATEMENT_HINT = ("a statement starts with " + ", ".join(f"`{word}`" for word in STATEMENT_KEYWORDS)
                   + ", a name to rebind, or an actor call")


def _terminal_text(name: str) -> str:
    if name in _FRIENDLY:
        return _FRIENDLY[name]
    term = next((t for t in _parser().terminals if t.name == name), None)
    if term is not None and term.pattern.type == "str":
        return f"`{term.pattern.value}`"
    return name.lower()


@lru_cache(maxsize=1)
def _keywords() -> frozenset[str]:
    """Every keyword of the grammar (``stage``, ``over``, ``map``...)."""
    words = {t.pattern.value for t in _parser().terminals if t.pattern.type == "str"}
    words |= {w for t in _parser().terminals if t.name in ("ELEMENTWISE", "REDUCER")
              for w in re.findall(r"[a-z_]+", t.pattern.value)}
    return frozenset(w for w in words if w.isidentifier() and w != "x")  # `x` is a fine name too


def _expected(names) -> str:
    shown = sorted({_terminal_text(n) for n in names})
    if len(shown) > 8:
        shown = shown[:8] + ["..."]
    return ", ".join(shown)


def _token_text(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    text = str(tok)
    return f"`{text[:40]}`" + ("..." if len(text) > 40 else "")


def _describe(exc: UnexpectedInput, source: SourceFile) -> Diagnostic:
    text = source.text
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        char = text[pos] if pos < len(text) else ""
        span = _point(source, pos)
        if char in "\"'":
            return Diagnostic(ERROR, "unterminated string", span,
                              f"close the string with {char} on the same line", source.path, "unterminated-string")
        shown = repr(char)[1:-1] if not char.isprintable() else char
        return Diagnostic(ERROR, f"unexpected character `{shown}`", span,
                          f"expected {_expected(exc.allowed)}" if exc.allowed else None, source.path,
                          "unexpected-character")
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        pos = len(text.rstrip())
        span = _point(source, pos)
        opener = _unclosed(text)
        hint = (f"the `{opener[0]}` at line {opener[1]}, column {opener[2]} is never closed"
                if opener else None)
        expected = exc.expected if isinstance(exc, UnexpectedEOF) else exc.accepts or exc.expected
        if _only_comments(text):
            what = "the file is empty" if not text.strip() else "the file holds only comments"
            return Diagnostic(ERROR, what, span, "a .pipe file holds one `pipeline name(...) { ... }`",
                              source.path, "empty-file")
        return Diagnostic(ERROR, f"unexpected end of file; expected {_expected(expected)}", span, hint,
                          source.path, "unexpected-end")
    assert isinstance(exc, UnexpectedToken)
    tok = exc.token
    span = _tok_span(tok)
    expected = exc.accepts or exc.expected
    previous = _previous_token(exc)
    hint = None
    if tok.type == "EQUAL" and "COMPARE" in expected:
        hint = "use `==` to compare"
    elif tok.type == "EQUAL" and previous is not None and previous.type in _STATEMENT_TERMINALS:
        hint = (f"`{previous}` starts a `{previous}` statement here: give it a name (`{previous} n = ...`), "
                f"or, to rebind a var, give the var a name other than `{previous}`")
    elif previous is not None and previous.type in _EXPRESSION_KEYWORDS and "NAME" in expected:
        hint = f"`{previous}` is a keyword, not a name; rename what you called `{previous}`"
    elif previous is not None and previous.type == "NAME" and str(previous) in _keywords():
        hint = f"`{previous}` was read as a name here; is something missing before it?"
    elif "STAGE" in expected or "SOURCE" in expected:
        hint = _STATEMENT_HINT
    return Diagnostic(ERROR, f"unexpected {_token_text(tok)}; expected {_expected(expected)}", span,
                      hint, source.path, "unexpected-token")


def _only_comments(text: str) -> bool:
    """Is there nothing to parse in ``text``, only blank lines and comments?"""
    return all(line.lstrip().startswith("#") or not line.strip() for line in text.split("\n"))


def _previous_token(exc: UnexpectedToken) -> Token | None:
    """The token the parser read just before the unexpected one, if it is at hand."""
    state = getattr(getattr(exc, "interactive_parser", None), "parser_state", None)
    stack = getattr(state, "value_stack", None)
    last = stack[-1] if stack else None
    if isinstance(last, _Held):  # its last token is the one just read
        last = last.last
    return last if isinstance(last, Token) else None


def _point(source: SourceFile, pos: int) -> Span:
    text = source.text
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return Span(line, col, line, col + 1, pos, pos + 1)


def _unclosed(text: str):
    """The innermost bracket left open at the end of ``text`` (char, line, col), if any."""
    stack = []
    line, col, i, n = 1, 1, 0, len(text)
    pairs = {")": "(", "]": "[", "}": "{"}
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            col += j - i
            i = j
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] not in (c, "\n"):
                j += 2 if text[j] == "\\" else 1
            col += j + 1 - i
            i = j + 1
            continue
        if c in "([{":
            stack.append((c, line, col))
        elif c in ")]}" and stack and stack[-1][0] == pairs[c]:
            stack.pop()
        if c == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return stack[-1] if stack else None
