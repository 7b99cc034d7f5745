"""What every backend does the same way, beyond the bytes of its sinks: one suite that
every registered backend inherits.

Errors name the stage, the partition and the user's line; ``retries`` recover a failing
function and an ``effectful`` stage is never retried; a ``timeout`` stops the stage;
``pipec run`` is quiet; ``pipec compile`` and ``pipec graph`` import neither the engine
nor user code; a run that cannot resume says so before it starts. A backend's gaps come
from its declared capabilities (``resume``); a gap that is not a capability is marked
beside the test with ``xfail(strict=True)`` and the reason, so closing it is noticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipec import load
from pipec.backends import backend_class
from pipec.dsl.diagnostics import PipelineRuntimeError, UsageError
from tests.engines import BACKENDS, engine_options, joining_env

ROOT = Path(__file__).resolve().parent.parent

MODULE = """
import os, time

def boom(x):
    if x == 7:
        raise ValueError('bad seven')
    return x

def flaky(x, marks):
    # Fails the first two calls for each item, then works: a transient failure.
    tries = sum(1 for name in os.listdir(marks) if name.startswith(f"{x}."))
    if tries < 2:
        open(os.path.join(marks, f"{x}.{tries}"), "w").close()
        raise RuntimeError("not yet")
    return x * 10

def slow(x):
    time.sleep(4)
    return x

def add(a, b):
    return a + b
