"""The Ray runtime pipec runs on: embedded, joined with ``--address``, or already running
in this process. Settings are chosen on purpose so a run is quiet."""

from __future__ import annotations

import logging
import os
import socket
import sys


from pipec.dsl.diagnostics import PipecError


class RayEngineError(PipecError):
    """The Ray runtime could not be started or reached."""


_OWNED = {"started": False, "reaper": None}


def configure_environment() -> None:
    """Settings that must be in place before Ray starts, chosen on purpose.

    Ray 2.60 turns token authentication on for every new local cluster and warns about it
    on each start unless ``RAY_AUTH_MODE`` says what is wanted. pipec asks for it
    explicitly (the token lives in ~/.ray/auth_token, shared by the driver and `ray start`
    on this machine); a value the user set is kept. Ray caches its configuration when it
    is imported, so the cached copy is refreshed if Ray was imported already.
    """
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray._raylet" in sys.modules:
            from ray._raylet import Config
            Config.initialize("")
    # Ray's usage-statistics prompt and its deduplication hints are terminal noise.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# The top-level packages Ray's dashboard imports (ray/dashboard/optional_deps.py, Ray
# 2.60). Looking them up imports nothing; Ray's own check imports them all (aiohttp,
# grpc, OpenTelemetry...), 0.15 s of every embedded start even where one is missing.
_DASHBOARD_PACKAGES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "prometheus_client")


def _dashboard_installed() -> bool:
    """Whether this Ray can serve its dashboard (``pip install 'ray[default]'``): an
    embedded runtime starts it only then, since without its packages Ray would only warn.
    A missing package answers at once; with all of them present Ray's own check decides."""
    import importlib.util
    if any(importlib.util.find_spec(name) is None for name in _DASHBOARD_PACKAGES):
        return False
    try:
        from ray._private.utils import get_dashboard_dependency_error
        return get_dashboard_dependency_error() is None
    except Exception:  # a Ray that checks elsewhere: start none, as before
        return False


def start_runtime(address: str | None = None, num_cpus: int | None = None,
                  runtime_env: dict | None = None) -> bool:
    """Connect this process to Ray; True if this call started (or joined) it.

    Reuses a Ray already initialised in this process. Otherwise joins ``address`` (or
    ``RAY_ADDRESS``), or starts an embedded local runtime sized to the machine (or to
    ``num_cpus``): its dashboard only where Ray's dashboard is installed (``ray[default]``;
    the run's header then prints its address), worker output kept off the terminal, logs
    at ERROR.
    """
    configure_environment()
    import ray
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address and address != "auto" and "://" not in address and not _same_address(address, current):
            raise RayEngineError(f"this process is already connected to the Ray cluster at {current}, "
                                 f"so it cannot join {address}\n"
                                 "  = hint: leave out --address to use the connected cluster, or run pipec in a "
                                 "fresh process")
        return False
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    quiet = dict(include_dashboard=_dashboard_installed(), log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True, namespace="pipec")
    if target != "local":
        _probe(target)
    try:
        if target == "local":
            ray.init(address="local", num_cpus=num_cpus, **quiet)
        else:
            ray.init(address=target, runtime_env=runtime_env or None, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "start a local Ray runtime" if target == "local" else f"reach the Ray cluster at {target}"
        raise RayEngineError(f"cannot {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                             + ("" if target == "local" else
                                "\n  = hint: start one with `ray start --head`, or leave out --address "
                                "(and RAY_ADDRESS) for an embedded runtime")) from None
    _silence_raylet_messages()
    _OWNED["started"] = True
    if target == "local":
        from pipec.backends.ray import reaper
        _OWNED["reaper"] = reaper.start(os.getpid())  # Ray's helpers go when this process goes
    return True


def _same_address(a: str, b: str) -> bool:
    """Whether two HOST:PORT addresses name the same Ray head (a loopback host matches
    this machine's own address, as Ray reports its GCS by the node's IP)."""
    def host_port(address: str) -> tuple[str, str]:
        host, _, port = address.rpartition(":")
        try:
            host = socket.gethostbyname(host or "127.0.0.1")
        except OSError:
            pass
        return host, port
    (ha, pa), (hb, pb) = host_port(a), host_port(b)
    return pa == pb and (ha == hb or ha.startswith("127.") or hb.startswith("127."))


def _probe(address: str) -> None:
    """Fail fast on an address nothing listens on (Ray itself retries for minutes)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        reason = "not HOST:PORT" if isinstance(exc, ValueError) else (exc.strerror or str(exc))
        raise RayEngineError(f"cannot reach the Ray cluster at {address}: {reason}\n"
                             "  = hint: start one with `ray start --head`, or leave out --address (and "
                             "RAY_ADDRESS) for an embedded runtime") from None


def stop_runtime() -> None:
    """Shut down (or leave) the Ray runtime this module started."""
    if not _OWNED["started"]:
        return
    import ray
    _OWNED["started"] = False
    if ray.is_initialized():
        if _OWNED["reaper"] is not None:  # an embedded runtime: its head is this machine's
            _stop_autoscaler_monitor()
        ray.shutdown()
    watcher, _OWNED["reaper"] = _OWNED["reaper"], None
    if watcher is not None:  # it reaps what the shutdown left, and exits
        watcher.stdin.close()
        watcher.wait()


def _stop_autoscaler_monitor() -> None:
    """Stop the autoscaler's monitor of an embedded runtime at once. ``ray.shutdown``
    stops the head's processes one after another, each asked to exit and given a second
    before it is killed, and the monitor (which scales nothing on one machine) answers
    only after the GCS it reports to has gone: measured on Ray 2.60, the whole shutdown
    1.16 s, of which 1.01 s waiting for the monitor. Ray's own node object stops it; a
    Ray without that method keeps its usual shutdown."""
    try:
        from ray._private import ray_constants
        from ray._private import worker as ray_worker
        node = ray_worker._global_node
        if node is not None and node.head:
            node._kill_process_type(ray_constants.PROCESS_TYPE_MONITOR, allow_graceful=False,
                                    check_alive=False, wait=True)
    except Exception:
        pass


def _silence_raylet_messages() -> None:
    """Ray prints the raylet's error messages (a worker killed, say) on the driver's
    stdout even with ``log_to_driver=False``. pipec reports failures itself, naming the
    stage, so those lines are switched off with the flag Ray's own debugger uses."""
    import ray._private.worker as ray_worker
    if hasattr(ray_worker, "_worker_logs_enabled"):
        ray_worker._worker_logs_enabled = False
