"""The user's Python functions, classes and methods as the editor shows them: signature,
docstring and where each is defined, all read from the source with :mod:`ast`.

The language server must never import user code (a module may start a cluster, or take
a minute to import numpy and torch), so it reads files the way
:mod:`pipec.compiler.modules` does, and finds them with the same
:class:`~pipec.compiler.modules.ModuleIndex`. A file is parsed again only when its
modification time changes, so hovering over the same function is free after the first
time, and an edit to the ``.py`` file shows at once.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from pipec.compiler.modules import ModuleIndex, ModuleSyntaxError


@dataclass(frozen=True)
class PyThing:
    """A module, function, class or method of the user's code."""

    kind: str  # module, function, class, method
    name: str  # dotted: ``examples.linreg.gradient``, ``examples.linreg.ParameterServer.apply``
    path: Path
    line: int  # 1-based; 1 for a module
    column: int  # 0-based, as in Python's ast
    signature: str | None  # ``def gradient(batch, weights)``; None for a module
    doc: str | None

    def markdown(self) -> str:
        """The hover text: the signature as Python, then the docstring, then the place."""
        parts = []
        if self.signature:
            parts.append(f"```python\n{self.signature}\n```")
        else:
            parts.append(f"module `{self.name}`")
        if self.doc:
            parts.append(self.doc)
        parts.append(f"{self.kind} in `{self.path}`, line {self.line}")
        return "\n\n".join(parts)


class PySource:
    """Looks up dotted names in the user's modules, read as source; see the module docstring."""

    def __init__(self, index: ModuleIndex):
        self.index = index
        self._trees: dict[Path, tuple[int, ast.Module | None]] = {}

    def _tree(self, path: Path) -> ast.Module | None:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return None
        cached = self._trees.get(path)
        if cached is None or cached[0] != mtime:
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), str(path))
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                tree = None
            self._trees[path] = cached = (mtime, tree)
        return cached[1]

    def module_path(self, module: str) -> Path | None:
        """The file of ``module``, or None when it has no Python source on the path."""
        try:
            info = self.index.find(module)
        except ModuleSyntaxError as exc:
            return exc.path
        return info.path if info is not None else None

    def module(self, module: str) -> PyThing | None:
        """Module ``module`` itself (its docstring, its file)."""
        path = self.module_path(module)
        if path is None:
            return None
        tree = self._tree(path)
        return PyThing("module", module, path, 1, 0, None, ast.get_docstring(tree) if tree else None)

    def lookup(self, parts: tuple[str, ...]) -> PyThing | None:
        """What the dotted path ``parts`` names: a function or class of a module (the
        last part is the attribute, the rest the module, as the checker reads it), a
        method of such a class (one part more), or a module."""
        for split in (len(parts) - 1, len(parts) - 2):
            if split < 1:
                continue
            module, rest = ".".join(parts[:split]), parts[split:]
            path = self.module_path(module)
            tree = self._tree(path) if path else None
            if tree is None:
                continue
            node = _top(tree, rest[0])
            if node is None:
                continue
            if len(rest) == 1:
                return _thing(node, f"{module}.{rest[0]}", path)
            if isinstance(node, ast.ClassDef):
                method = _method(tree, node, rest[1])
                if method is not None:
                    return _thing(method, f"{module}.{rest[0]}.{rest[1]}", path, kind="method")
        return self.module(".".join(parts))

    def members(self, module: str) -> list[PyThing]:
        """The public functions and classes at the top of ``module``, in source order."""
        path = self.module_path(module)
        tree = self._tree(path) if path else None
        if tree is None:
            return []
        return [_thing(node, f"{module}.{node.name}", path) for node in _defs(tree.body)
                if not node.name.startswith("_")]

    def submodules(self, package: str) -> list[str]:
        """The names of the modules and packages inside package ``package``."""
        path = self.module_path(package)
        if path is None or path.name != "__init__.py":
            return []
        names = []
        for child in sorted(path.parent.iterdir()):
            if child.suffix == ".py" and child.stem != "__init__" and child.stem.isidentifier():
                names.append(child.stem)
            elif child.is_dir() and (child / "__init__.py").is_file() and child.name.isidentifier():
                names.append(child.name)
        return names

    def methods(self, class_parts: tuple[str, ...]) -> list[PyThing]:
        """The public methods of the class named by ``class_parts``, its own and those of
        base classes in the same module, in source order."""
        module, name = ".".join(class_parts[:-1]), class_parts[-1]
        path = self.module_path(module) if module else None
        tree = self._tree(path) if path else None
        node = _top(tree, name) if tree else None
        if not isinstance(node, ast.ClassDef):
            return []
        seen: dict[str, PyThing] = {}
        for cls in _lineage(tree, node):
            for item in _defs(cls.body):
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    seen.setdefault(item.name, _thing(item, f"{module}.{name}.{item.name}", path, "method"))
        return list(seen.values())


def _defs(body):
    """Functions and classes bound in ``body``, looking inside if/try blocks as the
    checker does."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield stmt
        elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
            yield from _defs(stmt.body)
            for extra in ("orelse", "finalbody"):
                yield from _defs(getattr(stmt, extra, []) or [])
            for handler in getattr(stmt, "handlers", []) or []:
                yield from _defs(handler.body)


def _top(tree: ast.Module, name: str):
    found = None
    for node in _defs(tree.body):
        if node.name == name:
            found = node  # the last definition wins, as at run time
    return found


def _lineage(tree: ast.Module, cls: ast.ClassDef, seen=None):
    """``cls`` and then its base classes defined in the same module, nearest first."""
    seen = seen or set()
    if cls.name in seen:
        return
    seen.add(cls.name)
    yield cls
    for base in cls.bases:
        if isinstance(base, ast.Name):
            parent = _top(tree, base.id)
            if isinstance(parent, ast.ClassDef):
                yield from _lineage(tree, parent, seen)


def _method(tree: ast.Module, cls: ast.ClassDef, name: str):
    for klass in _lineage(tree, cls):
        for item in _defs(klass.body):
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == name:
                return item
    return None


def _thing(node, dotted: str, path: Path, kind: str | None = None) -> PyThing:
    if isinstance(node, ast.ClassDef):
        init = next((i for i in _defs(node.body) if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)
        args = _arguments(init.args, drop_first=True) if init else ""
        signature = f"class {node.name}({args})"
        kind = kind or "class"
    else:
        prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
        returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
        signature = f"{prefix} {node.name}({_arguments(node.args)}){returns}"
        kind = kind or "function"
    return PyThing(kind, dotted, path, node.lineno, node.col_offset, signature, ast.get_docstring(node))


def _arguments(args: ast.arguments, drop_first: bool = False) -> str:
    if drop_first:
        args = ast.arguments(posonlyargs=args.posonlyargs[1:] if args.posonlyargs else [],
                             args=args.args if args.posonlyargs else args.args[1:],
                             vararg=args.vararg, kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults,
                             kwarg=args.kwarg, defaults=args.defaults)
    return ast.unparse(args)