"""


def _pipe(tmp_path: Path, body: str, name: str) -> Path:
    module = f"m_behaviour_{name}"
    (tmp_path / f"{module}.py").write_text(MODULE)
    path = tmp_path / "p.pipe"
    path.write_text(f"use {module} as m\n\npipeline p() {{\n{body}\n}}\n")
    return path


def _run(backend: str, path: Path, **options):
    return load(path).run(backend=backend, **engine_options(backend), **options)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_function_names_stage_partition_and_line_and_writes_nothing(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _pipe(tmp_path, """    source xs = range(10) partitions 2
    stage ys = map m.boom over xs
    sink out = collect(ys) -> json("out/o.json")""", f"error_{backend}")
    with pytest.raises(PipelineRuntimeError) as err:
        _run(backend, path)
    text = err.value.render()
    assert "in `ys`: ValueError: bad seven (partition 1)" in text
    assert "p.pipe:5:" in text and "^" in text
    assert f"m_behaviour_error_{backend}.py:6" in text  # raised at: the user's own line
    assert not (tmp_path / "out" / "o.json").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_retries_recover_a_transient_failure_and_effectful_stages_are_tried_once(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    # One item per partition: a retry runs the whole partition again.
    path = _pipe(tmp_path, f"""    source xs = range(2) partitions 2
    stage ys = map m.flaky over xs with marks = "{marks}" retries 2
    sink out = collect(ys)""", f"retries_{backend}")
    assert _run(backend, path).outputs["out"] == [0, 10]
    assert len(list(marks.iterdir())) == 4  # two failed tries per partition, no more

    again = tmp_path / "again"
    again.mkdir()
    path = _pipe(tmp_path, f"""    source xs = range(2) partitions 1
    stage ys = map m.flaky over xs with marks = "{again}" retries 2 effectful
    sink out = collect(ys)""", f"effectful_{backend}")
    with pytest.raises(PipelineRuntimeError, match="RuntimeError: not yet"):
        _run(backend, path)
    assert len(list(again.iterdir())) == 1  # the first call failed, and nothing tried again


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_stops_the_stage_and_names_it(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _pipe(tmp_path, """    source xs = range(2) partitions 1
    stage ys = map m.slow over xs timeout 0.5
    value total = reduce m.add over ys
    sink out = total""", f"timeout_{backend}")
    with pytest.raises(PipelineRuntimeError) as err:
        _run(backend, path)
    assert "in `ys`" in str(err.value) and "did not finish within its timeout of 0.5 s" in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resuming_is_refused_up_front_where_the_backend_cannot(backend, tmp_path, monkeypatch):
    if backend_class(backend)().can("resume"):
        pytest.skip("resumes: tests/test_resume.py holds it to a clean run")
    monkeypatch.chdir(tmp_path)
    path = _pipe(tmp_path, "    source xs = range(2) partitions 1\n    sink out = collect(xs)", f"resume_{backend}")
    with pytest.raises(UsageError, match=f"backend `{backend}` cannot resume a run"):
        _run(backend, path, run_dir=str(tmp_path / "run"), resume=True)
    out = subprocess.run([sys.executable, "-m", "pipec", "run", str(path), "--backend", backend, "--resume", "x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot resume" in out.stderr and "Traceback" not in out.stderr


# Static commands never start or import an engine (a backend that still does is listed
# in _STATIC_GAPS with the reason, and its test is a strict xfail).
_ENGINE_MODULES = {"dask": ("distributed", "dask"), "ray": ("ray",), "spark": ("pyspark", "py4j")}
_STATIC_GAPS: dict[str, str] = {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_and_graph_import_no_engine_and_no_user_code(backend, request, tmp_path):
    if backend in _STATIC_GAPS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=_STATIC_GAPS[backend]))
    engines = [m for b in _ENGINE_MODULES.values() for m in b]
    code = ("import sys, json\nfrom pipec.cli import main\n"
            f"rc = [main(['compile', 'examples/train.pipe', '--backend', '{backend}', '-o', sys.argv[1]]),\n"
            f"      main(['compile', 'examples/train.pipe', '--backend', '{backend}', '--format', 'json',"
            f" '-o', sys.argv[2]]),\n"
            f"      main(['graph', 'examples/train.pipe', '--backend', '{backend}', '-f', 'json', '-o', sys.argv[3]])]\n"
            f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {engines!r} or m.startswith('examples'))\n"
            "print(json.dumps([rc, loaded]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.txt"), str(tmp_path / "p.json"),
                          str(tmp_path / "g.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rc, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == [0, 0, 0] and loaded == [], (rc, loaded, out.stderr[-2000:])
    assert json.loads((tmp_path / "p.json").read_text())["backend"] == backend
    assert "total" in (tmp_path / "p.txt").read_text()


# What an engine may print of its own, on any backend: nothing.
_NOISE = ("INFO", "WARN", "WARNING", "Traceback", "distributed.", "(raylet)", "log4j", "SparkContext", "[Stage")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipec_run_is_quiet_and_writes_what_local_writes(backend, workdir):
    env = {**os.environ, "RAY_ADDRESS": "", "DASK_SCHEDULER_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-m", "pipec", "run", "examples/wordcount.pipe", "--backend", backend,
                          "--param", "n=5", "--run-dir", "run"], capture_output=True, text=True, timeout=240,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert not [n for n in _NOISE if n in out.stdout + out.stderr], out.stderr
    assert f"finished on {backend}" in out.stderr
    written = Path("out/top.json").read_bytes()
    expected = load("examples/wordcount.pipe").run(backend="local", params={"n": 5}).files["top_words"]
    assert Path(expected).read_bytes() == written


def test_the_resume_hint_is_printed_only_for_a_pipeline_that_can_resume(workdir):
    looped = subprocess.run([sys.executable, "-m", "pipec", "run", "examples/train.pipe", "--backend", "local",
                             "--param", "rows=400", "--param", "epochs=2", "--run-dir", "r1"],
                            capture_output=True, text=True, timeout=120)
    assert looped.returncode == 0, looped.stderr
    assert looped.stderr.startswith("run r1  pipeline train on local  (if it stops, continue it with --resume r1)\n")
    assert (workdir / "r1" / "resume").is_dir()  # its records are there
    flat = subprocess.run([sys.executable, "-m", "pipec", "run", "examples/wordcount.pipe", "--backend", "local",
                           "--run-dir", "r2"], capture_output=True, text=True, timeout=120)
    assert flat.returncode == 0 and "--resume" not in flat.stderr, flat.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_are_all_or_nothing_when_a_later_sink_fails(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "first.json").write_text("old\n")
    path = _pipe(tmp_path, """    source xs = range(10) partitions 2
    sink first = collect(xs) -> json("out/first.json")
    stage ys = map m.boom over xs
    sink second = collect(ys) -> json("out/second.json")""", f"atomic_{backend}")
    with pytest.raises(PipelineRuntimeError, match="bad seven"):
        _run(backend, path, run_dir=str(tmp_path / "run"))
    # The run failed: its first sink was not committed either, and nothing is left over.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.json"]
    assert (tmp_path / "out" / "first.json").read_text() == "old\n"
    assert not list((tmp_path / "run").glob("staged.json"))


def test_a_killed_runs_staged_sinks_are_cleaned_by_the_next_run_of_the_folder(tmp_path, monkeypatch):
    from pipec.backends.runtime.sinks import StagedSinks
    monkeypatch.chdir(tmp_path)
    killed = StagedSinks(tmp_path / "run", "deadbeef")
    killed.stage([1, 2], "json", "out/a.json", True)  # and then the process died
    leftover = tmp_path / "out" / ".a.json.pipec-staged-deadbeef.tmp"
    assert leftover.exists() and not (tmp_path / "out" / "a.json").exists()
    path = _pipe(tmp_path, "    source xs = range(3) partitions 1\n    sink b = collect(xs) -> json(\"out/b.json\")",
                 "cleanup")
    load(path).run(backend="local", run_dir=str(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.json"]


# Rounds long enough to kill the driver mid-run: Spark's rounds are slower (jobs, JVM).
_KILL_EPOCHS = {"dask": 100, "ray": 100, "spark": 10}


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in _KILL_EPOCHS])
def test_a_driver_killed_mid_run_resumes_to_the_clean_weights(backend, workdir):
    """The driver and the engine it started die together (SIGKILL to the process group and
    its children) in the middle of examples/train.pipe; `pipec run --resume` restores the
    parameter server from the snapshot the last record names, applies the calls made since
    exactly once, and ends with the weights of a clean run."""
    import pickle
    import signal
    import time
    psutil = pytest.importorskip("psutil")
    epochs = _KILL_EPOCHS[backend]
    params = ["-p", f"epochs={epochs}", "-p", "rows=8000"]
    run_dir = workdir / "crashed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "DASK_SCHEDULER_ADDRESS": ""}
    driver = subprocess.Popen([sys.executable, "-m", "pipec", "run", "examples/train.pipe", "--backend", backend,
                               "--run-dir", str(run_dir), *params], cwd=workdir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    record = run_dir / "resume" / "state.pickle"
    deadline = time.time() + 240
    family: list = []
    try:
        while time.time() < deadline and driver.poll() is None:
            try:
                if record.exists() and pickle.loads(record.read_bytes()).rounds >= 2:
                    break
            except (EOFError, pickle.UnpicklingError):
                pass
            time.sleep(0.02)
        assert driver.poll() is None, "the run ended before it could be killed"
        family = psutil.Process(driver.pid).children(recursive=True)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        for proc in family:  # engine processes in sessions of their own (Ray's)
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        driver.wait()
    stopped_at = pickle.loads(record.read_bytes()).rounds
    assert 2 <= stopped_at < epochs and not (workdir / "out" / "weights.json").exists()

    def resume():  # on the session's engine where a process can join it, as a resume on a cluster would
        return subprocess.run([sys.executable, "-m", "pipec", "run", "examples/train.pipe", "--backend", backend,
                               "--resume", str(run_dir), *params], cwd=workdir, env={**env, **joining_env(backend)},
                              capture_output=True, text=True, timeout=240)
    resumed = resume()
    assert resumed.returncode == 0, resumed.stderr
    assert not [n for n in _NOISE if n in resumed.stdout + resumed.stderr], resumed.stderr
    # Read the resumed weights before the clean run writes its own to the same path.
    resumed_weights = (workdir / "out" / "weights.json").read_bytes()
    clean = load(Path("examples/train.pipe")).run(backend="local", params={"epochs": epochs, "rows": 8000})
    assert resumed_weights == Path(clean.files["weights"]).read_bytes()
    again = resume()
    assert again.returncode == 2 and "finished already" in again.stderr



@pytest.mark.parametrize("backend", BACKENDS)
def test_ordering_errors_name_the_operation_and_what_is_wrong(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = f"m_ordering_{backend}"
    (tmp_path / f"{module}.py").write_text(MODULE + "\ndef mod3(x):\n    return (x % 3, x)\n")

    def fails(sink: str, **params) -> PipelineRuntimeError:
        path = tmp_path / "p.pipe"
        path.write_text(f"use {module} as m\n\npipeline p(f: float = 0.5) {{\n"
                        f"    source xs = range(10) partitions 2\n    sink out = {sink}\n}}\n")
        with pytest.raises(PipelineRuntimeError) as err:
            load(path).run(backend=backend, params=params, **engine_options(backend))
        assert not (tmp_path / "out").exists()
        return err.value

    err = fails("collect(sort_by(xs, by = m.boom))")  # the key function raised
    assert "ValueError: bad seven (partition 1)" in str(err) and "p.pipe:5:24" in err.render()
    err = fails("collect_map(map m.mod3 over xs)")  # keys 0, 1, 2 each come back
    assert "`collect_map` found the key 0 more than once" in str(err)
    assert "p.pipe:5:16" in err.render() and "reduce_by_key" in err.render()
    err = fails("collect(sample(xs, f))", f=1.5)
    assert "`sample` needs a fraction between 0 and 1, got 1.5" in str(err) and "p.pipe:5:24" in err.render()


# ---- a small value the driver reads each round: its last combine runs on the driver

FOLD_MODULE = """
import os

