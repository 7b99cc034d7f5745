"""A lean driver for the LALR parser Lark builds from ``grammar/pipe.lark``.

Lark's own loop is general: a lexer generator per parse, a post-lexer generator, a
``Token`` made through a deprecation shim, a line counter object, a dict lookup of the
parse table and of the rule's callback per reduction. For a 10,000-stage file (145,000
tokens) that machinery is about half of the parse. :func:`driver` reads the very tables
Lark built (the contextual lexer's scanners per parser state, the parse table, the
callbacks :func:`pipec.dsl.parser._install` put in) and runs the same automaton in one
loop, producing the same tokens with the same positions, calling the same callbacks in
the same order.

It handles valid input only: at the first thing it does not take as Lark would (a
character no terminal of the state matches, a token the state has no action for, a
table shape it does not know), it raises :class:`Fallback` and the caller parses again
with Lark's own loop, so every syntax error is Lark's, raised from Lark's state, with
the diagnostics unchanged. A callback's own exception (a literal too long, nesting too
deep) passes through: Lark's loop would have raised it at the same token.
"""

from __future__ import annotations

from typing import Callable

from lark import Lark, Token
from lark.lexer import UnlessCallback
from lark.parsers.lalr_analysis import Shift


WRITE_OUT_AT = 20_000  # characters, about 400 lines: see `written` in driver()


class Fallback(Exception):
    """The driver stopped: parse with Lark's loop instead (it raises the proper error)."""


def _keyword_table(callback) -> dict[str, str] | None:
    """For Lark's check of a name against the keywords its pattern also matches (an
    ``UnlessCallback``), the same check as a table, keyword text -> terminal; None for
    any other callback, or when a keyword is more than a plain string."""
    if type(callback) is not UnlessCallback:
        return None
    terminals = callback.scanner.terminals
    if any(t.pattern.type != "str" or t.pattern.flags for t in terminals):
        return None
    table = {t.pattern.value: t.name for t in terminals}
    return table if len(table) == len(terminals) else None


