"""Ray's helper processes must not outlive a driver that pipec started them for.

An embedded Ray runtime's raylet and GCS share the driver's fate, but the agents the
raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) notice the raylet's
death and then block reporting it to the GCS, which is dead too: measured with Ray 2.60,
they were still alive 40 s after the driver was killed. So when pipec starts an embedded
runtime it also starts this small watcher, in a session of its own (a signal to the
driver's process group does not reach it). While the driver lives, the watcher notes
every process descended from it; when the driver is gone (the pipe on the watcher's
stdin closes, however the driver died) it kills those still running and exits. A
worker the raylet started in the watcher's last interval is not among the descendants
it noted, and once the raylet is dead it is no one's descendant: such workers are found
by the raylet's pid, which Ray puts in every worker's environment (``RAY_RAYLET_PID``).

    python -m pipec.backends.ray.reaper DRIVER_PID      (started by engine.start_runtime)

Linux only (it reads /proc); elsewhere nothing is started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

# How often the watcher notes the driver's descendants. A process started and orphaned
# within one interval is missed; Ray's workers exit on their own when their raylet dies.
INTERVAL = 0.5
# The programs an embedded Ray runtime starts as children of the driver.
RAY_DAEMONS = ("/raylet", "/gcs_server")


def start(driver_pid: int) -> subprocess.Popen | None:
    """Start the watcher for ``driver_pid`` (this process); None where /proc is missing.
    The driver keeps the returned process's stdin open for as long as it lives."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "pipec.backends.ray.reaper", str(driver_pid)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid``, or None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _program(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def ray_processes(driver: int) -> dict[int, int]:
    """Ray's processes below ``driver`` (its raylet and GCS, and everything below them:
    agents, workers): pid -> start time. Other children of the driver (another engine's
    workers in the same process) are not Ray's to reap."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry), stat[1]))
    found = {pid: started for pid, started in children.get(driver, [])
             if _program(pid).endswith(RAY_DAEMONS)}
    todo = list(found)
    while todo:
        for pid, started in children.get(todo.pop(), []):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def workers_of(raylets: set[int]) -> list[int]:
    """The processes whose environment names one of ``raylets`` as their raylet."""
    wanted = {f"RAY_RAYLET_PID={pid}".encode() for pid in raylets}
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if wanted.intersection(environ):
                found.append(int(entry))
    return found


def watch(driver: int) -> None:
    """Note Ray's processes below the driver until stdin closes, then kill those still
    running (each checked by its start time, so a reused pid is never hit), and any
    worker of their raylets they did not include."""
    seen: dict[int, int] = {}
    raylets: set[int] = set()
    while True:
        found = ray_processes(driver)
        raylets.update(pid for pid in found if pid not in seen and _program(pid).endswith("/raylet"))
        seen.update(found)
        ready, _, _ = select.select([sys.stdin], [], [], INTERVAL)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    for pid, started in seen.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == started:
            _kill(pid)
    for pid in workers_of(raylets):
        _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver
    watch(int(sys.argv[1]))