def make():
    return [1, 2, 3, 4]  # one item a partition: only the last combine calls add

def tag(x, r):
    return (x, r, frozenset())

def add(a, b):
    # Which processes combined this round's total: the test's device, not a pure function.
    if a[1] == FAIL_IN_ROUND:
        raise ValueError(f"no sum in round {a[1]}")
    return (a[0] + b[0], a[1], a[2] | b[2] | {os.getpid()})

def scale(x, t):
    return x * t[0]

class Acc:
    def __init__(self):
        self.seen = []

    def add(self, total):
        self.seen.append([total[0], sorted(total[2])])

    def add_n(self, n):
        self.seen.append(n)

    def total(self):
        return self.seen
"""

FOLD_PIPE = """use {module} as m
pipeline p(rounds: int = 3) {{
    source xs = m.make() partitions 4
    actor acc = m.Acc()
    repeat rounds as r {{
        value total = reduce m.add over (map m.tag over xs with r = r)
{reader}        acc.add(total)
    }}
    sink out = acc.total() -> json("out/t.json")
}}
"""


def _fold_run(backend: str, tmp_path: Path, reader: str = "", fail_in_round: int = -1):
    module = f"m_fold_{backend}_{fail_in_round + 1}_{bool(reader)}"
    (tmp_path / f"{module}.py").write_text(FOLD_MODULE.replace("FAIL_IN_ROUND", str(fail_in_round)))
    path = tmp_path / "p.pipe"
    path.write_text(FOLD_PIPE.format(module=module, reader=reader))
    result = load(path).run(backend=backend, **engine_options(backend))
    return json.loads(Path(result.files["out"]).read_text())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_small_value_the_driver_reads_is_folded_on_the_driver_after_its_first_round(backend, tmp_path,
                                                                                       monkeypatch):
    """A value the driver fetches every round (here an actor call's argument) is combined
    by a task on a worker in the first round, where its size is not known yet; once the
    driver has seen it is small, it folds the partials itself, with the same function in
    partition order (the sums are the same)."""
    monkeypatch.chdir(tmp_path)
    seen = _fold_run(backend, tmp_path)
    assert [total for total, _ in seen] == [10, 10, 10]
    combined_in = [pids for _, pids in seen]
    assert combined_in[1:] == [[os.getpid()], [os.getpid()]]
    if backend in ("dask", "ray"):  # the others combine on the driver from the start
        assert combined_in[0] != [os.getpid()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_small_value_a_stage_of_its_graph_reads_keeps_its_combine_task(backend, tmp_path, monkeypatch):
    """The same value, also read by a stage in its own graph, is still combined where that
    stage can read it (folding it on the driver would leave the stage waiting)."""
    monkeypatch.chdir(tmp_path)
    reader = "        stage scaled = map m.scale over xs with t = total\n        acc.add_n(count(scaled))\n"
    seen = _fold_run(backend, tmp_path, reader=reader)
    counts, totals = seen[0::2], seen[1::2]  # acc.add_n(count(scaled)) comes first in each round
    assert counts == [4, 4, 4] and [total for total, _ in totals] == [10, 10, 10]
    if backend in ("dask", "ray"):
        assert all(pids != [os.getpid()] for _, pids in totals)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fold_failing_on_the_driver_is_the_error_a_combine_task_gives(backend, tmp_path, monkeypatch):
    """The combine fails in round 2, when it runs on the driver: the error is the one the
    reference backend gives (stage, message, line), and nothing is written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineRuntimeError) as err:
        _fold_run(backend, tmp_path, fail_in_round=2)
    with pytest.raises(PipelineRuntimeError) as reference:
        _fold_run("local", tmp_path, fail_in_round=2)
    assert "no sum in round 2" in str(err.value)
    assert err.value.render().replace(backend, "B") == reference.value.render().replace("local", "B")
    assert not (tmp_path / "out").exists()


