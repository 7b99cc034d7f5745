"""The engines the test session shares: one per backend, started on first use.

Starting Ray or Spark costs seconds, so every test file reuses one runtime per session
(``engine_options(backend)`` starts it lazily; ``shutdown_all()`` runs at session end,
from tests/conftest.py). A backend joins the conformance suite by being listed in
``BACKENDS``.
"""

from __future__ import annotations

from typing import Any, Callable

BACKENDS = ["local", "ray"]

# backend -> function starting the engine once and returning run options (e.g. address)
_STARTERS: dict[str, Callable[[], dict[str, Any]]] = {}
_STARTED: dict[str, dict[str, Any]] = {}
_STOPPERS: list[Callable[[], None]] = []


def _start_ray() -> dict[str, Any]:
    """One quiet Ray runtime for the session (2 CPUs, no dashboard); every run reuses the
    Ray already initialised in this process, so no options are needed."""
    from backends.ray_backend import start_runtime, stop_runtime
    start_runtime(num_cpus=2)
    on_shutdown(stop_runtime)
    return {}


_STARTERS["ray"] = _start_ray


def engine_options(backend: str) -> dict[str, Any]:
    """Options for ``Pipeline.run`` that reach this session's engine for ``backend``."""
    if backend not in _STARTED:
        starter = _STARTERS.get(backend)
        _STARTED[backend] = starter() if starter else {}
    return _STARTED[backend]


def on_shutdown(fn: Callable[[], None]) -> None:
    _STOPPERS.append(fn)


def shutdown_all() -> None:
    while _STOPPERS:
        try:
            _STOPPERS.pop()()
        except Exception:  # a failing shutdown must not hide the test results
            pass
