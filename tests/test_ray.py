"""The Ray backend: its lowered plans (golden files), stage options and errors, progress,
fault tolerance (a killed worker, an actor dying just after a call, actors lost while a
stage calls them; an actor or pool member dying mid-call is a conformance case, on every
engine), the embedded runtime and a real `ray start --head` cluster.

Runs use the test session's one Ray runtime (tests/engines.py); the command-line tests
start their own in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from pipec.compiler import render  # noqa: E402
from pipec import load  # noqa: E402
from pipec.compiler.capabilities import FEATURES  # noqa: E402
from pipec.dsl.diagnostics import PipelineRuntimeError, UnsupportedOnBackend  # noqa: E402
from pipec.backends.ray import RayBackend
from pipec.backends.physical import steps as s  # noqa: E402
from tests.conftest import EXAMPLES, ROOT  # noqa: E402
from tests.engines import engine_options, free_port  # noqa: E402

EXAMPLE_NAMES = ["infer", "kmeans", "pagerank", "train", "wordcount"]

# One module for every pipeline of this file: long-lived Ray workers cache modules by
# name, so its content must not differ between tests.
MOD = '''
import os, threading, time

def inc(x):
    return x + 1

def add(a, b):
    return a + b

def square(x):
    return x * x

def boom(x):
    raise ValueError(f"bad item {x}")

def slow_square(x):
    time.sleep(0.1)
    return x * x

def sleepy(x):
    time.sleep(30)
    return x

def flaky(x, path):
    """Fails the first two times it is called, counted in a file (tasks are processes)."""
    with open(path, "a") as fh:
        fh.write("x")
    if os.path.getsize(path) <= 2:
        raise RuntimeError("transient")
    return x

def lock(x):
    return threading.Lock()

class Counter:
    def __init__(self, start=0):
        self.total = start
        self.calls = []
    def add(self, x):
        self.total += x
        self.calls.append(x)
        return self.total
    def value(self):
        return self.total
    def history(self):
        return list(self.calls)
    def fail(self):
        raise KeyError("no such thing")

class Fragile(Counter):
    """Loses its process once, the first time its total reaches `at`: in the middle of
    the call (`die = "during"`), or just after answering it (`die = "after"`)."""
    def __init__(self, at, marker, die):
        super().__init__()
        self.at, self.marker, self.die = at, marker, die
    def add(self, x):
        total = super().add(x)
        if total >= self.at and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            if self.die == "during":
                os._exit(1)
            threading.Timer(0.05, os._exit, [1]).start()
        return total

class Doomed(Counter):
    """Loses its process in each `add` until `deaths` losses are counted in a file."""
    def __init__(self, marker, deaths):
        super().__init__()
        self.marker, self.deaths = marker, deaths
    def add(self, x):
        with open(self.marker, "a") as fh:
            fh.write("x")
        if os.path.getsize(self.marker) <= self.deaths:
            os._exit(1)
        return super().add(x)

class Broken:
    def __init__(self):
        raise RuntimeError("no model file")
    def run(self, items):
        return items
'''


def _ray_options():
    return engine_options("ray")


def run(write_pipe, body: str, params=None, **options):
    path = write_pipe("use ray_t_mod as m\npipeline p() {\n" + body + "\n}\n", ray_t_mod=MOD)
    pipeline = load(path)
    pipeline.check("ray")
    return pipeline.run(backend="ray", params=params or {}, **_ray_options(), **options)


# ---- capabilities and the lowered plan (no engine needed) --------------------------------------


def test_ray_declares_every_feature_and_checks_every_example_clean():
    assert RayBackend.capabilities == frozenset(FEATURES)
    assert RayBackend.gap_hints == {}
    for name in EXAMPLE_NAMES:
        assert [d for d in load(EXAMPLES / f"{name}.pipe").check("ray") if d.is_error] == []


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_lowered_plan_golden(name, golden):
    plan = load(EXAMPLES / f"{name}.pipe").lower("ray")
    golden(f"ray/{name}.txt", plan.explain())
    golden(f"ray/{name}.json", json.dumps(plan.to_json(), indent=2) + "\n")
    golden(f"ray/{name}.dot", render.render(render.plan_drawing(plan), "dot"))


def test_graph_nodes_are_tasks_with_label_and_group_and_edges_have_kinds():
    plan = load(EXAMPLES / "train.pipe").lower("ray")
    g = plan.graph()
    assert all("label" in d and "group" in d for _, d in g.nodes(data=True))
    assert {f"grads-{i}" for i in range(8)} <= set(g)
    kinds = {d["kind"] for _, _, d in g.edges(data=True)}
    assert {"data", "value", "actor", "order"} <= kinds
    # each fold task reads its own partition of the batches
    assert g.has_edge("batches-3", "grads-3") and not g.has_edge("batches-3", "grads-4")


def _spec(plan, key):
    return next(spec for specs in plan.physical.tasks.values() for spec in specs if spec.key == key)


def test_options_map_to_ray():
    from pipec.backends.ray.driver import _actor_options, task_options
    train = load(EXAMPLES / "train.pipe").lower("ray")
    spec = _spec(train, "grads-0")
    # fused with `reduce`, the gradient stage keeps its `retries 3` as Ray's max_retries (for a
    # lost worker; the interpreter retries user code in the task)
    assert task_options(train.ir, spec, spec.args[0]) == {"max_retries": 3, "retry_exceptions": False,
                                                          "name": "grads-0", "num_cpus": 1}
    # pipec restarts a single actor itself, from a standby (Ray's restart takes seconds)
    assert _actor_options(train.ir.op("ps"), "n") == {"max_restarts": 0, "max_task_retries": 0, "name": "n"}
    wordcount = load(EXAMPLES / "wordcount.pipe").lower("ray")
    split = next(spec for specs in wordcount.physical.tasks.values() for spec in specs
                 if isinstance(spec.args[0], s.Segment) and isinstance(spec.args[0].terminal, s.Split))
    assert task_options(wordcount.ir, split, split.args[0])["num_returns"] == split.args[0].terminal.k


def test_resources_timeouts_and_effectful_stages(write_pipe):
    from pipec.backends.ray.driver import task_options
    path = write_pipe("use ray_t_mod as m\npipeline p() {\n"
                      "source xs = range(8) partitions 2\n"
                      "stage a = map m.inc over xs retries 2 resources { cpus 0.5 gpus 1 memory \"1GB\" }\n"
                      "stage b = map m.inc over a timeout 5\n"
                      "stage c = map m.inc over b retries 4 effectful\n"
                      "sink out = collect(c)\n}\n", ray_t_mod=MOD)
    pipeline = load(path)
    plan = RayBackend().lower(pipeline.ir, pipeline.params())  # unchecked: this machine has no GPU

    def options(key):
        spec = _spec(plan, key)
        return task_options(plan.ir, spec, spec.args[0])
    # a pure stage is re-run after a lost worker at least LOST_WORKER_RETRIES times, whatever `retries` says
    assert options("a-0") == {"max_retries": 3, "retry_exceptions": False, "name": "a-0", "num_cpus": 0.5,
                              "num_gpus": 1, "memory": 10**9}
    assert options("b-0")["max_retries"] == 3
    assert options("c-0")["max_retries"] == 0  # effectful: no blind retry
    assert _spec(plan, "b-0").args[0].steps[0].policy.timeout == 5  # cut inside the task


SCAN_BODY = """
    value k = 3
    source xs = range(50) partitions 5
    stage ys = map m.square over xs
    value total = reduce m.add over ys
    value n = count(ys)
    stage groups = group_by_key over (map m.pair_by over ys with k = k)
    stage uniq = distinct(map m.inc over ys)
    stage later = map m.inc over ys with k = total
    sink a = [total, n] -> json("out/a.json")
    sink b = collect(groups) -> json("out/b.json")
    sink c = collect(uniq) -> json("out/c.json")
    sink d = collect(later) -> json("out/d.json")"""


def test_a_collection_read_by_several_reductions_and_shuffles_matches_local(write_pipe, tmp_path, monkeypatch):
    mod = MOD + "\ndef pair_by(x, k):\n    return (x % k, x)\n"
    path = write_pipe("use ray_t_scan as m\npipeline p() {\n" + SCAN_BODY + "\n}\n",
                      ray_t_scan=mod.replace("def inc(x):", "def inc(x, k=1):").replace(
                          "    return x + 1", "    return x + k"))
    pipeline = load(path)
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for backend in ("local", "ray"):
        pipeline.run(backend=backend, **(_ray_options() if backend == "ray" else {}))
        outputs[backend] = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}
    assert outputs["ray"] == outputs["local"]


def test_compile_and_graph_never_import_ray_or_user_code():
    code = ("import sys\nfrom pipec.cli import main\n"
            "assert main(['compile', 'examples/train.pipe', '--backend', 'ray', '--format', 'json', '-o', "
            "sys.argv[1]]) == 0\n"
            "assert main(['graph', 'examples/train.pipe', '--backend', 'ray', '-o', sys.argv[2]]) == 0\n"
            "assert 'ray' not in sys.modules and 'examples.linreg' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('ray', 'examples')))\n")
    out = subprocess.run([sys.executable, "-c", code, "/dev/null", "/dev/null"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ---- running on the session's runtime ---------------------------------------------------------


def test_a_failing_function_names_stage_partition_and_user_line(write_pipe):
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, "source xs = range(4) partitions 2\nstage ys = map m.boom over xs\nsink out = collect(ys)")
    text = str(err.value)
    assert "`ys`" in text and "ValueError: bad item 0" in text and "partition 0" in text
    assert "ray_t_mod.py" in text


def test_retries_recover_a_transient_failure(write_pipe, tmp_path):
    counter = tmp_path / "calls.txt"
    result = run(write_pipe, f'source xs = range(1) partitions 1\n'
                             f'stage ys = map m.flaky over xs with path = "{counter}" retries 2\n'
                             f'sink out = collect(ys)')
    assert result.outputs["out"] == [0]
    assert counter.read_text() == "xxx"


def test_timeout_names_the_stage(write_pipe):
    start = time.monotonic()
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, "source xs = range(2) partitions 1\nstage ys = map m.sleepy over xs timeout 0.5\n"
                        "sink out = collect(ys)")
    assert "`ys`" in str(err.value) and "timeout of 0.5 s" in str(err.value)
    # also when only other tasks read the stage's output
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, "source xs = range(2) partitions 1\nstage ys = map m.sleepy over xs timeout 0.5\n"
                        "value total = reduce m.add over ys\nsink out = total")
    assert "`ys`" in str(err.value) and "timeout of 0.5 s" in str(err.value)
    assert time.monotonic() - start < 30


def test_the_driver_fetches_no_partition_a_graph_keeps_in_the_object_store(write_pipe, monkeypatch):
    """Partitions exported from a graph (read again every round) and those a graph's
    tasks read stay in Ray's object store: the driver waits on each task's status
    return, never fetching a partition, yet a failing partition is still its error."""
    import ray
    fetched: list = []
    real_get = ray.get

    def spying_get(refs, *args, **kwargs):
        got = real_get(refs, *args, **kwargs)
        fetched.extend(got if isinstance(refs, list) else [got])
        return got
    monkeypatch.setattr(ray, "get", spying_get)
    body = ("source xs = range(4000) partitions 4\nstage ys = map m.inc over xs\nvar c = 0\n"
            "repeat 3 {\n  c = reduce m.add over (map m.inc over ys)\n}\nsink out = c")
    assert run(write_pipe, body).outputs == {"out": sum(range(2, 4002))}
    assert fetched and not [v for v in fetched if isinstance(v, list) and len(v) > 1], \
        [type(v).__name__ for v in fetched]
    with pytest.raises(PipelineRuntimeError) as err:  # a partition's task fails: still its error, at its stage
        run(write_pipe, "source xs = range(4) partitions 2\nstage ys = map m.boom over xs\n"
                        "var c = 0\nrepeat 2 {\n  c = count(ys)\n}\nsink out = c")
    assert "`ys`" in str(err.value) and "bad item 0" in str(err.value), str(err.value)


def test_resources_the_runtime_lacks_are_refused_by_check_at_the_stage(write_pipe):
    """The session's runtime (one node, 2 CPUs, no GPU) is known before a run starts, as
    the embedded one is: `check` refuses, at the stage, and nothing runs."""
    _ray_options()
    path = write_pipe("use ray_t_mod as m\npipeline p() {\nsource xs = range(2) partitions 1\n"
                      "stage ys = map m.inc over xs resources { gpus 1 cpus 3 }\nsink out = collect(ys)\n}\n",
                      ray_t_mod=MOD)
    with pytest.raises(UnsupportedOnBackend) as err:
        load(path).check("ray")
    text = err.value.render()
    assert f"{path.name}:4:12: error: stage `ys` needs a GPU: no node of the Ray runtime this process runs has a GPU" \
        in text, text
    assert "stage `ys` needs 3 cpus: each node of the Ray runtime this process runs has 2" in text
    assert "^^^" in text and "hint: ask for less, or run on a cluster that has it (--address)" in text


def test_a_cluster_known_only_at_run_start_is_asked_then_before_any_task(write_pipe):
    """A cluster joined by address is known only when the run starts: the driver asks it
    what its nodes have and refuses, at the stage, before any task (the plan is lowered
    here without `check`, as for an address `check` could not ask)."""
    _ray_options()
    path = write_pipe("use ray_t_mod as m\npipeline p() {\nsource xs = range(2) partitions 1\n"
                      "stage ys = map m.inc over xs resources { cpus 3 }\nsink out = collect(ys)\n}\n",
                      ray_t_mod=MOD)
    pipeline = load(path)
    plan = RayBackend().lower(pipeline.ir, pipeline.params(None))
    with pytest.raises(PipelineRuntimeError) as err:
        plan.run()
    text = err.value.render()
    assert f"{path.name}:4:12: error: in `ys`: stage `ys` needs 3 cpus: each node of the Ray cluster has 2" in text, text
    assert "hint: lower the stage's `resources`" in text


def test_unpicklable_output_fails_naming_the_stage(write_pipe):
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, "source xs = range(4) partitions 2\nstage locks = map m.lock over xs\n"
                        "sink out = collect(locks)")
    assert "locks" in str(err.value)


def test_actor_errors_name_the_call_or_the_actor(write_pipe):
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, "actor c = m.Counter()\nc.add(1)\nvalue v = c.fail()\nsink out = v")
    assert "c.fail" in str(err.value) and "KeyError" in str(err.value)
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, "source xs = range(4) partitions 2\nactor pool b = m.Broken() x 2\n"
                        "stage ys = map_batches b.run over xs\nsink out = collect(ys)")
    assert "`b`" in str(err.value) and "no model file" in str(err.value)


class Recorder:
    def __init__(self):
        self.events = []

    def stage(self, name, tasks):
        self.events.append(("stage", name, tasks))

    def advance(self, name, done=1):
        self.events.append(("advance", name, done))

    def round(self, loop, index, count):
        self.events.append(("round", loop, index, count))


def test_progress_reports_every_task_and_round(workdir):
    recorder = Recorder()
    load(Path("examples/train.pipe")).run(backend="ray", params={"rows": 2_000, "epochs": 3},
                                          progress=recorder, **_ray_options())
    rounds = [e for e in recorder.events if e[0] == "round"]
    assert rounds == [("round", "loop1", i, 3) for i in range(3)]
    stages = [e for e in recorder.events if e[0] == "stage"]
    assert stages.count(("stage", "grads", 8)) == 3
    announced = sum(e[2] for e in stages)
    advanced = sum(e[2] for e in recorder.events if e[0] == "advance")
    assert advanced == announced


class CallRecorder(Recorder):
    def actor_call(self, actor, seq, method, replayed):
        self.events.append(("call", actor, seq, method))


def test_a_value_read_from_an_actor_reaches_its_stages_by_reference(workdir):
    """`with weights = ps.weights()`: each round's stages are submitted with the call's
    ObjectRef, before the driver has the answer (no round trip a round); every call is
    still confirmed in order, and the weights are the reference backend's."""
    params = {"rows": 2_000, "epochs": 3}
    recorder = CallRecorder()
    pipeline = load(Path("examples/train.pipe"))
    result = pipeline.run(backend="ray", params=params, progress=recorder, **_ray_options())
    seen = [e[:2] if e[0] == "stage" else e[2:] for e in recorder.events
            if e[0] == "call" or e[:2] == ("stage", "grads")]
    rounds = [[("stage", "grads"), (2 * i, "weights"), (2 * i + 1, "apply")] for i in range(3)]
    assert seen == [e for r in rounds for e in r] + [(6, "weights")]
    clean = pipeline.run(backend="local", params=params)
    assert Path(result.files["weights"]).read_bytes() == Path(clean.files["weights"]).read_bytes()