def driver(lark: Lark, postlex: Callable[[str, Token], Token],
           postlex_types: frozenset[str]) -> Callable[[str], object]:
    """A function parsing a text with ``lark``'s LALR tables and contextual lexer, with
    ``postlex(text, token)`` standing for the post-lexer (one token in, one out), called
    for tokens of ``postlex_types`` (it gives the others back as they are). It gives what
    ``lark.parse`` gives, or raises :class:`Fallback`."""
    frontend = lark.parser
    contextual = frontend.lexer.lexer  # PostLexConnector -> ContextualLexer
    table = frontend.parser.parser.parse_table
    callbacks = frontend.parser.parser.callbacks
    if any(isinstance(key, str) for key in callbacks):
        raise RuntimeError("terminal callbacks in the parser: the lean driver does not know them")
    start, end_state = table.start_states["start"], table.end_states["start"]

    # Per parser state, made when the state is first met (Lark too compiles a state's
    # scanner only then, which keeps start-up short): the scanner's compiled patterns,
    # the terminal callbacks (the keyword check of a name, the comment keeper), which
    # terminals may hold a newline, which are ignored. States share lexers, so does this.
    by_lexer: dict[int, tuple] = {}

    class Lexing(dict):
        def __missing__(self, state):
            lexer = contextual.lexers[state]
            entry = by_lexer.get(id(lexer))
            if entry is None:
                scanner = lexer.scanner  # builds lexer.callback too
                if scanner.use_bytes:
                    raise RuntimeError("a bytes lexer: the lean driver reads text")
                matchers = tuple(m.match for m in scanner._mres)
                if len(matchers) == 1:
                    match = matchers[0]
                else:  # more terminals than one regex holds: the first that matches, as Lark
                    def match(text, pos, matchers=matchers):
                        for one in matchers:
                            m = one(text, pos)
                            if m is not None:
                                return m
                        return None
                token_callbacks, keywords = dict(lexer.callback), {}
                for kind, callback in lexer.callback.items():
                    words = _keyword_table(callback)
                    if words is not None:
                        keywords[kind] = words
                        del token_callbacks[kind]
                entry = by_lexer[id(lexer)] = (match, token_callbacks, keywords,
                                               lexer.newline_types, lexer.ignore_types)
            self[state] = entry
            return entry

    # The parse table with each reduction spelled out, also made state by state:
    # (True, next state) for a shift, (False, size of the rule, the rule's symbol, its
    # callback, the type of value the callback passes on unchanged if it is the rule's
    # one child, or None) for a reduction.
    rows = table.states

    # Writing a rule's reducer out costs a compile (a few milliseconds for all the rules
    # a file meets), which a small file does not win back: the written-out reducers
    # serve texts of WRITE_OUT_AT characters or more, the general ones the others.
    written: dict = {}  # rule -> its callback written out, where the callback offers that

    def write_out(rule):
        found = written.get(rule)
        if found is None:
            callback = callbacks[rule]
            make = getattr(callback, "written_out", None)
            found = written[rule] = make() if make is not None else callback
        return found

    class Actions(dict):
        def __init__(self, reducer):
            super().__init__()
            self.reducer = reducer

        def __missing__(self, state):
            entry = self[state] = {
                symbol: (True, arg) if action is Shift else
                (False, len(arg.expansion), arg.origin.name, self.reducer(arg),
                 getattr(callbacks[arg], "passes_on", None))
                for symbol, (action, arg) in rows[state].items()}
            return entry

    lexing = Lexing()
    general_actions, written_actions = Actions(callbacks.__getitem__), Actions(write_out)
    chains: dict[tuple, int] = {}  # (state below, top state, token) -> top state after passing rules
    new_token = str.__new__

    def parse(text: str):
        n = len(text)
        actions = written_actions if n >= WRITE_OUT_AT else general_actions
        pos, line, line_start = 0, 1, 0
        states = [start]
        values: list = []
        last = None
        while True:
            # -- the next token, with the lexer of the state the parser is in
            match, token_callbacks, keywords, newline_types, ignored = lexing[states[-1]]
            token = None
            while pos < n:
                m = match(text, pos)
                if m is None:
                    raise Fallback  # no terminal here: Lark says which were expected
                value, kind = m.group(0), m.lastgroup
                at, at_line, at_column = pos, line, pos - line_start + 1
                if kind in newline_types:
                    breaks = value.count("\n")
                    if breaks:
                        line += breaks
                        line_start = pos + value.rindex("\n") + 1
                pos += len(value)
                callback = token_callbacks.get(kind)
                if callback is None and kind in ignored:  # white space: only the position moves
                    continue
                token = new_token(Token, value)
                token.type, token.value, token.start_pos = kind, value, at
                token.line, token.column = at_line, at_column
                token.end_line, token.end_column, token.end_pos = line, pos - line_start + 1, pos
                if callback is not None:
                    token = callback(token)
                elif kind in keywords:  # a name that is a keyword here
                    token.type = keywords[kind].get(value, kind)
                if kind in ignored:
                    token = None
                    continue
                if token.type in postlex_types:
                    token = postlex(text, token)
                break
            if token is None:  # the end of the text
                if last is not None:
                    token = Token("$END", "", last.start_pos, last.line, last.column,
                                  last.end_line, last.end_column, last.end_pos)
                else:
                    token = Token("$END", "", 0, 1, 1)
            last = token
            # -- feed it: reduce as the table says, then shift it
            kind = token.type
            while True:
                action = actions[states[-1]].get(kind)
                if action is None:
                    raise Fallback  # a token the grammar does not take here
                if action[0]:
                    if kind == "$END":
                        raise Fallback
                    states.append(action[1])
                    values.append(token)
                    break
                _, size, symbol, callback, passes_on = action
                if passes_on is not None and type(values[-1]) is passes_on:
                    # A `?rule` of one rule: the value is passed on as it is (its
                    # callback would return it) and only the top state changes, often
                    # through a chain of them (`expr` -> `or_test` -> ... -> `power`
                    # for every name). Where the chain ends depends only on the state
                    # below, the top state and the token: found once, then looked up.
                    key = (states[-2], states[-1], kind)
                    top = chains.get(key)
                    if top is None:
                        under, top, step = states[-2], states[-1], action
                        while True:
                            top = actions[under][step[2]][1]
                            if kind == "$END" and top == end_state:
                                break
                            step = actions[top].get(kind)
                            if step is None or step[0] or step[4] is None:
                                break
                        chains[key] = top
                    states[-1] = top
                    if kind == "$END" and top == end_state:
                        return values[-1]
                    continue
                if size:
                    children = values[-size:]
                    del states[-size:]
                    del values[-size:]
                else:
                    children = []
                value = callback(children)
                goto = actions[states[-1]][symbol]
                states.append(goto[1])
                values.append(value)
                if kind == "$END" and goto[1] == end_state:
                    return value

    return parse
