"""Backends: one :class:`pipec.backends.base.Backend` per engine, found through the
``pipec.backends`` entry-point group.

pipec's own backends register there too (see ``pyproject.toml``), so a third party adds
an engine by declaring ``[project.entry-points."pipec.backends"] name = "pkg:MyBackend"``
in its own package, without editing pipec. Engines are imported lazily, only when a
backend runs, so the compiler and the static commands never import Dask, Ray or Spark.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

from pipec.dsl.diagnostics import UsageError, did_you_mean

# The embedded default engine: a local Dask cluster (no JVM, no cluster to set up).
DEFAULT_BACKEND = "dask"

GROUP = "pipec.backends"

# pipec's own backends in the order they are listed; others follow by name.
_BUILTIN_ORDER = ("local", "dask", "ray", "spark")


@lru_cache(maxsize=1)
def registry() -> dict:
    """Backend name -> its entry point (not loaded), pipec's own first."""
    from importlib.metadata import entry_points
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    order = [n for n in _BUILTIN_ORDER if n in found] + sorted(n for n in found if n not in _BUILTIN_ORDER)
    return {name: found[name] for name in order}


def names() -> list[str]:
    """The registered backends' names."""
    return list(registry())


def backend_class(name: str):
    """The Backend subclass registered as ``name``; UsageError for an unknown name."""
    known = registry()
    if name not in known:
        raise UsageError(f"unknown backend `{name}`",
                         did_you_mean(name, known) or f"choose one of: {', '.join(known)}")
    return known[name].load()


def get_backend(name: str, **options):
    """An instance of backend ``name`` configured with ``options`` (``address``, or an
    engine's own session options). Raises UsageError, naming the pip extra, when the
    backend's engine is not installed."""
    cls = backend_class(name)
    if cls.engine_module is not None and importlib.util.find_spec(cls.engine_module) is None:
        raise UsageError(f"backend `{name}` needs its engine, which is not installed",
                         f"pip install 'pipec[{cls.extra}]' (or choose another backend with --backend)")
    return cls(**options)