# ---- fault tolerance ---------------------------------------------------------------------------


def _named_actor(prefix: str, deadline: float):
    import ray
    while time.monotonic() < deadline:
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["name"].startswith(prefix):
                return ray.get_actor(entry["name"], namespace=entry["namespace"])
        time.sleep(0.02)
    raise AssertionError(f"no actor named {prefix}*")


def test_an_actor_losing_its_process_just_after_answering_is_restored_and_every_call_applied_once(write_pipe,
                                                                                                   tmp_path):
    """The answer is sent, then the process goes: the call is not applied again. (Dying in
    the middle of a call is a conformance case, on every engine.)"""
    marker, die = tmp_path / "died", "after"
    body = (f'actor c = m.Fragile(at = 10, marker = "{marker}", die = "{die}") {{\n'
            f'    restarts 2\n    checkpoint every 3 calls\n}}\n'
            f'source xs = range(4) partitions 2\n'
            f'repeat 8 as i {{\n'
            f'    value s = reduce m.add over (map m.slow_square over xs)\n'
            f'    c.add(i)\n'
            f'}}\n'
            f'sink out = c.history()\nsink total = c.value()')
    result = run(write_pipe, body, run_dir=str(tmp_path / "run"))
    assert marker.exists(), "the actor never died"
    assert result.outputs["out"] == list(range(8))  # each call applied exactly once, in order
    assert result.outputs["total"] == 28
    assert result.recoveries["c"] == 1


