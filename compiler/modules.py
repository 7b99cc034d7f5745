"""Read the user's Python modules as source, never importing them.

Static commands (`check`, `compile`, `graph`, `fmt`) must not run user code, yet the
checker should still know that ``lr.ParameterServer`` has no method ``aply``. This module
finds a module's file on the search path and lists what its top level defines, with the
parameters of functions and the methods of classes, by reading it with :mod:`ast`.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FunctionInfo:
    name: str
    params: list[str]
    var_positional: bool = False
    var_keyword: bool = False
    lineno: int = 0
    required: list[str] = field(default_factory=list)  # positional parameters without a default
    required_keywords: list[str] = field(default_factory=list)  # keyword-only ones without a default

    def accepts_keyword(self, name: str) -> bool:
        return self.var_keyword or name in self.params

    def missing(self, positional: int, keywords=(), skip: int = 0) -> list[str]:
        """Required parameters left unset by ``positional`` arguments and ``keywords``;
        ``skip`` leading parameters are bound already (``self``)."""
        left = self.required[skip + positional:] + self.required_keywords
        return [p for p in left if p not in keywords]


@dataclass
class ClassInfo:
    name: str
    methods: dict[str, FunctionInfo] = field(default_factory=dict)
    complete: bool = True  # False when a base class or __getattr__ hides methods from us
    init: FunctionInfo | None = None


@dataclass
class ModuleInfo:
    name: str
    path: Path | None  # None for a module without Python source (builtin, extension)
    functions: dict[str, FunctionInfo] = field(default_factory=dict)
    classes: dict[str, ClassInfo] = field(default_factory=dict)
    other_names: set[str] = field(default_factory=set)
    complete: bool = True  # False when names may come from `import *` or __getattr__

    @property
    def opaque(self) -> bool:
        return self.path is None

    def names(self) -> set[str]:
        return set(self.functions) | set(self.classes) | self.other_names

    def has(self, name: str) -> bool:
        return self.opaque or not self.complete or name in self.names()


class ModuleSyntaxError(Exception):
    def __init__(self, path: Path, err: SyntaxError):
        self.path, self.err = path, err
        super().__init__(f"{path}:{err.lineno}: {err.msg}")


class ModuleIndex:
    """Finds modules under ``roots`` (then ``sys.path``) and caches what they define."""

    def __init__(self, roots: list[Path]):
        self.roots = [Path(r) for r in roots]
        self._cache: dict[str, ModuleInfo | ModuleSyntaxError | None] = {}
        self.found_roots: list[Path] = []  # roots that held at least one user module

    @classmethod
    def for_file(cls, pipe_path: str | Path) -> "ModuleIndex":
        """Search the .pipe file's folder and each folder above it, then the working dir."""
        here = Path(pipe_path).resolve().parent
        roots = [here, *here.parents, Path.cwd()]
        return cls(list(dict.fromkeys(roots)))

    def find(self, module: str) -> ModuleInfo | None:
        """What ``module`` defines, or None when no such module exists on the path."""
        if module not in self._cache:
            try:
                self._cache[module] = self._load(module)
            except ModuleSyntaxError as exc:  # kept, so a broken module is read once
                self._cache[module] = exc
        found = self._cache[module]
        if isinstance(found, ModuleSyntaxError):
            raise found
        return found

    def _load(self, module: str) -> ModuleInfo | None:
        parts = module.split(".")
        if not all(p.isidentifier() for p in parts):
            return None
        for root in self.roots:
            path = _module_file(root, parts)
            if path is not None:
                if root not in self.found_roots:
                    self.found_roots.append(root)
                return _read(module, path)
        if module in sys.builtin_module_names:
            return ModuleInfo(module, None)
        for entry in sys.path:
            root = Path(entry or ".")
            path = _module_file(root, parts)
            if path is not None:
                return _read(module, path)
            if _extension_exists(root, parts):
                return ModuleInfo(module, None)
        return None


def _module_file(root: Path, parts: list[str]) -> Path | None:
    base = root.joinpath(*parts)
    candidates = (base.with_suffix(".py"), base / "__init__.py")
    for c in candidates:
        if c.is_file():
            # Every enclosing folder must be a package or a namespace folder: both import.
            return c
    return None


