"""The canonical formatter behind ``pipec fmt``.

The formatter prints the AST again, so the output reparses to the same tree (and builds
the same IR): the only spellings it changes are whitespace, trailing commas, and an
empty actor block ``{}``, which the AST does not keep because it means nothing. It never
wraps long lines.

Layout, in three steps:

1. The AST becomes a small tree of output lines (:class:`_Line`) and braced blocks
   (:class:`_Block`): one line per statement, a block for ``pipeline``, ``repeat``, and
   for actor and ``defaults`` blocks with several options. Each output line remembers
   the source offsets (starts and ends of every node it prints): its *marks*.
2. Comments are not in the tree, so each one is attached through the marks. A comment
   with code before it on its source line trails the output line that holds the code
   just before it. A comment alone on its line goes above the output line that holds
   the code just after it, or before the closing brace when that code is a ``}``; with
   nothing after it, it goes to the end of the file. A comment written inside an
   expression that now sits on one line thus moves to that line's end or above it, and
   no comment is lost or printed twice. Attaching by position rather than by node is
   what makes the result stable: the second run sees each comment where the first put
   it, and puts it there again.
3. The tree is printed with 4-space indentation. A blank line is kept (one at most)
   wherever the source had blank lines between two printed rows, never just inside an
   opening brace or before a closing one.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, fields, is_dataclass
from itertools import accumulate

from pipec.dsl import ast
from pipec.dsl.parser import parse
from pipec.dsl.source import SourceFile, Span

INDENT = "    "


def format_source(source: SourceFile) -> str:
    """Parse ``source`` and return its canonical text (ending in one newline).

    Raises :class:`pipec.dsl.diagnostics.PipeSyntaxError` when the text does not parse.
    """
    return format_module(parse(source), source.text)


def format_module(module: ast.Module, text: str | None = None) -> str:
    """Print a parsed module canonically, comments included.

    ``text`` is the source the module was parsed from; with it, blank lines between
    statements are kept and a comment counts as trailing when code precedes it on its
    line. Without it, blank lines are dropped and trailing comments are recognised from
    the node positions alone.
    """
    return _Printer(module, text).run()


# ---- expressions and options --------------------------------------------------------------


def format_expr(expr: ast.Expr) -> str:
    """One expression on one line, with the user's parentheses and literal spellings."""
    # Plain loops instead of generator expressions below: every frame counts when an
    # expression nests as deep as the parser allows (MAX_NESTING levels).
    match expr:
        case ast.Literal():
            return expr.raw
        case ast.Ref():
            return expr.path.text
        case ast.Call():
            return _call(expr)
        case ast.ListExpr():
            items = []
            for item in expr.items:
                items.append(format_expr(item))
            return "[" + ", ".join(items) + "]"
        case ast.Paren():
            return f"({format_expr(expr.inner)})"
        case ast.BinOp():
            return f"{format_expr(expr.left)} {expr.op} {format_expr(expr.right)}"
        case ast.UnaryOp():
            operand = format_expr(expr.operand)
            return f"not {operand}" if expr.op == "not" else f"{expr.op}{operand}"
        case ast.Dataflow():
            parts = [expr.kind]
            if expr.fn is not None:
                parts.append(expr.fn.text)
            parts += ["over", format_expr(expr.input)]
            if expr.batch is not None:
                parts += ["as", expr.batch.text]
            text = " ".join(parts)
            if expr.bindings:
                text += " with " + _args(expr.bindings)
            return text
    raise TypeError(f"not an expression: {type(expr).__name__}")


def _args(args) -> str:
    """Arguments or bindings, comma-separated: ``a, k = b``."""
    texts = []
    for arg in args:
        if isinstance(arg, ast.Keyword):
            texts.append(f"{arg.name.text} = {format_expr(arg.value)}")
        else:
            texts.append(format_expr(arg))
    return ", ".join(texts)