@pytest.mark.parametrize("restarts", [1, 2])
def test_each_lost_process_counts_against_restarts_and_the_last_restart_still_replays(write_pipe, tmp_path, restarts):
    """pipec restarts the actor (its standby takes over, then a new process when the
    standby is lost too): the call that kills it twice needs `restarts 2`, and is then
    applied once; with `restarts 1` the run fails, saying so."""
    marker = tmp_path / "deaths"
    body = (f'actor c = m.Doomed(marker = "{marker}", deaths = 2) {{\n    restarts {restarts}\n}}\n'
            f'c.add(5)\nc.add(6)\nsink out = c.history()')
    if restarts == 1:
        with pytest.raises(PipelineRuntimeError) as err:
            run(write_pipe, body, run_dir=str(tmp_path / "run"))
        assert "`restarts 1` used up" in str(err.value)
        return
    result = run(write_pipe, body, run_dir=str(tmp_path / "run"))
    assert result.outputs["out"] == [5, 6]
    assert result.recoveries["c"] == 1  # one replay, which lost a second process on its way
    assert marker.read_text() == "xxxx"  # two deaths, then calls 0 and 1 applied once each


def test_an_actor_without_restarts_that_dies_fails_with_a_hint(write_pipe, tmp_path):
    body = (f'actor c = m.Fragile(at = 1, marker = "{tmp_path / "died"}", die = "during")\n'
            f'c.add(5)\nsink total = c.value()')
    with pytest.raises(PipelineRuntimeError) as err:
        run(write_pipe, body)
    assert "restarts 0" in str(err.value)


