"""Backends: one module per engine behind the :class:`pipec.backends.base.Backend` interface.

Engines are imported lazily, only when a backend is asked for, so the compiler and the
static commands never import Dask, Ray or Spark.
"""

from __future__ import annotations

import importlib
import importlib.util

from pipec.dsl.diagnostics import UsageError, did_you_mean

# name -> (module, class, the pip extra that installs its engine)
REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "local": ("pipec.backends.local", "LocalBackend", None),
    "spark": ("pipec.backends.spark", "SparkBackend", "spark"),
    "ray": ("pipec.backends.ray", "RayBackend", "ray"),
    "dask": ("pipec.backends.dask", "DaskBackend", "dask"),
}

# extra -> the module whose presence says the engine is installed
_ENGINE_MODULE = {"dask": "distributed", "ray": "ray", "spark": "pyspark"}

# The embedded default engine: a local Dask cluster (no JVM, no cluster to set up).
DEFAULT_BACKEND = "dask"


def backend_class(name: str):
    """The Backend subclass registered as ``name``."""
    if name not in REGISTRY:
        raise UsageError(f"unknown backend `{name}`",
                         did_you_mean(name, REGISTRY) or f"choose one of: {', '.join(REGISTRY)}")
    module_name, cls_name, _extra = REGISTRY[name]
    return getattr(importlib.import_module(module_name), cls_name)


def get_backend(name: str, **options):
    """An instance of backend ``name`` configured with ``options`` (e.g. ``address``).
    Raises UsageError, naming the pip extra, when the backend's engine is not installed."""
    cls = backend_class(name)
    extra = REGISTRY[name][2]
    if extra is not None and importlib.util.find_spec(_ENGINE_MODULE[extra]) is None:
        raise UsageError(f"backend `{name}` needs its engine, which is not installed",
                         f"pip install 'pipec[{extra}]' (or choose another backend with --backend)")
    return cls(**options)