def _extension_exists(root: Path, parts: list[str]) -> bool:
    folder = root.joinpath(*parts[:-1])
    if not folder.is_dir():
        return False
    return any(folder.glob(f"{parts[-1]}.*.so")) or any(folder.glob(f"{parts[-1]}.*.pyd"))


def _function(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool = False) -> FunctionInfo:
    a = node.args
    positional = [p.arg for p in (*a.posonlyargs, *a.args)]
    params = positional + [p.arg for p in a.kwonlyargs]
    info = FunctionInfo(node.name, params, a.vararg is not None, a.kwarg is not None, node.lineno,
                        required=positional[:len(positional) - len(a.defaults)],
                        required_keywords=[p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None])
    decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", None) for d in node.decorator_list}
    if method and "staticmethod" in decorators:
        # Called on an instance without `self`: give it a stand-in so callers can drop one.
        info.params.insert(0, "self")
        info.required.insert(0, "self")
    elif decorators - {"classmethod", "staticmethod"}:
        # Any other decorator may change the signature: accept whatever is passed.
        info.var_positional = info.var_keyword = True
        info.required, info.required_keywords = [], []
    return info


def _top_level(body: list[ast.stmt]):
    """Statements bound at module level, looking inside if/try/with blocks."""
    for stmt in body:
        if isinstance(stmt, (ast.If, ast.Try, ast.With)):
            yield from _top_level(stmt.body)
            for extra in ("orelse", "finalbody"):
                yield from _top_level(getattr(stmt, extra, []) or [])
            for handler in getattr(stmt, "handlers", []) or []:
                yield from _top_level(handler.body)
        else:
            yield stmt


def _read(module: str, path: Path) -> ModuleInfo:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # unreadable here; the workers may still import it, so assume nothing
        return ModuleInfo(module, None)
    try:
        tree = ast.parse(text, str(path))
    except SyntaxError as err:
        raise ModuleSyntaxError(path, err) from None
    except ValueError as err:  # a NUL byte, on Pythons that do not call it a SyntaxError
        raise ModuleSyntaxError(path, SyntaxError(str(err))) from None
    except (RecursionError, MemoryError):  # Python's own parser gives up on it too
        raise ModuleSyntaxError(path, SyntaxError("too deeply nested to read")) from None
    info = ModuleInfo(module, path)
    raw_classes: dict[str, ast.ClassDef] = {}
    for stmt in _top_level(tree.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            info.functions[stmt.name] = _function(stmt)
            if stmt.name == "__getattr__":
                info.complete = False
        elif isinstance(stmt, ast.ClassDef):
            raw_classes[stmt.name] = stmt
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name == "*":
                    info.complete = False
                else:
                    info.other_names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        info.other_names.add(n.id)
    done: dict[str, ClassInfo] = {}
    for name in raw_classes:  # in source order, so a base is usually done before its subclasses
        info.classes[name] = _class(name, raw_classes, set(), done)
    return info


def _class(name: str, raw: dict[str, ast.ClassDef], seen: set[str], done: dict[str, ClassInfo]) -> ClassInfo:
    if name in done:
        return done[name]
    node = raw[name]
    cls = ClassInfo(name)
    for base in node.bases:
        base_name = base.id if isinstance(base, ast.Name) else None
        if base_name == "object":
            continue
        if base_name in raw and base_name not in seen:
            parent = _class(base_name, raw, seen | {name}, done)
            cls.methods.update(parent.methods)
            cls.complete &= parent.complete
            cls.init = parent.init or cls.init
        else:
            cls.complete = False
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            fn = _function(stmt, method=True)
            cls.methods[stmt.name] = fn
            if stmt.name == "__init__":
                cls.init = fn
            if stmt.name in ("__getattr__", "__getattribute__"):
                cls.complete = False
        elif isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                if isinstance(t, ast.Name):  # e.g. `push = apply` aliases a method
                    cls.methods.setdefault(t.id, FunctionInfo(t.id, [], True, True))
    done[name] = cls
    return cls