LEDGER = """
import time
def push(x, server, r):
    time.sleep(0.05)
    server.add((r, x))
    return x
class Ledger:
    def __init__(self):
        self.seen = []
    def add(self, key):
        self.seen.append(key)
    def applied(self):
        return sorted(self.seen)
"""


@pytest.mark.parametrize("when", ["stage", "checkpoint"])
def test_an_actor_lost_while_a_stage_calls_it_is_restored_and_every_call_applied_once(write_pipe, tmp_path, when):
    """The actor behind a handle dies in the middle of the stage (or while it saves the
    stage's calls): Ray restarts it from the snapshot taken before the stage, the driver
    replays the graph-level calls since, and the stage runs again; the keys make every
    call count once."""
    import ray
    path = write_pipe("""use ray_t_ledger as m
pipeline p() {
    actor c = m.Ledger() { restarts 2 }
    source xs = range(40) partitions 4
    repeat 2 as r {
        stage pushed = map m.push over xs with server = c, r = r
        value seen = count(pushed)
    }
    sink applied = c.applied()
}
""", ray_t_ledger=LEDGER)
    pipeline = load(path)
    options = _ray_options()
    box = {}

    def target():
        try:
            box["result"] = pipeline.run(backend="ray", run_dir=str(tmp_path / "run"), **options)
        except BaseException as exc:  # handed to the test below
            box["error"] = exc
    thread = threading.Thread(target=target)
    thread.start()
    actor = _named_actor("pipec.p.c.", time.monotonic() + 60)
    pid = ray.get(actor.pid.remote())
    if when == "stage":
        while not _processes_named("ray::pushed-") and thread.is_alive():
            time.sleep(0.01)
        time.sleep(0.3)  # a few calls in (each task makes 10, 50 ms apart)
    else:
        while len(ray.get(actor.invoke.remote(None, "applied", (), {}))) < 40 and thread.is_alive():
            time.sleep(0.005)  # round 0's calls are all in, its snapshot comes next
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=180)
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.recoveries["c"] >= 1
    assert result.outputs["applied"] == sorted((r, x) for r in range(2) for x in range(40))


