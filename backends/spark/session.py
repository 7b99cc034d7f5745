"""The SparkContext pipec runs on: reused when one is active, otherwise started quietly.

Quiet means the terminal shows pipec's own progress and summary only: the JVM's output
(log4j, the launcher's warnings, the console progress bar, tasks' prints) goes to a log
file, named in every error that needs it, and the Spark UI is off unless asked for.

Workers must run the driver's Python (``PYSPARK_PYTHON``) and see the user's modules: on a
local master they share the driver's filesystem, so the module folders are put on their
path; on a cluster the modules are zipped and shipped with ``SparkContext.addPyFile``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipec.compiler import ir
from pipec.dsl.diagnostics import UsageError

APP_NAME = "pipec"
# Spark's cluster default for task attempts; the embedded master asks for at least this.
MIN_TASK_ATTEMPTS = 4


# Where this process's Spark JVM writes its output (set when pipec launched it).
_JVM_LOG: list[str] = []


class SparkUnavailable(UsageError):
    """Spark cannot start here (no Java, wrong Java, a JVM that exits at once)."""


@dataclass
class Session:
    """A SparkContext and whether pipec started it (and so must stop it)."""

    sc: object
    owned: bool
    log: str | None

    @property
    def master(self) -> str:
        return self.sc.master

    @property
    def local(self) -> bool:
        return is_local(self.sc.master)

    def stop(self) -> None:
        if self.owned:
            stop(self.sc)


def master_of(explicit: str | None) -> str | None:
    """The master to run on, found where Spark users set it: ``--address``, else the
    ``MASTER`` variable (which spark-submit also reads), else ``spark.master`` in
    ``spark-defaults.conf`` (in ``SPARK_CONF_DIR``, or ``SPARK_HOME/conf``); None means
    the active context or the embedded ``local[N,F]`` master."""
    if explicit:
        return explicit
    if os.environ.get("MASTER"):
        return os.environ["MASTER"]
    folder = os.environ.get("SPARK_CONF_DIR") or (
        os.path.join(os.environ["SPARK_HOME"], "conf") if os.environ.get("SPARK_HOME") else None)
    if folder:
        try:
            lines = Path(folder, "spark-defaults.conf").read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        for line in lines:  # "key  value", whitespace between; '#' starts a comment
            words = line.split(None, 1)
            if len(words) == 2 and words[0] == "spark.master":
                return words[1].strip()
    return None


def embedded_master(max_retries: int = 0) -> str:
    """``local[N,F]``: N cores, F attempts per task. Plain ``local[N]`` never retries a
    task, so a worker process that crashes would fail the run at once."""
    return f"local[{os.cpu_count() or 2},{max(MIN_TASK_ATTEMPTS, max_retries + 1)}]"


def is_local(master: str) -> bool:
    """True for masters whose workers share this machine's filesystem and interpreter
    (``local``, ``local[N]``, ``local[N,F]``), not ``local-cluster`` or a real cluster."""
    return master == "local" or master.startswith("local[")


def active():
    """The SparkContext active in this process, if any (without importing Spark twice)."""
    if "pyspark" not in sys.modules:
        return None
    from pyspark import SparkContext
    return SparkContext._active_spark_context


def session(address: str | None, log_path: str | None = None, max_retries: int = 0,
            ui: bool = False) -> Session:
    """The context to run on: the active one when ``address`` is None or names its
    master, else a new one for ``address`` (default: the embedded ``local[N,F]``)."""
    current = active()
    if current is not None:
        if address is None or address == current.master:
            return Session(current, owned=False, log=_JVM_LOG[0] if _JVM_LOG else None)
        raise UsageError(f"this process already runs a SparkContext on `{current.master}`, "
                         f"so pipec cannot start one on `{address}`",
                         "stop that context first, or leave out --address to use it")
    master = address or embedded_master(max_retries)
    return start(master, log_path, ui=ui)


def start(master: str, log_path: str | None = None, ui: bool = False, conf: dict | None = None) -> Session:
    """Start a SparkContext on ``master`` with its JVM output in ``log_path``."""
    _check_java()
    _check_reachable(master)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if is_local(master) or master.startswith("local-cluster"):
        # Bind to loopback: no exposure on the network, and no hostname warning.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark import SparkConf, SparkContext
    settings = {
        "spark.app.name": APP_NAME,
        "spark.master": master,
        "spark.ui.enabled": "true" if ui else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.pyspark.python": os.environ["PYSPARK_PYTHON"],
        **(conf or {}),
    }
    if is_local(master) or master.startswith("local-cluster"):
        # Workers run this machine's Python, where pipec is installed: fork them warm.
        settings.setdefault("spark.python.daemon.module", "pipec.backends.spark.daemon")
    spark_conf = SparkConf()
    for key, value in settings.items():
        spark_conf.set(key, value)
    log = log_path or os.path.join(tempfile.gettempdir(), f"pipec-spark-{os.getpid()}.log")
    gateway = None
    if SparkContext._gateway is not None:
        log = _JVM_LOG[0] if _JVM_LOG else None  # one JVM per process: its output stays where it went
    else:
        from pyspark.java_gateway import launch_gateway
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            try:
                gateway = launch_gateway(spark_conf, popen_kwargs={"stdout": fh, "stderr": fh})
            except Exception as exc:
                raise SparkUnavailable(f"Spark's JVM did not start ({type(exc).__name__}: {exc})",
                                       f"its output is in {log}:\n{_tail(log)}") from None
        _JVM_LOG[:] = [log]
    try:
        with warnings.catch_warnings():
            # PySpark warns on import about the pandas version (pipec's RDDs never use pandas).
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyspark\..*")
            sc = SparkContext(conf=spark_conf, gateway=gateway)
    except Exception as exc:
        raise SparkUnavailable(f"cannot start Spark on `{master}`: {_first_line(exc)}",
                               f"the Spark log is {log}") from None
    sc.setLogLevel("WARN")
    return Session(sc, owned=True, log=log)


def stop(sc) -> None:
    """Stop ``sc`` and remove the work folder a ``local-cluster`` master leaves behind."""
    try:
        app, master = sc.applicationId, sc.master
    except Exception:  # stopped already (a lost master stops its context)
        app, master = None, ""
    sc.stop()
    if master.startswith("local-cluster"):
        # The in-process workers write executor logs to SPARK_HOME/work/APP (not settable).
        from pyspark.find_spark_home import _find_spark_home
        shutil.rmtree(Path(_find_spark_home()) / "work" / app, ignore_errors=True)


def _check_java() -> None:
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    hint = "Spark needs Java 17 or newer: install openjdk-17-jre-headless (Debian, Ubuntu) or set JAVA_HOME"
    if not java or not os.path.exists(java):
        raise SparkUnavailable("the spark backend needs Java, and `java` was not found", hint)
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SparkUnavailable(f"cannot run {java}: {exc}", hint) from None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if found:
        major = int(found.group(1)) if found.group(1) != "1" else int(found.group(2) or 0)
        if major < 17:
            raise SparkUnavailable(f"the spark backend needs Java 17 or newer, and {java} is Java {major}", hint)


def _check_reachable(master: str) -> None:
    """A standalone master that does not answer: say so now (Spark itself would retry for
    a minute in the background, then stop the context under the running pipeline)."""
    if not master.startswith("spark://"):
        return
    for address in master[len("spark://"):].split(","):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
            return
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
    raise SparkUnavailable(f"cannot reach the Spark master at {master} ({reason})",
                           "start it (sbin/start-master.sh) or check --address; without --address pipec "
                           "runs an embedded local master")


def _tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(text[-lines:]) or "(no output)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---- the user's modules on the workers -------------------------------------------------------

_SHIPPED: dict[int, set[str]] = {}  # id(SparkContext) -> archives added to it
_ARCHIVE_DIR: list[str] = []


def user_modules(graph: ir.IR) -> list[str]:
    """Top-level names of the Python modules the pipeline names (``examples``, ``m``)."""
    names = set()
    for _, op in graph.items():
        for attr in ("fn", "by", "cls"):
            ref = getattr(op, attr, None)
            if isinstance(ref, ir.FnRef):
                names.add(ref.module.split(".")[0])
    return sorted(names)


def module_archive(graph: ir.IR) -> tuple[str, bytes] | None:
    """A zip of the user's modules found in the pipeline's module folders (``.py`` files
    only), named by a hash of its content; None when there is nothing to ship."""
    roots = [Path(r) for r in graph.info.module_paths()]
    files: dict[str, Path] = {}
    for name in user_modules(graph):
        for root in roots:
            single, package = root / f"{name}.py", root / name
            if single.is_file():
                files.setdefault(f"{name}.py", single)
                break
            if package.is_dir():
                for path in sorted(package.rglob("*.py")):
                    if "__pycache__" not in path.parts:
                        files.setdefault(path.relative_to(root).as_posix(), path)
                break
    if not files:
        return None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, files[arcname].read_bytes())
    data = buffer.getvalue()
    return f"pipec-modules-{hashlib.sha256(data).hexdigest()[:16]}.zip", data


def ship_modules(sc, graph: ir.IR) -> str | None:
    """Ship the user's modules to the executors; returns the archive's name."""
    archive = module_archive(graph)
    if archive is None:
        return None
    name, data = archive
    shipped = _SHIPPED.setdefault(id(sc), set())
    if name not in shipped:
        if not _ARCHIVE_DIR:
            _ARCHIVE_DIR.append(tempfile.mkdtemp(prefix="pipec-modules-"))
        path = os.path.join(_ARCHIVE_DIR[0], name)
        Path(path).write_bytes(data)
        sc.addPyFile(path)
        shipped.add(name)
    return name
