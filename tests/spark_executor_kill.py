"""Run examples/train.pipe on ``local-cluster[2,1,1024]`` (two executor JVMs) and kill one
executor with SIGKILL while a round's job runs. Used by tests/test_spark.py in its own
process, because a local-cluster master needs its own SparkContext.

    python tests/spark_executor_kill.py WORKDIR EPOCHS ROWS KILL_ROUND

Then runs a stage that asks for resources (a stage-level resource profile, which a
local-cluster master supports). Prints one JSON line: the weights file, the executor
killed, the Spark log and the resource-profiled stage's output.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def executors(jvm_pid: int) -> list[int]:
    """Executor JVMs started by the in-process workers of the driver JVM ``jvm_pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == jvm_pid and b"CoarseGrainedExecutorBackend" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


class KillDuringRound:
    """A Progress that kills one executor shortly after round ``at`` starts."""

    def __init__(self, jvm_pid: int, at: int):
        self.jvm_pid, self.at = jvm_pid, at
        self.killed: int | None = None
        self.alive_before: list[int] = []

    def stage(self, name, tasks):
        pass

    def advance(self, name, done=1):
        pass

    def round(self, loop, index, count):
        if index == self.at and self.killed is None:
            threading.Timer(0.05, self._kill).start()

    def _kill(self):
        self.alive_before = executors(self.jvm_pid)
        if self.alive_before:
            self.killed = self.alive_before[0]
            os.kill(self.killed, signal.SIGKILL)


def main(workdir: str, epochs: int, rows: int, kill_round: int) -> None:
    os.chdir(workdir)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pipec.backends.spark.session import start
    from pipec import load

    log = str(Path(workdir) / "spark-cluster.log")
    session = start("local-cluster[2,1,1024]", log_path=log)
    try:
        sc = session.sc
        deadline = time.time() + 120
        while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.time() < deadline:
            time.sleep(0.2)  # the driver and both executors
        progress = KillDuringRound(sc._gateway.proc.pid, kill_round)
        result = load("examples/train.pipe").run(backend="spark", params={"epochs": epochs, "rows": rows},
                                                 progress=progress)
        # While the cluster is up: a stage asking for resources runs under a resource profile.
        Path("res_mod.py").write_text("def f(x):\n    return x * 2\n")
        Path("res.pipe").write_text("use res_mod as m\npipeline res() {\n    source xs = range(6) partitions 2\n"
                                    "    stage ys = map m.f over xs resources { cpus 1 }\n"
                                    "    sink out = collect(ys)\n}\n")
        profiled = load("res.pipe").run(backend="spark").outputs["out"]
        print(json.dumps({"weights": result.files["weights"], "killed": progress.killed,
                          "executors": progress.alive_before, "log": log, "profiled": profiled}))
    finally:
        session.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
