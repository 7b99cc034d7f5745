"""Completion: keywords where they may stand, names in scope, the functions of a ``use``d
module and the methods of an actor.

Completion runs while the user is in the middle of typing, when the text rarely parses,
so the context comes from the text before the cursor (which block it is in, the word
before it, a dotted prefix such as ``lr.``), and the names from the latest version that
parsed, or failing that from a light scan of the definitions above the cursor. Python
modules are read as source (:mod:`pipec.lsp.pysource`), never imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipec.lsp import vocabulary
from pipec.lsp.document import Analysis
from pipec.lsp.pysource import PySource

_CLEAN = re.compile(r"\"([^\"\\\n]|\\.)*\"|'([^'\\\n]|\\.)*'|#[^\n]*")
_DOTTED_PREFIX = re.compile(r"([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*\.\s*(\w*)$")
_PARTIAL = re.compile(r"\w*$")

# A light scan for definitions, used only while the text does not parse.
_SCAN = re.compile(
    r"^[ \t]*(?:use[ \t]+(?P<module>[\w.]+)[ \t]+as[ \t]+(?P<alias>\w+)"
    r"|(?P<kind>source|stage|value|var|sink)[ \t]+(?P<name>\w+)[ \t]*="
    r"|actor[ \t]+(?P<pool>pool[ \t]+)?(?P<actor>\w+)[ \t]*=[ \t]*(?P<cls>[\w.]+)[ \t]*\("
    r"|repeat\b[^{\n]*?\bas[ \t]+(?P<index>\w+))", re.MULTILINE)
_PARAMS = re.compile(r"\bpipeline\s+\w+\s*\(([^)]*)\)")

_NAME_KINDS = {"param": "Property", "source": "Field", "stage": "Field", "value": "Constant", "var": "Variable",
               "actor": "Variable", "pool": "Variable", "index": "Constant", "sink": "Field", "alias": "Module"}


@dataclass(frozen=True)
class Item:
    """One completion: ``kind`` is an LSP completion item kind's name."""

    label: str
    kind: str
    detail: str = ""
    documentation: str | None = None


@dataclass(frozen=True)
class _Name:
    name: str
    kind: str
    target: tuple[str, ...] | None = None  # alias: its module; actor: its class


def complete(text: str, offset: int, analysis: Analysis | None, python: PySource) -> list[Item]:
    """What may be written at ``offset`` of ``text``: see the module docstring.
    ``analysis`` is the document's latest analysis that parsed (or None)."""
    before = text[:offset]
    line = before[before.rfind("\n") + 1:]
    if in_comment_or_string(line):
        return []
    cleaned = _CLEAN.sub("", line)
    names = _names(text, offset, analysis)
    dotted = _DOTTED_PREFIX.search(cleaned)
    if dotted:
        owner = tuple(p.strip() for p in dotted.group(1).split("."))
        return _members(owner, names, python)
    partial = _PARTIAL.search(cleaned).group()
    prev = cleaned[:len(cleaned) - len(partial)].rstrip()
    block = _open_block(_CLEAN.sub("", before))
    if block is None:
        return [] if prev else _words(vocabulary.TOP_LEVEL)
    last = prev.split()[-1] if prev.split() else ""
    if prev.endswith("->"):
        return _words(vocabulary.SINK_FORMATS, "EnumMember")
    if last in vocabulary.DATAFLOW and last != "group_by_key":
        return _functions(names, python)
    if last == "over":
        return _values(names, collections=True)
    if not prev:
        if block == "actor":
            return _words(vocabulary.ACTOR_OPTIONS)
        if block == "defaults":
            return _words(vocabulary.STAGE_OPTIONS)
        if block == "resources":
            return _words(vocabulary.RESOURCES, "Property")
        rebindable = [n for n in names.values() if n.kind in ("var", "actor")]
        return _words(vocabulary.STATEMENTS) + [_name_item(n) for n in rebindable]
    statement = cleaned.split()[0] if cleaned.split() else ""
    # After a whole expression on a statement's line: what may follow it there.
    if re.search(r"[\w)\]]$", prev) and not re.search(r"\b(with|over|partitions|x|timeout|retries)$", prev):
        if statement == "stage":
            return _words({**vocabulary.STAGE_OPTIONS, "with": vocabulary.CONNECTIVES["with"]})
        if statement == "source":
            return _words({k: vocabulary.CONNECTIVES[k] for k in ("partitions", "sharded")}
                          | vocabulary.STAGE_OPTIONS)
        if statement == "repeat":
            return _words({k: vocabulary.CONNECTIVES[k] for k in ("as", "until")})
        if statement == "actor":
            return _words({"x": vocabulary.CONNECTIVES["x"]})
    return _values(names)


def in_comment_or_string(line: str) -> bool:
    """Does the end of ``line`` (the text before the cursor) sit in a comment or a string?"""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return True
        i += 1
    return quote is not None


