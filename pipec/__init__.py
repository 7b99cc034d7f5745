"""pipec: pipelines that mix data-parallel stages with stateful actors, compiled to Dask,
Ray or Spark.

The Python API is ``from pipec import load`` (see :mod:`pipec.api`). The layers below
it are importable on their own, top-down: ``pipec.grammar`` (the Lark grammar),
``pipec.dsl`` (parser, AST, diagnostics, formatter), ``pipec.compiler`` (AST -> IR,
checks), ``pipec.backends`` (physical plan, shared runtime, one folder per engine).
``load`` is imported lazily, so ``import pipec.compiler.ir`` stays cheap.
"""

from __future__ import annotations

from pathlib import Path as _Path

# In a source checkout the layers are the checkout's top-level folders. Looking there
# first makes any checkout (a git worktree, say) import its own layers, whichever
# checkout was installed in editable mode; an installed wheel has them inside pipec/.
_CHECKOUT = _Path(__file__).resolve().parent.parent
if (_CHECKOUT / "grammar" / "pipe.lark").is_file() and (_CHECKOUT / "pipec").is_dir():
    __path__.append(str(_CHECKOUT))

__all__ = ["load", "Pipeline", "RunResult"]


def __getattr__(name: str):
    if name in ("load", "Pipeline"):
        from pipec import api
        return getattr(api, name)
    if name == "RunResult":
        from pipec.backends.base import RunResult
        return RunResult
    raise AttributeError(f"module 'pipec' has no attribute {name!r}")