def _call(call: ast.Call) -> str:
    # The AST splits positional and keyword arguments; sorting by position restores the
    # order the user wrote them in (the grammar allows `f(a, k = 1, b)`).
    args = sorted((*call.args, *call.kwargs), key=lambda a: a.span.start)
    return f"{call.func.text}({_args(args)})"


def format_option(option: ast.Option) -> str:
    """A stage or actor option as written in canonical form, e.g. ``retries 3``."""
    kind, value = option.kind, option.value
    if kind == "effectful":
        return "effectful"
    if kind == "checkpoint":
        return f"checkpoint every {value.raw} calls"
    if kind == "idempotent":
        return "idempotent " + ", ".join(n.text for n in value)
    if kind == "resources":
        if not value:
            return "resources {}"
        return "resources { " + " ".join(f"{name.text} {lit.raw}" for name, lit in value) + " }"
    return f"{kind} {value.raw}"  # retries, timeout, restarts


def _options(options) -> str:
    return "".join(" " + format_option(o) for o in options)


# ---- the output tree ----------------------------------------------------------------------


@dataclass(eq=False)
class _Note:
    """A comment printed on a line of its own."""

    text: str
    offset: int
    src_line: int  # where it counts as being, for the blank-line rule


@dataclass(eq=False)
class _Line:
    """One output line (without indentation) and the comments attached to it."""

    text: str
    src_start: int  # offset where the printed code starts in the source
    src_line: int
    src_end_line: int
    above: list[_Note] = field(default_factory=list)
    trailing: list[tuple[int, str]] = field(default_factory=list)


@dataclass(eq=False)
class _Block:
    """``header {``, indented body items, ``}``; comments before ``}`` live in close.above."""

    header: _Line
    body: list["_Line | _Block"]
    close: _Line


_FIELDS: dict[type, tuple[str, ...]] = {}


def _spans(node):
    """Every span inside ``node`` (a node, a tuple of nodes, or an option value).

    A loop rather than recursion: expressions may nest up to the parser's limit.
    """
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Span):
            yield item
        elif isinstance(item, tuple):
            stack.extend(item)
        else:
            names = _FIELDS.get(type(item))
            if names is None:
                names = tuple(f.name for f in fields(item)) if is_dataclass(item) else ()
                _FIELDS[type(item)] = names
            stack.extend(getattr(item, name) for name in names)