def _open_block(before: str) -> str | None:
    """What the innermost open ``{`` belongs to: pipeline, repeat, actor, defaults,
    resources; None outside the pipeline's braces."""
    stack = []
    for m in re.finditer(r"[{}]", before):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            stack.pop()
    if not stack:
        return None
    at = stack[-1]
    head = before[max(before.rfind("\n", 0, at), before.rfind("}", 0, at), before.rfind("{", 0, at)) + 1:at]
    words = head.split()
    if words and words[-1] == "resources":
        return "resources"
    for word in ("actor", "defaults", "repeat", "pipeline"):
        if word in words:
            return word
    return "pipeline"


def _names(text: str, offset: int, analysis: Analysis | None) -> dict[str, _Name]:
    """The names visible at ``offset``: exact from the parsed text when it is current,
    else from a scan of the definitions above the cursor."""
    if analysis is not None and analysis.names is not None and analysis.source.text == text:
        return {d.name: _Name(d.name, d.kind, d.target) for d in analysis.names.visible_at(offset)}
    # Up to the cursor's line: an unfinished statement there has not bound its name yet.
    before = text[:text.rfind("\n", 0, offset) + 1]
    found: dict[str, _Name] = {}
    aliases: dict[str, tuple[str, ...]] = {}
    params = _PARAMS.search(before)
    if params:
        for item in params.group(1).split(","):
            name = item.split(":")[0].strip()
            if name.isidentifier():
                found[name] = _Name(name, "param")
    for m in _SCAN.finditer(before):
        if m.group("alias"):
            aliases[m.group("alias")] = tuple(m.group("module").split("."))
            found[m.group("alias")] = _Name(m.group("alias"), "alias", aliases[m.group("alias")])
        elif m.group("name"):
            found[m.group("name")] = _Name(m.group("name"), m.group("kind"))
        elif m.group("actor"):
            parts = tuple(m.group("cls").split("."))
            if parts[0] in aliases:
                parts = aliases[parts[0]] + parts[1:]
            found[m.group("actor")] = _Name(m.group("actor"), "pool" if m.group("pool") else "actor", parts)
        elif m.group("index"):
            found[m.group("index")] = _Name(m.group("index"), "index")
    return found


def _members(owner: tuple[str, ...], names: dict[str, _Name], python: PySource) -> list[Item]:
    head = names.get(owner[0])
    if head is not None and head.kind in ("actor", "pool") and len(owner) == 1:
        if not head.target:
            return []
        return [Item(m.name.rsplit(".", 1)[-1], "Method", m.signature or "", m.doc)
                for m in python.methods(head.target)]
    module = head.target + owner[1:] if head is not None and head.kind == "alias" else owner
    dotted = ".".join(module)
    items = [Item(t.name.rsplit(".", 1)[-1], "Class" if t.kind == "class" else "Function", t.signature or "", t.doc)
             for t in python.members(dotted)]
    items += [Item(sub, "Module", f"module {dotted}.{sub}") for sub in python.submodules(dotted)]
    return items


def _functions(names: dict[str, _Name], python: PySource) -> list[Item]:
    """What may follow ``map``, ``reduce``...: a function of a used module, or a pool."""
    items = []
    for n in names.values():
        if n.kind == "alias":
            items.append(_name_item(n))
            for t in python.members(".".join(n.target)):
                if t.kind == "function":
                    items.append(Item(f"{n.name}.{t.name.rsplit('.', 1)[-1]}", "Function", t.signature or "", t.doc))
        elif n.kind in ("pool", "actor"):
            items.append(_name_item(n))
    return items


def _values(names: dict[str, _Name], collections: bool = False) -> list[Item]:
    """What may start an expression: names in scope, builtins, dataflow keywords; only
    collections and what makes one with ``collections``."""
    wanted = ("source", "stage", "var") if collections else tuple(k for k in _NAME_KINDS if k != "sink")
    items = [_name_item(n) for n in names.values() if n.kind in wanted]
    builtins = {k: v for k, v in vocabulary.BUILTINS.items()
                if not collections or k in ("join", "union", "distinct")}
    items += [Item(k, "Function", "builtin", v) for k, v in builtins.items()]
    items += _words(vocabulary.DATAFLOW)
    if not collections:
        items += _words({k: vocabulary.CONNECTIVES[k] for k in ("not", "true", "false", "none")})
    return items


def _name_item(n: _Name) -> Item:
    detail = n.kind + (f" {'.'.join(n.target)}" if n.target else "")
    return Item(n.name, _NAME_KINDS.get(n.kind, "Variable"), detail)


def _words(words: dict[str, str], kind: str = "Keyword") -> list[Item]:
    return [Item(word, kind, "", doc) for word, doc in words.items()]