def _processes_named(prefix: str) -> list[int]:
    """Ray workers running a task are titled `ray::<task name>`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith(prefix):
            found.append(int(entry))
    return found


def test_killing_a_worker_running_stage_tasks_gives_the_same_result(write_pipe, tmp_path):
    """Recovering a pure stage from a lost worker is the engine's job: no `retries` needed."""
    body = ("source xs = range(40) partitions 4\n"
            "stage ys = map m.slow_square over xs\n"
            "value total = reduce m.add over ys\n"
            "sink out = total")
    path = write_pipe("use ray_t_mod as m\npipeline p() {\n" + body + "\n}\n", ray_t_mod=MOD)
    pipeline = load(path)
    options = _ray_options()
    expected = sum(x * x for x in range(40))
    name = "ray::ys-"  # Ray titles a task's process with the task's name: its plan key
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=pipeline.run(backend="ray", **options)))
    thread.start()
    deadline, killed = time.monotonic() + 60, None
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        pids = _processes_named(name)
        if pids:
            time.sleep(0.2)  # well inside its task (each takes 1 s)
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.02)
    thread.join(timeout=120)
    assert killed is not None, f"no process titled {name} was seen"
    assert box["result"].outputs["out"] == expected


# ---- the command line: embedded runtime, and a real `ray start --head` cluster -------------------


