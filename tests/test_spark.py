"""The Spark backend: its plans, its gaps, how it fails and how it survives failure.

Every test runs real Spark: one SparkContext for the session (tests/engines.py), plus a
few processes of their own where a test must kill a driver or use another master.
Byte-identity with the reference backend is the conformance suite's job
(tests/test_conformance.py); these tests cover what is particular to Spark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipec import load
from pipec.dsl.diagnostics import PipelineRuntimeError, UnsupportedOnBackend, UsageError
from tests.conftest import EXAMPLES, ROOT
from tests.engines import engine_options

EXAMPLE_NAMES = ["infer", "kmeans", "pagerank", "train", "wordcount"]


@pytest.fixture
def spark():
    """The session's SparkContext (started on first use)."""
    engine_options("spark")
    from pipec.backends.spark.session import active
    return active()


def pipe(write_pipe, body: str, module: str, source: str, params: str = ""):
    """A pipeline using ``module`` (unique per test: the driver imports it for good)."""
    return write_pipe(f"use {module} as m\npipeline p({params}) {{\n{body}\n}}\n", **{module: source})


def cli(*args, cwd=None, timeout=300, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipec", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---- compile time: gaps, warnings, plans ------------------------------------------------------------

HANDLE = '''
class Counter:
    def __init__(self):
        self.total = 0
    def add(self, x):
        self.total += x
        return self.total
    def value(self):
        return self.total

def push(x, server):
    server.add(x)
    return x
'''


def test_actor_handle_is_refused_before_anything_runs(write_pipe):
    path = pipe(write_pipe, "actor c = m.Counter()\nsource xs = range(4) partitions 2\n"
                            "stage ys = map m.push over xs with server = c effectful\n"
                            "value n = count(ys)\nsink out = c.value()", "m_handle", HANDLE)
    with pytest.raises(UnsupportedOnBackend) as err:
        load(path).check("spark")
    text = str(err.value)
    assert "backend `spark` does not support an actor handle passed into a stage" in text
    assert "Spark has tasks but no actors" in text and "graph level" in text and "engine" in text
    result = cli("check", str(path), "--backend", "spark")
    assert result.returncode == 1 and "p.pipe:5:" in result.stderr and "error: backend `spark`" in result.stderr


def test_effectful_and_resources_warn_where_spark_differs(write_pipe):
    path = pipe(write_pipe, "source xs = range(4) partitions 2\n"
                            "stage ys = map m.f over xs effectful\n"
                            "stage zs = map m.f over ys resources { cpus 2 }\nsink out = collect(zs)",
                "m_warn", "def f(x):\n    return x\n")
    warnings = [d.message for d in load(path).check("spark")]
    assert any("`ys` is effectful" in w and "re-runs the tasks of a lost executor" in w for w in warnings)
    assert any("`zs` asks for resources (cpus 2)" in w and "resource profile" in w for w in warnings)


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_plan_golden(example, golden):
    """`pipec compile --backend spark` (text and JSON) and `pipec graph --backend spark`:
    the shared physical plan with Spark's mapping, made without PySpark."""
    from pipec.compiler import render
    plan = load(EXAMPLES / f"{example}.pipe").lower("spark")
    golden(f"spark/{example}.txt", plan.explain())
    golden(f"spark/{example}.json", json.dumps(plan.to_json(), indent=2) + "\n")
    golden(f"spark/{example}.dot", render.render(render.plan_drawing(plan), "dot"))


def test_plan_shows_fusion_caching_broadcasts_and_driver_steps():
    text = load(EXAMPLES / "train.pipe").lower("spark").explain()
    assert "not cached (read by every round of loop1): Spark holds its partitions already" in text
    assert "[cached: read by every round of loop1]" in load(EXAMPLES / "pagerank.pipe").lower("spark").explain()
    assert "grads/weights  data     an actor call's answer, read only by stages per round  [a broadcast]" in text
    # the gradient map and the fold run in one pass over each partition; the tree on the driver
    assert "grads-0        segment  map examples.linreg.gradient -> fold examples.linreg.add" in text
    assert "combine examples.linreg.add (in partition order)  [on the driver]" in text
    assert text.index("ps.weights(#0)") < text.index("grads-0") < text.index("ps.apply(#1)")
    wordcount = load(EXAMPLES / "wordcount.pipe").lower("spark").explain()
    assert "flat_map examples.text.words -> map examples.text.one -> combine by key" in wordcount
    assert "partitionBy shuffle on the stable key hash" in wordcount


def test_every_task_body_of_the_plan_has_a_spark_translation():
    """A body added to the planner needs its line in Spark's table (else runs refuse it)."""
    from pipec.backends.physical.planner import BODIES
    from pipec.backends.spark.driver import DRIVER_BODIES, RDD_BODIES
    assert sorted(BODIES) == sorted(RDD_BODIES + DRIVER_BODIES)


def test_compiling_imports_no_user_code(write_pipe):
    path = pipe(write_pipe, "source xs = m.items() partitions 3\nstage ys = map m.f over xs\n"
                            "value t = reduce m.add over ys\nsink out = t",
                "m_noimport", "raise RuntimeError('imported!')\ndef items():\n    return []\n"
                              "def f(x):\n    return x\ndef add(a, b):\n    return a + b\n")
    text = load(path).lower("spark").explain()
    assert "map m_noimport.f -> fold m_noimport.add (partial of t)" in text
    assert "m_noimport" not in sys.modules  # no engine either: test_behaviour checks that in a fresh process


# ---- running: errors, retries, timeouts, pools, modules ----------------------------------------------

FAULTS = '''
import os, time

def _bump(path):
    n = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as fh:
        fh.write(str(n))
    return n

def boom(x):
    raise ValueError(f"bad item {x}")

def flaky(x, marker, fails):
    if _bump(marker) <= fails:
        raise RuntimeError("transient")
    return x * 10

def crash_once(x, marker):
    if _bump(marker) == 1:
        os._exit(3)  # the Python worker dies: Spark itself must retry the task
    return x + 1

def slow(x):
    time.sleep(30)
    return x

def crash(x):
    os._exit(3)
'''


def run(path, **params):
    return load(path).run(backend="spark", params=params, **engine_options("spark"))


def test_user_error_names_stage_partition_and_line(write_pipe, spark):
    path = pipe(write_pipe, "source xs = range(4) partitions 2\nstage ys = map m.boom over xs\n"
                            "sink out = collect(ys)", "m_err", FAULTS)
    with pytest.raises(PipelineRuntimeError) as err:
        run(path)
    text = str(err.value)
    assert "in `ys`: ValueError: bad item 0 (partition 0)" in text
    assert "m_err.py:11 in boom" in text and "p.pipe:4:" in text


def test_retries_are_per_stage_and_effectful_stages_are_not_retried(write_pipe, spark, tmp_path):
    """local[2,3] would let Spark try every task 3 times; pipec holds each stage to its own count."""
    marker = tmp_path / "calls"
    body = ("source xs = range(1) partitions 1\nstage ys = map m.flaky over xs with marker = mk, fails = 2 {}\n"
            "sink out = collect(ys)")
    params = 'mk: str = "x"'
    ok = pipe(write_pipe, body.format("retries 2"), "m_retry", FAULTS, params)
    assert run(ok, mk=str(marker)).outputs["out"] == [0]
    assert marker.read_text() == "3"
    marker.unlink()
    strict = pipe(write_pipe, body.format("retries 1"), "m_retry", FAULTS, params)
    with pytest.raises(PipelineRuntimeError, match="RuntimeError: transient"):
        run(strict, mk=str(marker))
    assert marker.read_text() == "2"
    marker.unlink()
    effectful = pipe(write_pipe, body.format("retries 2 effectful"), "m_retry", FAULTS, params)
    with pytest.raises(PipelineRuntimeError, match="transient"):
        run(effectful, mk=str(marker))
    assert marker.read_text() == "1"


def test_crashed_worker_process_is_retried_by_spark(write_pipe, spark, tmp_path):
    marker = tmp_path / "crashes"
    path = pipe(write_pipe, "source xs = range(3) partitions 1\nstage ys = map m.crash_once over xs with marker = mk\n"
                            "sink out = collect(ys)", "m_crash", FAULTS, 'mk: str = "x"')
    assert run(path, mk=str(marker)).outputs["out"] == [1, 2, 3]
    assert int(marker.read_text()) >= 4  # the first attempt died on its first item


def test_a_job_spark_cannot_finish_is_reported_with_its_log(write_pipe, spark):
    path = pipe(write_pipe, "source xs = range(2) partitions 1\nstage ys = map m.crash over xs\n"
                            "sink out = collect(ys)", "m_dead", FAULTS)
    with pytest.raises(PipelineRuntimeError) as err:
        run(path)
    text = str(err.value)
    assert "in `ys`: the Spark job failed: task 0 failed 3 times: its Python worker process died" in text
    assert "Spark's log is" in text


def test_a_value_that_cannot_be_pickled_is_reported_with_its_cause(write_pipe, spark):
    """The cause (Python's pickling error) is in the message, not only in Spark's log."""
    module = "import threading\n\ndef lock(x):\n    return threading.Lock()\n\ndef f(x, v):\n    return x\n"
    path = pipe(write_pipe, "source xs = range(4) partitions 2\nstage locks = map m.lock over xs\n"
                            "sink out = collect(locks)", "m_pickle", module)
    with pytest.raises(PipelineRuntimeError) as err:
        run(path)
    text = str(err.value)
    assert "in `locks`: the output cannot be pickled" in text and "cannot pickle '_thread.lock' object" in text
    assert "p.pipe:4:" in text and "plain data" in text
    sent = pipe(write_pipe, "source xs = range(4) partitions 2\nvalue v = m.lock(1)\n"
                            "stage ys = map m.f over xs with v = v\nsink out = collect(ys)", "m_pickle", module)
    with pytest.raises(PipelineRuntimeError) as err:
        run(sent)
    assert "in `v`: a value cannot be pickled" in str(err.value) and "_thread.lock" in str(err.value)


def test_timeout_stops_the_stage(write_pipe, spark):
    path = pipe(write_pipe, "source xs = range(2) partitions 1\nstage ys = map m.slow over xs timeout 0.5\n"
                            "sink out = collect(ys)", "m_slow", FAULTS)
    start = time.perf_counter()
    with pytest.raises(PipelineRuntimeError, match=r"did not finish within its timeout of 0\.5 s"):
        run(path)
    assert time.perf_counter() - start < 20


POOL = '''
import os

class Model:
    def __init__(self, folder):
        open(os.path.join(folder, f"built-{os.getpid()}-{id(self)}"), "w").close()
    def predict(self, batch):
        return [(x, os.getpid()) for x in batch]
'''


def test_pool_members_are_logical_with_a_replica_per_python_worker_serving_one(write_pipe, spark, tmp_path):
    """Partition i is member i % 5's; a Python worker builds a replica of each member it
    serves, once, and reuses it for that member's later partitions."""
    folder = tmp_path / "built"
    folder.mkdir()
    path = pipe(write_pipe, "source xs = range(40) partitions 8\nactor pool models = m.Model(folder = d) x 5\n"
                            "stage ys = map_batches models.predict over xs\nsink out = collect(ys)",
                "m_pool", POOL, 'd: str = "x"')
    out = run(path, d=str(folder)).outputs["out"]
    assert [x for x, _ in out] == list(range(40))
    replicas = {(pid, x // 5 % 5) for x, pid in out}  # partition x // 5, served by member x // 5 % 5
    built = list(folder.iterdir())
    assert len(built) == len(replicas) < 8  # partitions 5, 6, 7 found a replica of their member
    assert {int(p.name.split("-")[1]) for p in built} == {pid for pid, _ in replicas}


REPLICAS = '''
import os, time

class Member:
    """Notes every pool-wide call it applies in a file of its own (one per replica)."""
    def __init__(self, folder):
        self.path = os.path.join(folder, f"{os.getpid()}-{id(self)}")
        self.calls = []
    def set(self, k):
        self.calls.append(k)
        with open(self.path, "a") as fh:
            fh.write(f"{k}\\n")
        return [os.getpid(), list(self.calls)]
    def tag(self, items):
        time.sleep(0.3)  # both task slots busy: the partitions go to two Python workers
        return [(x, os.getpid(), list(self.calls)) for x in items]
'''


def test_every_replica_of_a_member_applies_every_pool_wide_call_once_in_order(write_pipe, spark, tmp_path):
    """One member, served by two Python workers at once: two replicas, each its
    constructor plus every pool-wide call before what it serves, each applied once."""
    folder = tmp_path / "replicas"
    folder.mkdir()
    path = pipe(write_pipe, "source xs = range(8) partitions 8\nactor pool ms = m.Member(folder = d) x 1\n"
                            "ms.each.set(1)\nvalue two = ms.each.set(2)\n"
                            "sink first = collect(map_batches ms.tag over xs)\n"
                            "value three = ms.each.set(3)\nsink second = collect(map_batches ms.tag over xs)\n"
                            "sink answers = [two, three]",
                "m_replicas", REPLICAS, 'd: str = "x"')
    out = run(path, d=str(folder)).outputs
    assert [x for x, _, _ in out["first"]] == list(range(8)) == [x for x, _, _ in out["second"]]
    assert {tuple(calls) for _, _, calls in out["first"]} == {(1, 2)}
    assert {tuple(calls) for _, _, calls in out["second"]} == {(1, 2, 3)}
    servers = {pid for _, pid, _ in out["first"] + out["second"]}
    assert len(servers) >= 2  # a second replica of member 0
    logs = {p.name: p.read_text().split() for p in folder.iterdir()}
    assert len(logs) >= 2 and {int(name.split("-")[0]) for name in logs} >= servers
    for calls in logs.values():  # each replica: the calls in order, none twice
        assert calls in (["1", "2"], ["1", "2", "3"]), logs
    for pid in servers & {pid for _, pid, _ in out["second"]}:
        assert [c for name, c in logs.items() if int(name.split("-")[0]) == pid] == [["1", "2", "3"]]
    two, three = out["answers"]
    assert len(two) == len(three) == 1 and two[0][1] == [1, 2] and three[0][1] == [1, 2, 3]


def test_a_failing_pool_wide_call_is_reported_at_the_call_as_locally(write_pipe, spark):
    module = ("class M:\n    def __init__(self):\n        self.k = 1\n"
              "    def set_k(self, k):\n        raise ValueError(f'no k {k}')\n")
    path = pipe(write_pipe, "actor pool ds = m.M() x 2\nvalue ks = ds.each.set_k(4)\nsink out = ks",
                "m_each_err", module)
    errors = {}
    for backend in ("local", "spark"):
        with pytest.raises(PipelineRuntimeError) as err:
            load(path).run(backend=backend, **engine_options(backend))
        errors[backend] = str(err.value)
    assert errors["spark"] == errors["local"]
    assert "in `ds.each.set_k`: ValueError: no k 4" in errors["spark"] and "p.pipe:4:" in errors["spark"]
    assert "m_each_err.py:5 in set_k" in errors["spark"]


def test_edited_module_is_used_by_the_next_run(write_pipe, spark, tmp_path):
    """Spark reuses worker processes; a new run must not see the last run's module."""
    body = "source xs = range(4) partitions 2\nstage ys = map m.f over xs\nsink out = collect(ys)"
    path = pipe(write_pipe, body, "m_edit", "def f(x):\n    return x + 1\n")
    assert run(path).outputs["out"] == [1, 2, 3, 4]
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "m_edit2.py").write_text("def f(x):\n    return x + 100\n")
    (other / "p.pipe").write_text(f"use m_edit2 as m\npipeline p() {{\n{body}\n}}\n")
    assert run(other / "p.pipe").outputs["out"] == [100, 101, 102, 103]
    (tmp_path / "m_edit.py").write_text("def f(x):\n    return x + 1\n\ndef g(x):\n    return x\n")
    path2 = pipe(write_pipe, body.replace("m.f", "m.g"), "m_edit", (tmp_path / "m_edit.py").read_text())
    assert run(path2).outputs["out"] == [0, 1, 2, 3]


def test_modules_are_zipped_for_cluster_workers(write_pipe):
    from pipec.backends.spark.session import module_archive
    path = pipe(write_pipe, "source xs = range(4) partitions 2\nstage ys = map m.f over xs\nsink out = collect(ys)",
                "m_ship", "def f(x):\n    return x\n")
    import io
    import zipfile
    name, data = module_archive(load(path).ir)
    assert name.startswith("pipec-modules-") and zipfile.ZipFile(io.BytesIO(data)).namelist() == ["m_ship.py"]
    assert module_archive(load(path).ir) == (name, data)  # same content, same name


# ---- the command line: quiet output, resume after the driver died ---------------------------------------


def test_pipec_run_is_quiet(workdir):
    result = cli("run", "examples/wordcount.pipe", "--backend", "spark", "--run-dir", "run1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    noise = ("WARN", "INFO", "log4j", "SparkContext", "Using Spark", "WARNING", "Stage", "[Stage")
    assert not [n for n in noise if n in result.stdout + result.stderr], result.stderr
    assert "--resume" not in result.stderr  # wordcount has no loop, so there is nothing to resume
    assert "finished on spark" in result.stderr
    assert (workdir / "run1" / "spark.log").stat().st_size > 0  # Spark's output went here
    assert (workdir / "out" / "top.json").exists()


def test_a_run_borrows_the_active_context_and_leaves_it_running(write_pipe, spark):
    """SparkPlan.engine lends the run the session's context; the run does not stop it."""
    path = pipe(write_pipe, "source xs = range(6) partitions 3\nstage ys = map m.f over xs\nsink out = collect(ys)",
                "m_borrow", "def f(x):\n    return x * 3\n")
    plan = load(path).lower("spark")
    assert plan.run().outputs["out"] == [0, 3, 6, 9, 12, 15]
    from pipec.backends.spark.session import active
    assert plan.last_driver.session.sc is spark and not plan.last_driver.session.owned
    assert active() is spark and spark.parallelize([1, 2]).count() == 2  # still running


OWN_SESSION = """
import json, sys
from pipec import load
from pipec.backends.spark.session import active

class Seen:
    info = None
    def stage(self, name, tasks): pass
    def advance(self, name, done=1): pass
    def round(self, loop, index, count): pass
    def engine_ready(self, info): Seen.info = info

result = load("examples/wordcount.pipe").run(backend="spark", progress=Seen())
print(json.dumps({"dashboard": Seen.info["dashboard"], "after": active() is not None,
                  "log": (result.run_dir + "/spark.log"), "files": sorted(result.files)}))
"""


def test_a_run_starts_the_embedded_master_with_its_ui_and_stops_it(workdir):
    """No active context: the plan starts local[N,F] (the UI on when asked for), the JVM's
    output in the run's spark.log, and stops the context when the run ends."""
    proc = subprocess.run([sys.executable, "-c", OWN_SESSION], cwd=workdir, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "PIPEC_SPARK_UI": "1", "MASTER": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["dashboard"].startswith("http://") and report["after"] is False
    assert report["files"] == ["top_words"] and Path(workdir, report["log"]).stat().st_size > 0
    assert "WARN" not in proc.stdout + proc.stderr


def test_missing_java_is_reported_before_spark_starts(workdir):
    result = cli("run", "examples/wordcount.pipe", "--backend", "spark", cwd=workdir,
                 env={"JAVA_HOME": str(workdir / "no-java"), "MASTER": ""})
    assert result.returncode == 2
    assert "the spark backend needs Java, and `java` was not found" in result.stderr
    assert "openjdk-17" in result.stderr and "Traceback" not in result.stderr


def test_resume_is_refused_where_it_cannot_work(workdir, spark):
    pipeline = load("examples/train.pipe")
    pipeline.run(backend="spark", params={"epochs": 2, "rows": 2000}, run_dir="r1", **engine_options("spark"))
    with pytest.raises(UsageError, match="finished already"):
        pipeline.run(backend="spark", params={"epochs": 2, "rows": 2000}, run_dir="r1", resume=True)
    from pipec.backends.runtime import resume as resuming
    (Path("r1") / resuming.FINISHED).unlink()
    with pytest.raises(UsageError, match="different parameters"):
        pipeline.run(backend="spark", params={"epochs": 3, "rows": 2000}, run_dir="r1", resume=True)
    result = cli("run", "examples/train.pipe", "--resume", "r1", cwd=workdir)
    assert result.returncode == 2 and "ran on backend `spark`" in result.stderr  # a record resumes where it ran
    result = cli("run", "examples/train.pipe", "--backend", "spark", "--resume", "nope", cwd=workdir)
    assert result.returncode == 2 and "no run `nope`" in result.stderr


def test_executor_killed_mid_run_gives_the_clean_weights(workdir):
    """local-cluster[2,1,1024]: two executor JVMs; one is killed during a round's job."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "spark_executor_kill.py"), str(workdir),
                             "6", "8000", "2"], capture_output=True, text=True, timeout=400,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["killed"] in report["executors"] and len(report["executors"]) == 2
    assert "Lost executor" in Path(report["log"]).read_text()
    assert report["profiled"] == [0, 2, 4, 6, 8, 10]
    assert "warning:" not in result.stderr  # the cluster took the resource profile
    got = (workdir / report["weights"]).read_bytes()
    clean = load("examples/train.pipe").run(backend="local", params={"epochs": 6, "rows": 8000})
    assert got == Path(clean.files["weights"]).read_bytes()


def test_reduce_over_many_partitions_combines_by_the_plans_tree_bit_identically(write_pipe, spark):
    """Past FAN_IN partitions the plan's combine tree has levels; Spark runs them on the driver."""
    path = pipe(write_pipe, "source xs = range(3000) partitions 100\n"
                            "value total = reduce m.fadd over (map m.third over xs)\nsink out = total",
                "m_tree", "def third(x):\n    return x / 3.0\n\ndef fadd(a, b):\n    return a + b\n")
    text = load(path).lower("spark").explain()
    assert "total-L1-12" in text and "total-L2-1" in text and "combine m_tree.fadd (level 2, inputs 8..12)" in text
    got = run(path).outputs["out"]
    assert repr(got) == repr(load(path).run(backend="local").outputs["out"])


def test_unreachable_master_is_reported_before_spark_starts(workdir):
    result = cli("run", "examples/wordcount.pipe", "--backend", "spark", "--address", "spark://127.0.0.1:9", cwd=workdir)
    assert result.returncode == 2
    assert "cannot reach the Spark master at spark://127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr


def test_the_master_comes_from_where_spark_users_set_it(workdir, tmp_path):
    """`MASTER`, then `spark.master` in spark-defaults.conf (SPARK_CONF_DIR); `--address`
    wins over both. Shown by `pipec compile` (no JVM) and used by `pipec run`, which
    fails fast on a master nothing listens on."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text("# a comment\nspark.master   spark://127.0.0.1:9\n")
    compiled = cli("compile", "examples/wordcount.pipe", "--backend", "spark", cwd=workdir,
                   env={"SPARK_CONF_DIR": str(conf), "MASTER": ""})
    assert "engine: the Spark master at spark://127.0.0.1:9" in compiled.stdout, compiled.stderr
    from_env = cli("compile", "examples/wordcount.pipe", "--backend", "spark", cwd=workdir,
                   env={"SPARK_CONF_DIR": str(conf), "MASTER": "spark://127.0.0.1:8"})
    assert "engine: the Spark master at spark://127.0.0.1:8" in from_env.stdout
    run = cli("run", "examples/wordcount.pipe", "--backend", "spark", cwd=workdir, env={"MASTER": "spark://127.0.0.1:9"})
    assert run.returncode == 2
    assert "cannot reach the Spark master at spark://127.0.0.1:9" in run.stderr and "Traceback" not in run.stderr
    given = cli("run", "examples/wordcount.pipe", "--backend", "spark", "--address", "spark://127.0.0.1:7",
                cwd=workdir, env={"MASTER": "spark://127.0.0.1:9"})
    assert "cannot reach the Spark master at spark://127.0.0.1:7" in given.stderr