class _Printer:
    def __init__(self, module: ast.Module, text: str | None):
        self.module = module
        self.text = text
        self.comments = sorted(module.comments, key=lambda c: c.span.start)
        self._comment_starts = [c.span.start for c in self.comments]
        # marks: (source offset, source line of that offset, output line holding it)
        self.marks: list[tuple[int, int, _Line]] = []
        self.close_lines: set[int] = set()  # ids of _Lines that are a block's `}`
        self.tail: list[_Note] = []  # comments after the last code of the file
        if text is not None:
            lines = text.split("\n")
            self._line_starts = list(accumulate((len(l) + 1 for l in lines[:-1]), initial=0))
            self._blank_before = list(accumulate((not l.strip() for l in lines), initial=0))
        else:
            self._line_starts = None
            self._blank_before = None

    # -- step 1: build the tree

    def _line(self, text: str, first_line: int, *nodes) -> _Line:
        """An output line printing ``nodes`` (nodes, tuples of nodes or None)."""
        tops = [n.span for node in nodes for n in (node if isinstance(node, tuple) else (node,))
                if n is not None]
        start = min((s.start for s in tops), default=-1)
        end = max((s.end for s in tops), default=-1)
        end_line = max((s.end_line for s in tops), default=first_line)
        line = _Line(text, start, first_line, max(end_line, first_line))
        # Only a comment inside the printed code needs the marks in between; any other
        # comment finds the line by its first or last offset (this keeps big files fast).
        spans = [s for node in nodes for s in _spans(node)] if self._has_comment(start, end) else tops
        marks = self.marks
        for s in spans:
            marks.append((s.start, s.line, line))
            marks.append((s.end, s.end_line, line))
        return line

    def _mark(self, offset: int, src_line: int, line: _Line) -> None:
        self.marks.append((offset, src_line, line))

    def _block(self, node, header_text: str, header_nodes, body) -> _Block:
        span = node.span
        header = self._line(header_text + " {", span.line, *header_nodes)
        header.src_start = span.start
        self._mark(span.start, span.line, header)
        close = _Line("}", span.end - 1, span.end_line, span.end_line)
        # The `}` is the last character of the node; its offset lets a comment that
        # precedes it find this close line rather than the code after the block.
        self._mark(span.end - 1, span.end_line, close)
        self._mark(span.end, span.end_line, close)
        self.close_lines.add(id(close))
        return _Block(header, body, close)

    def _has_comment(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self._comment_starts, start)
        return i < len(self._comment_starts) and self._comment_starts[i] < end

    def _module(self) -> list:
        items: list = []
        for use in self.module.uses:
            items.append(self._line(f"use {use.path.text} as {use.alias.text}", use.span.line, use))
        p = self.module.pipeline
        params = ", ".join(
            f"{prm.name.text}: {prm.type.text}" + (f" = {format_expr(prm.default)}" if prm.default is not None else "")
            for prm in p.params)
        body = [self._stmt(s) for s in p.body]
        items.append(self._block(p, f"pipeline {p.name.text}({params})", (p.name, p.params), body))
        return items

    def _stmt(self, s: ast.Stmt):
        line = s.span.line
        match s:
            case ast.Stage():
                return self._line(f"stage {s.name.text} = {format_expr(s.expr)}{_options(s.options)}", line, s)
            case ast.Source():
                sharded = " sharded" if s.sharded else ""
                parts = f" partitions {format_expr(s.partitions)}" if s.partitions is not None else ""
                return self._line(f"source {s.name.text} = {_call(s.call)}{sharded}{parts}{_options(s.options)}",
                                  line, s)
            case ast.Value():
                return self._line(f"value {s.name.text} = {format_expr(s.expr)}", line, s)
            case ast.Var():
                return self._line(f"var {s.name.text} = {format_expr(s.expr)}", line, s)
            case ast.Rebind():
                return self._line(f"{s.name.text} = {format_expr(s.expr)}", line, s)
            case ast.CallStmt():
                return self._line(_call(s.call), line, s)
            case ast.Sink():
                text = f"sink {s.name.text} = {format_expr(s.expr)}"
                if s.format is not None:
                    text += f" -> {s.format.text}({format_expr(s.target)})"
                return self._line(text, line, s)
            case ast.Repeat():
                head = f"repeat {format_expr(s.count)}"
                if s.index is not None:
                    head += f" as {s.index.text}"
                if s.until is not None:
                    head += f" until {format_expr(s.until)}"
                body = [self._stmt(b) for b in s.body]
                return self._block(s, head, (s.count, s.index, s.until), body)
            case ast.When():
                body = [self._stmt(b) for b in s.body]
                return self._block(s, f"when {format_expr(s.cond)}", (s.cond,), body)
            case ast.Actor():
                head = f"actor {'pool ' if s.pool else ''}{s.name.text} = {_call(s.ctor)}"
                if s.size is not None:
                    head += f" x {format_expr(s.size)}"
                head_end = max(s.ctor.span.end, s.size.span.end if s.size is not None else 0)
                return self._braced(s, head, (s.name, s.ctor, s.size), head_end, omit_empty=True)
            case ast.Defaults():
                return self._braced(s, "defaults", (), s.span.start, omit_empty=False)
        raise TypeError(f"not a statement: {type(s).__name__}")

    def _braced(self, s, head: str, head_nodes, head_end: int, omit_empty: bool):
        """An actor or defaults statement: ``head``, then its options in braces.

        None or one option stays on the statement's line (``{ restarts 2 }``); several
        options, or any comment between the braces, take one line each, so that the
        comments can stay inside the block.
        """
        options = s.options
        if not self._has_comment(head_end, s.span.end) and len(options) <= 1:
            if not options:
                return self._line(head if omit_empty else head + " {}", s.span.line, s)
            return self._line(f"{head} {{ {format_option(options[0])} }}", s.span.line, s)
        body = [self._line(format_option(o), o.span.line, o) for o in options]
        return self._block(s, head, head_nodes, body)

    # -- step 2: attach comments

    def _own_line(self, comment: ast.Comment, prev) -> bool:
        """Whether nothing but whitespace precedes ``comment`` on its source line."""
        if self._line_starts is not None:
            start = self._line_starts[comment.span.line - 1]
            return not self.text[start:comment.span.start].strip()
        return prev is None or prev[1] != comment.span.line

    def _attach(self) -> None:
        self.marks.sort(key=lambda m: m[0])
        offsets = [m[0] for m in self.marks]
        for comment in self.comments:
            text = comment.text.rstrip()
            i = bisect.bisect_right(offsets, comment.span.start) - 1
            prev = self.marks[i] if i >= 0 else None
            if not self._own_line(comment, prev) and prev is not None:
                prev[2].trailing.append((comment.span.start, text))
                continue
            j = bisect.bisect_left(offsets, comment.span.end)
            note = _Note(text, comment.span.start, comment.span.line)
            if j < len(self.marks):
                line = self.marks[j][2]
                if note.offset > line.src_start:
                    # Written inside the code it now stands above: for blank lines it
                    # counts as being where that code starts.
                    note.src_line = line.src_line
                line.above.append(note)
            else:
                self.tail.append(note)
        # A line ends in one comment at most: earlier trailing comments (written inside
        # an expression now joined onto this line) go above it, in source order.
        for line in {id(m[2]): m[2] for m in self.marks}.values():
            if len(line.trailing) > 1:
                line.trailing.sort()
                line.above += [_Note(t, off, line.src_line) for off, t in line.trailing[:-1]]
                line.trailing = line.trailing[-1:]
            line.above.sort(key=lambda n: n.offset)

    # -- step 3: print

    def run(self) -> str:
        items = self._module()
        self._attach()
        self.rows: list[tuple[int, str, int, int, bool]] = []
        for item in items:
            self._emit(item, 0)
        for note in self.tail:
            self.rows.append((0, note.text, note.src_line, note.src_line, False))
        out: list[str] = []
        prev_end = None
        for depth, text, src_line, src_end, fixed in self.rows:
            if not fixed and prev_end is not None and self._blank_between(prev_end, src_line):
                out.append("")
            out.append(INDENT * depth + text)
            prev_end = src_end
        return "\n".join(out) + "\n"

    def _blank_between(self, after: int, before: int) -> bool:
        """Whether a whitespace-only source line lies strictly between two lines."""
        if self._blank_before is None or before - after < 2:
            return False
        return self._blank_before[before - 1] - self._blank_before[after] > 0

    def _row(self, depth: int, line: _Line, fixed: bool) -> None:
        """Append ``line`` (and the comments above it) at ``depth``.

        ``fixed`` rows never get a blank line before them: the first row inside a
        block. Comments above a close brace belong to the block body, one level in.
        """
        is_close = id(line) in self.close_lines
        note_depth = depth + 1 if is_close else depth
        for note in line.above:
            self.rows.append((note_depth, note.text, note.src_line, note.src_line, fixed))
            fixed = False
        text = line.text + (" " + line.trailing[0][1] if line.trailing else "")
        self.rows.append((depth, text, line.src_line, line.src_end_line, fixed or is_close))

    def _emit(self, item, depth: int, fixed: bool = False) -> None:
        if isinstance(item, _Line):
            self._row(depth, item, fixed)
            return
        self._row(depth, item.header, fixed)
        first = True
        for child in item.body:
            self._emit(child, depth + 1, first)
            first = False
        self._row(depth, item.close, first)