def _pipec(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 240):
    return subprocess.run([sys.executable, "-m", "pipec", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)})


def _quiet(stdout: str, stderr: str) -> None:
    """Only pipec's own summary: no Ray log lines, warnings or worker output."""
    text = stdout + stderr
    for noise in ("INFO", "WARNING", "(raylet)", "Token authentication", "gcs_client", "pid="):
        assert noise not in text, text


def test_pipec_run_on_an_embedded_runtime_is_quiet_and_matches_local(workdir):
    local = _pipec(["run", "examples/wordcount.pipe", "--backend", "local", "--param", "n=5"], workdir)
    assert local.returncode == 0, local.stderr
    expected = (workdir / "out" / "top.json").read_bytes()
    out = _pipec(["run", "examples/wordcount.pipe", "--backend", "ray", "--param", "n=5"], workdir,
                 env={"RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr
    _quiet(out.stdout, out.stderr)
    assert "finished on ray" in out.stderr
    assert (workdir / "out" / "top.json").read_bytes() == expected


def test_an_unreachable_address_fails_fast_with_a_hint(workdir):
    port = free_port()  # nothing listens there
    start = time.monotonic()
    out = _pipec(["run", "examples/wordcount.pipe", "--backend", "ray", "--address", f"127.0.0.1:{port}"], workdir)
    assert out.returncode == 1
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in out.stderr and "ray start --head" in out.stderr
    assert time.monotonic() - start < 60


def test_a_process_connected_to_one_cluster_refuses_to_join_another(workdir):
    from pipec.backends.ray.engine import RayEngineError
    _ray_options()
    with pytest.raises(RayEngineError) as err:
        load(Path("examples/wordcount.pipe")).run(backend="ray", address="10.255.255.1:6379")
    assert "already connected" in str(err.value) and "10.255.255.1:6379" in str(err.value)



def test_a_real_head_node_runs_an_example(workdir, tmp_path_factory):
    """`ray start --head` on 127.0.0.1, pipec joins it with --address, then the head is
    stopped by signalling the one `ray start --block` process this test started (not
    `ray stop`, which would stop every Ray on the machine, the test session's too)."""
    psutil = pytest.importorskip("psutil")
    port = free_port()
    temp_dir = Path(f"/tmp/pipec-ray-{os.getpid()}")  # short: Ray puts sockets in it
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"), "RAY_USAGE_STATS_ENABLED": "0"}
    log = tmp_path_factory.mktemp("head") / "head.log"
    with open(log, "w") as fh:
        head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                 f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                                 f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while "--block" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        local = _pipec(["run", "examples/pagerank.pipe", "--backend", "local", "--param", "rounds=3"], workdir)
        assert local.returncode == 0, local.stderr
        expected = (workdir / "out" / "ranks.json").read_bytes()
        out = _pipec(["run", "examples/pagerank.pipe", "--param", "rounds=3", "--backend", "ray",
                      "--address", f"127.0.0.1:{port}"], workdir, env={"RAY_AUTH_MODE": env["RAY_AUTH_MODE"]})
        assert out.returncode == 0, out.stderr
        _quiet(out.stdout, out.stderr)
        assert f"  joining the Ray cluster at 127.0.0.1:{port} ..." in out.stderr.splitlines()
        assert (workdir / "out" / "ranks.json").read_bytes() == expected
        (workdir / "out" / "ranks.json").unlink()
        # RAY_ADDRESS reaches the same cluster without --address
        out = _pipec(["run", "examples/pagerank.pipe", "--param", "rounds=3", "--backend", "ray"], workdir,
                     env={"RAY_AUTH_MODE": env["RAY_AUTH_MODE"], "RAY_ADDRESS": f"127.0.0.1:{port}"})
        assert out.returncode == 0, out.stderr
        assert (workdir / "out" / "ranks.json").read_bytes() == expected
    finally:
        children = psutil.Process(head.pid).children(recursive=True) if head.poll() is None else []
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
        gone, alive = psutil.wait_procs(children, timeout=30)
        for proc in alive:  # only processes of this head, by id
            proc.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)  # the session's logs and sockets
    assert not alive, [p.pid for p in alive]


def test_the_reaper_finds_a_raylet_s_workers_by_the_pid_in_their_environment():
    """A worker the raylet started just before the driver died is in no tree the reaper
    noted: it is found by RAY_RAYLET_PID, and a process of another raylet is not."""
    from pipec.backends.ray import reaper
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    ours = subprocess.Popen(sleeper, env=dict(os.environ, RAY_RAYLET_PID="4194000"))
    theirs = subprocess.Popen(sleeper, env=dict(os.environ, RAY_RAYLET_PID="4194001"))
    try:
        deadline = time.monotonic() + 10
        while ours.pid not in reaper.workers_of({4194000}) and time.monotonic() < deadline:
            time.sleep(0.05)  # the environment is there once the exec is done
        found = reaper.workers_of({4194000})
        assert ours.pid in found and theirs.pid not in found
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