SOURCE_MODULE = """
def few():
    return ["a", "b"]  # fewer items than partitions: some partitions are empty

def broken(n):
    raise ValueError(f"no rows for {n}")

def tag(x):
    return x + "!"
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_callable_source_fails_or_cuts_its_items_as_the_reference_does(backend, tmp_path, monkeypatch):
    """A callable source (on Ray one task giving its parts as its returns) cuts its items
    into the partitions the reference cuts, empty ones included, and a source function
    that raises is the reference's error, at the source's line."""
    monkeypatch.chdir(tmp_path)
    module = f"m_source_{BACKENDS.index(backend)}"  # no backend name: the errors are compared with it replaced
    (tmp_path / f"{module}.py").write_text(SOURCE_MODULE)
    path = tmp_path / "p.pipe"

    def outcome(body: str, on: str):
        path.write_text(f"use {module} as m\n\npipeline p() {{\n{body}\n}}\n")
        try:
            return load(path).run(backend=on, **(engine_options(on) if on == backend else {})).outputs
        except PipelineRuntimeError as err:
            return err.render().replace(on, "B")

    cut = "    source xs = m.few() partitions 4\n    sink out = collect(map m.tag over xs)"
    assert outcome(cut, backend) == outcome(cut, "local") == {"out": ["a!", "b!"]}
    broken = "    source xs = m.broken(n = 3) partitions 4\n    sink out = collect(xs)"
    error = outcome(broken, backend)
    assert "no rows for 3" in error and "p.pipe:4:" in error, error
    assert error == outcome(broken, "local")
