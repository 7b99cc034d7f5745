"""The engines the test session shares: one per backend, started on first use.

Starting Ray or Spark costs seconds, so every test file reuses one runtime per session
(``engine_options(backend)`` starts it lazily; ``shutdown_all()`` runs at session end,
from tests/conftest.py). Every registered backend (the ``pipec.backends`` entry points)
is in ``BACKENDS``, so a new one joins the conformance suites by registering; one whose
engine needs a shared session for the tests adds a starter to ``_STARTERS``.
"""

from __future__ import annotations

from typing import Any, Callable

from pipec.backends import names

BACKENDS = names()

# backend -> function starting the engine once and returning run options (e.g. address)
_STARTERS: dict[str, Callable[[], dict[str, Any]]] = {}
_STARTED: dict[str, dict[str, Any]] = {}
_STOPPERS: list[Callable[[], None]] = []


def _start_dask() -> dict[str, Any]:
    """One quiet local Dask cluster for the session: 2 worker processes x 1 thread."""
    import logging
    from distributed import Client, LocalCluster
    from pipec.backends.dask.engine import LocalShape
    shape = LocalShape(workers=2, threads=1, memory=2 * 2**30)
    cluster = LocalCluster(n_workers=shape.workers, threads_per_worker=shape.threads, processes=True,
                           memory_limit=shape.memory, resources=shape.resources, dashboard_address="127.0.0.1:0",
                           silence_logs=logging.CRITICAL, host="127.0.0.1")
    client = Client(cluster)

    def stop():
        client.close()
        cluster.close()
    on_shutdown(stop)
    return {"client": client}


_STARTERS["dask"] = _start_dask


def _start_ray() -> dict[str, Any]:
    """One quiet Ray runtime for the session (2 CPUs, no dashboard); every run reuses the
    Ray already initialised in this process, so no options are needed."""
    from pipec.backends.ray.engine import start_runtime, stop_runtime
    start_runtime(num_cpus=2)
    on_shutdown(stop_runtime)
    return {}


_STARTERS["ray"] = _start_ray


def _start_spark() -> dict[str, Any]:
    """One quiet SparkContext for the session (local[2,3]: 2 cores, 3 attempts per task,
    UI off, JVM output in a log file); every run reuses the active context."""
    import tempfile
    from pipec.backends.spark.session import start
    session = start("local[2,3]", log_path=tempfile.mkstemp(prefix="pipec-tests-spark-", suffix=".log")[1])
    on_shutdown(session.stop)
    return {}


_STARTERS["spark"] = _start_spark

def engine_options(backend: str) -> dict[str, Any]:
    """Options for ``Pipeline.run`` that reach this session's engine for ``backend``."""
    if backend not in _STARTED:
        starter = _STARTERS.get(backend)
        _STARTED[backend] = starter() if starter else {}
    return _STARTED[backend]


def joining_env(backend: str) -> dict[str, str]:
    """Environment variables that make a ``pipec run`` subprocess join this session's
    engine for ``backend`` (started if need be) instead of starting one of its own:
    cheaper than a second engine beside the session's. Empty where a process cannot
    join it (Spark's session lives in this process)."""
    if backend == "dask":
        return {"DASK_SCHEDULER_ADDRESS": engine_options(backend)["client"].scheduler.address}
    if backend == "ray":
        engine_options(backend)
        import ray
        return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return {}


def on_shutdown(fn: Callable[[], None]) -> None:
    _STOPPERS.append(fn)


def shutdown_all() -> None:
    while _STOPPERS:
        try:
            _STOPPERS.pop()()
        except Exception:  # a failing shutdown must not hide the test results
            pass


def stop_processes(procs: list, timeout: float) -> None:
    """Stop processes a test started (a scheduler and its workers, say): SIGTERM to each,
    newest first, then SIGKILL to any still running after ``timeout`` seconds."""
    import subprocess
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a head node a test starts)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
