"""The Dask backend: what it lowers to, and that it survives dying workers.

Every test runs on a real Dask cluster: the session's local cluster (two single-threaded
worker processes, from tests/engines.py), a `dask scheduler` with two `dask worker`
processes started here, or the cluster `pipec run` starts itself. Byte-identical sinks
across backends are the conformance suite's job (tests/test_conformance.py); this file
covers the lowering, the engine, progress, errors and fault tolerance.
"""

from __future__ import annotations

import html
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipec import load
from pipec.api import run_plan
from pipec.dsl.diagnostics import PipelineRuntimeError, UnsupportedOnBackend
from pipec.runs import RunEvents
from tests.conftest import ROOT
from tests.engines import engine_options, stop_processes

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(scope="module")
def client():
    client = engine_options("dask")["client"]
    client.wait_for_workers(2, timeout=60)
    return client


@pytest.fixture(scope="module")
def kill_client():
    """A cluster of its own for the tests that kill workers (three, so one death never
    leaves it empty, and the session's cluster is never disturbed)."""
    import logging
    from distributed import Client, LocalCluster
    from pipec.backends.dask.engine import LocalShape
    shape = LocalShape(workers=3, threads=1, memory=2 * 2**30)
    cluster = LocalCluster(n_workers=shape.workers, threads_per_worker=1, processes=True, memory_limit=shape.memory,
                           resources=shape.resources, dashboard_address="127.0.0.1:0",
                           silence_logs=logging.CRITICAL, host="127.0.0.1")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def _sinks(result) -> dict[str, bytes]:
    return {name: Path(path).read_bytes() for name, path in result.files.items()}


class Recorder:
    """A Progress that records what it is told (and can act on a round)."""

    def __init__(self, on_round=None, on_stage=None):
        self.stages: dict[str, int] = {}
        self.advanced: dict[str, int] = {}
        self.rounds: list[tuple[str, int, int]] = []
        self.on_round, self.on_stage = on_round, on_stage

    def stage(self, name, tasks):
        self.stages[name] = tasks
        self.advanced.setdefault(name, 0)
        if self.on_stage:
            self.on_stage(name)

    def advance(self, name, done=1):
        self.advanced[name] = self.advanced.get(name, 0) + done

    def round(self, loop, index, count):
        self.rounds.append((loop, index, count))
        if self.on_round:
            self.on_round(index)


# ---- lowering: what `compile` shows is what runs ------------------------------------------------


def test_train_lowers_to_readable_keys_with_dependencies():
    plan = load(ROOT / "examples" / "train.pipe").lower("dask")
    text = plan.explain()
    assert "repeat 20 rounds" in text
    loop_graph = plan.physical.tasks[2]
    keys = {s.key: s for s in loop_graph}
    # map and the partition-wise fold fused: one task per partition; a tree for the total
    assert [k for k in keys if k.startswith("grads-")] == [f"grads-{i}" for i in range(8)]
    assert [r.key for r in keys["grads-3"].deps] == ["batches-3", "grads/weights"]
    assert keys["grads-3"].retries == 3
    assert [r.key for r in keys["total"].deps] == [f"grads-{i}" for i in range(8)]
    # the weights are one data key per round, read by every partition
    assert [s.key for s in loop_graph if s.data] == ["grads/weights"]
    assert "grads-3" in text and "total" in text and "<- batches-3, grads/weights" in text
    # the batches are made before the loop, once
    assert all(not k.startswith("batches") for k in keys)
    assert {"batches-all", "batches-0"} <= {s.key for s in plan.physical.tasks[1]}


@pytest.mark.parametrize("example", ["wordcount", "pagerank", "kmeans", "infer", "train"])
def test_plan_golden(example, golden):
    """`pipec compile --backend dask` (text and JSON) and `pipec graph --backend dask`,
    for a fixed two-worker embedded cluster."""
    from pipec.backends.dask import DaskBackend
    from pipec.backends.dask.engine import LocalShape
    from pipec.compiler import render
    pipeline = load(ROOT / "examples" / f"{example}.pipe")
    plan = DaskBackend(shape=LocalShape(workers=2, threads=1, memory=2**31)).lower(pipeline.ir, pipeline.params())
    golden(f"dask/{example}.txt", plan.explain())
    golden(f"dask/{example}.json", json.dumps(plan.to_json(), indent=2) + "\n")
    golden(f"dask/{example}.dot", render.render(render.plan_drawing(plan), "dot"))


def test_fusion_and_reduction_tree(write_pipe):
    path = write_pipe("""
use m_fusion_and_reduction as m
pipeline p(n: int = 200) {
    source xs = range(n) partitions 20
    stage ys = filter m.even over (map m.square over xs)
    value total = reduce m.add over ys
    sink out = total -> json("out/t.json")
}""", m_fusion_and_reduction="def square(x):\n    return x * x\ndef even(x):\n    return x % 2 == 0\n"
        "def add(a, b):\n    return a + b\n")
    plan = load(path).lower("dask")
    specs = {s.key: s for s in plan.physical.tasks[1]}
    # source, map, filter and the partial fold: one task per partition
    m = "m_fusion_and_reduction"
    assert specs["ys-7"].label == f"range, part of 20 -> map {m}.square -> filter {m}.even -> fold {m}.add (partial of total)"
    assert [r.key for r in specs["ys-7"].deps] == []
    # 20 partials combined 8 at a time by partition index: 3 combines, then the total
    assert [r.key for r in specs["total-L1-2"].deps] == [f"ys-{i}" for i in range(16, 20)]
    assert [r.key for r in specs["total"].deps] == ["total-L1-0", "total-L1-1", "total-L1-2"]


def test_keys_of_nodes_named_like_partitions_never_collide(client, write_pipe, tmp_path, monkeypatch):
    # A second `count` is the node `count-2`: its key must not be partition 2 of `count`.
    # (A callable source's parts are tasks of their own, so each count reads them in
    # tasks keyed by the count, not in one shared scan.)
    path = write_pipe("""
use m_keys_never_collide as m
pipeline p() {
    source xs = m.items() partitions 20
    sink out = [count(xs), count(map m.inc over xs), count(distinct(xs))] -> json("out/o.json")
}""", m_keys_never_collide="def inc(x):\n    return x + 1\ndef items():\n    return range(30)\n")
    monkeypatch.chdir(tmp_path)
    pipeline = load(path)
    plan = pipeline.lower("dask", client=client)
    keys = [s.key for specs in plan.physical.tasks.values() for s in specs]
    assert len(keys) == len(set(keys)) and "count#2" in keys and "count-2" in keys
    assert _sinks(plan.run()) == _sinks(pipeline.run(backend="local"))


def test_plan_json_and_graph_for_the_renderer():
    plan = load(ROOT / "examples" / "wordcount.pipe").lower("dask")
    data = plan.to_json()
    graph_steps = [s for s in data["steps"] if s["step"] == "graph"]
    tasks = {t["key"]: t for t in graph_steps[0]["tasks"]}
    assert tasks["counts-2"]["deps"] == [f"pairs-{i}" for i in range(4)]
    assert tasks["pairs-0"]["deps"] == ["lines-index"]
    json.dumps(data)  # JSON-ready
    g = plan.graph()
    assert all(isinstance(d["label"], str) and "group" in d for _, d in g.nodes(data=True))
    assert all("kind" in d for _, _, d in g.edges(data=True))
    assert g.has_edge("pairs-1", "counts-3") and g.nodes["counts-3"]["group"] == "counts"
    assert g.has_edge("top_words/value", "driver:top_words")


def test_run_submits_exactly_the_planned_keys(client, workdir):
    plan = load("examples/train.pipe").lower("dask", {"rows": 2000, "epochs": 3}, client=client)
    plan.run()
    submitted = plan.last_driver.submitted
    assert len(submitted) == 1 + 3  # the batches once, then one graph per round
    assert sorted(submitted[0]) == sorted(s.key for s in plan.physical.tasks[1])
    assert all(sorted(keys) == sorted(s.key for s in plan.physical.tasks[2]) for keys in submitted[1:])


def test_loop_inputs_are_computed_once(client, write_pipe, tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    path = write_pipe("""
use m_loop_inputs_are_comp as m
pipeline p(rounds: int = 4) {
    source xs = m.make() partitions 3
    actor acc = m.Acc()
    repeat rounds {
        acc.add(reduce m.add over xs)
    }
    sink out = acc.total() -> json("out/t.json")
}""", m_loop_inputs_are_comp=f"""
def make():
    with open({str(calls)!r}, "a") as fh:
        fh.write("call\\n")
    return list(range(10))
def add(a, b):
    return a + b
class Acc:
    def __init__(self):
        self.n = 0
    def add(self, x):
        self.n += x
    def total(self):
        return self.n
""")
    monkeypatch.chdir(tmp_path)
    result = load(path).run(backend="dask", client=client)
    assert json.loads(Path(result.files["out"]).read_text()) == 4 * 45
    assert calls.read_text() == "call\n"


# ---- progress, errors, options ------------------------------------------------------------------


def test_a_value_read_from_an_actor_reaches_its_stages_by_reference(client, workdir):
    """`with weights = ps.weights()`: each round's call is made by a task of the round's
    graph, next to the stages it feeds, not by the driver (no round trip a round), and the
    weights come out as the reference backend's."""
    from distributed import get_task_stream
    params = {"rows": 2000, "epochs": 3}
    pipeline = load("examples/train.pipe")
    with get_task_stream(client) as stream:
        result = pipeline.lower("dask", params, client=client).run()
    # 10 floats would travel inside the reading tasks as a data key: a task of that name
    # is the call.
    calls = [d for d in stream.data if str(d["key"]).startswith("grads/weights@")]
    assert len(calls) == 3
    assert _sinks(result) == _sinks(pipeline.run(backend="local", params=params))


def test_a_loops_partitions_are_spread_and_each_workers_share_runs_as_one_task(client, workdir):
    """The partitions a loop reads are placed in equal contiguous shares, one per worker
    (Dask alone put six of eight on one worker), and every round runs each worker's share
    of a stage as one task: the weights are still the reference backend's, bit for bit."""
    from distributed import get_task_stream
    params = {"rows": 2000, "epochs": 3}
    pipeline = load("examples/train.pipe")
    with get_task_stream(client) as stream:
        result = pipeline.lower("dask", params, client=client).run()
    ran = [(str(d["key"]).split("@")[0], d["worker"]) for d in stream.data]
    where = {}
    for key, address in ran:
        where.setdefault(key, set()).add(address)
    assert sorted(key for key, _ in ran if key.startswith("grads-")) == ["grads-0..3"] * 3 + ["grads-4..7"] * 3
    homes = [where[f"batches-{i}"] for i in range(8)]
    assert all(len(h) == 1 for h in homes) and homes[:4] == [homes[0]] * 4 and homes[4:] == [homes[4]] * 4
    assert homes[0] != homes[4]
    assert where["grads-0..3"] == homes[0] and where["grads-4..7"] == homes[4]
    assert _sinks(result) == _sinks(pipeline.run(backend="local", params=params))
    # The plan `pipec compile` shows says so on exactly those tasks.
    lines = pipeline.lower("dask", params).explain().splitlines()
    noted = {line.split()[0]: line for line in lines if "spread:" in line or "batched:" in line}
    assert sorted(noted) == sorted([f"batches-{i}" for i in range(8)] + [f"grads-{i}" for i in range(8)])
    assert all("batched: one task per worker's share, `grads-a..b`" in noted[f"grads-{i}"] for i in range(8))


def test_a_small_value_the_driver_reads_is_folded_on_the_driver_after_its_first_round(client, workdir):
    """paramserver's total (10 floats) is combined by a task in the first round; once the
    driver has seen it is small, it folds the partials itself, in partition order, with
    the same function: the weights are the reference backend's, bit for bit."""
    from distributed import get_task_stream
    params = {"rows": 2000, "epochs": 3}
    pipeline = load("examples/train.pipe")
    with get_task_stream(client) as stream:
        result = pipeline.lower("dask", params, client=client).run()
    rounds_with_a_combine_task = sorted(str(d["key"]).split("@")[1] for d in stream.data
                                        if str(d["key"]).split("@")[0] == "total")
    assert len(rounds_with_a_combine_task) == 1
    assert _sinks(result) == _sinks(pipeline.run(backend="local", params=params))


def test_progress_per_stage_and_round(client, workdir):
    rec = Recorder()
    load("examples/train.pipe").lower("dask", {"rows": 2000, "epochs": 3}, client=client).run(progress=rec)
    assert rec.rounds == [("loop1", 0, 3), ("loop1", 1, 3), ("loop1", 2, 3)]
    assert rec.stages["grads"] == 8 and rec.stages["total"] == 1 and rec.stages["batches"] == 9
    assert rec.advanced["grads"] == 3 * 8 and rec.advanced["total"] == 3


def test_resources_map_to_worker_resources(client, write_pipe, tmp_path, monkeypatch):
    text = """
use m_resources_map_to_wor as m
pipeline p() {
    source xs = range(6) partitions 2
    stage ys = map m.inc over xs resources { %s }
    sink out = collect(ys)
}"""
    path = write_pipe(text % "cpus 1", m_resources_map_to_wor="def inc(x):\n    return x + 1\n")
    monkeypatch.chdir(tmp_path)
    plan = load(path).lower("dask", client=client)
    assert [s.resources for s in plan.physical.tasks[1] if s.group == "ys"] == [{"CPU": 1.0}] * 2
    assert plan.run().outputs["out"] == [1, 2, 3, 4, 5, 6]
    gpu = write_pipe(text % "gpus 1", name="g.pipe", m_resources_map_to_wor="def inc(x):\n    return x + 1\n")
    with pytest.raises(UnsupportedOnBackend) as err:
        load(gpu).lower("dask")  # the embedded cluster has no GPU: refused before running
    assert "needs a GPU: no worker of the local cluster has a GPU" in err.value.render()
    assert "g.pipe:5:" in err.value.render()
    load(gpu).lower("dask", address="tcp://127.0.0.1:1")  # a real cluster may have them


def test_scheduler_address_from_the_environment(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    plan = load(ROOT / "examples" / "wordcount.pipe").lower("dask")
    assert plan.address == "tcp://10.0.0.1:8786" and "scheduler at tcp://10.0.0.1:8786" in plan.explain()


def test_stateful_pool_members_serve_partitions_in_order(client, write_pipe, tmp_path, monkeypatch):
    path = write_pipe("""
use m_stateful_pool_member as m
pipeline p() {
    source xs = range(40) partitions 10
    actor pool tags = m.Tagger() x 3
    stage ys = map_batches tags.tag over xs
    sink out = collect(ys) -> json("out/o.json")
}""", m_stateful_pool_member="""
import time, random
class Tagger:
    def __init__(self):
        self.seen = 0
    def tag(self, batch):
        time.sleep(random.random() * 0.02)
        self.seen += 1
        return [(self.seen, x) for x in batch]
""")
    monkeypatch.chdir(tmp_path)
    pipeline = load(path)
    local = _sinks(pipeline.run(backend="local"))
    assert _sinks(pipeline.run(backend="dask", client=client)) == local


def test_a_pool_whose_earlier_partition_failed_upstream_reports_the_failure(client, write_pipe, tmp_path,
                                                                           monkeypatch):
    """The member serves partitions in order; partition 0 never reaches it (the stage
    before failed there), so its calls for partitions 1 to 3 wait for one that never
    comes. The run ends with the reference backend's error instead of waiting for good."""
    path = write_pipe("""
use m_pool_after_failure as m
pipeline p() {
    source xs = range(8) partitions 4
    actor pool tags = m.Tagger() x 1
    stage ys = map m.boom_on_zero over xs
    stage zs = map_batches tags.tag over ys
    sink out = collect(zs) -> json("out/o.json")
}""", m_pool_after_failure="""
class Tagger:
    def tag(self, batch):
        return [("tagged", x) for x in batch]

def boom_on_zero(x):
    if x == 0:
        raise ValueError("zero")
    return x
""")
    monkeypatch.chdir(tmp_path)
    pipeline = load(path)
    with pytest.raises(PipelineRuntimeError) as local:
        pipeline.run(backend="local")
    ended: dict = {}

    def run():
        try:
            pipeline.run(backend="dask", client=client)  # quiet: nobody watches task by task
        except PipelineRuntimeError as exc:
            ended["error"] = exc
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(120)
    assert not runner.is_alive(), "the run waits for good for a partition its pool will never serve"
    assert str(ended["error"]) == str(local.value)
    assert not (tmp_path / "out").exists()


# ---- fault tolerance ------------------------------------------------------------------------------


def _actor_worker(client, prefix: str) -> str:
    def held(dask_scheduler=None):
        return {str(ts.key): [w.address for w in dask_scheduler.workers.values() if ts in w.actors]
                for ts in dask_scheduler.tasks.values() if ts.actor}
    for key, holders in client.run_on_scheduler(held).items():
        if key.startswith(prefix) and holders:
            return holders[0]
    raise AssertionError(f"no actor {prefix}")


def _kill(client, address: str) -> None:
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)


def test_killing_the_parameter_server_worker_mid_train_gives_the_clean_weights(kill_client, workdir):
    client = kill_client
    params = {"rows": 4000, "epochs": 12}
    pipeline = load("examples/train.pipe")
    clean = _sinks(pipeline.lower("dask", params, client=client).run())
    assert clean == _sinks(pipeline.run(backend="local", params=params))
    killed = []

    def on_round(index):
        if index == 6:  # calls 0..11 applied, the snapshot holds 0..9: two calls to replay
            address = _actor_worker(client, "ps-actor@")
            _kill(client, address)
            killed.append(address)
    plan = pipeline.lower("dask", params, client=client)
    result = run_plan(pipeline, plan, RunEvents(Recorder(on_round=on_round)))  # as `pipec run` does
    assert killed
    assert _sinks(result) == clean
    events = plan.last_driver.events
    assert len(events) == 1 and "from its checkpoint (call 9) and replayed 2 calls" in events[0]
    assert (Path(result.run_dir) / "events.log").read_text().strip() == events[0]
    # The run's summary and report show the restart, in the round it happened.
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert [(f["round"], f["message"]) for f in summary["faults"]] == [(6, events[0])]
    assert html.escape(events[0]) in Path(result.report).read_text()


def test_killing_a_worker_running_stage_tasks_gives_the_clean_result(kill_client, write_pipe, tmp_path, monkeypatch):
    path = write_pipe("""
use m_killing_a_worker_run as m
pipeline p() {
    source xs = range(40) partitions 8
    stage ys = map_batches m.slow_squares over xs
    value total = reduce m.add over ys
    sink out = [total, count(ys)] -> json("out/o.json")
}""", m_killing_a_worker_run="""
import time
def slow_squares(batch):
    time.sleep(0.4)
    return [x * x / 7 for x in batch]
def add(a, b):
    return a + b
""")
    monkeypatch.chdir(tmp_path)
    client = kill_client
    pipeline = load(path)
    local = _sinks(pipeline.run(backend="local"))
    killed = []

    def kill_busy_worker():
        time.sleep(0.6)

        def busy(dask_scheduler=None):
            return [w.address for w in dask_scheduler.workers.values() if w.processing]
        workers = client.run_on_scheduler(busy)
        if workers:
            _kill(client, workers[0])
            killed.append(workers[0])

    def on_stage(name):
        if name == "ys" and not killed:
            threading.Thread(target=kill_busy_worker, daemon=True).start()
    result = pipeline.lower("dask", client=client).run(progress=Recorder(on_stage=on_stage))
    assert killed
    assert _sinks(result) == local


def _kill_during(client, stage: str, actor_prefix: str, killed: list):
    """A Progress that kills the worker holding an actor shortly after ``stage`` starts."""
    def kill():
        time.sleep(0.4)
        address = _actor_worker(client, actor_prefix)
        _kill(client, address)
        killed.append(address)

    def on_stage(name):
        if name == stage and not killed:
            threading.Thread(target=kill, daemon=True).start()
    return Recorder(on_stage=on_stage)


def test_an_actor_reached_through_a_handle_is_restored_and_the_stage_runs_again(kill_client, write_pipe, tmp_path,
                                                                                 monkeypatch):
    path = write_pipe("""
use m_handle_kill as m
pipeline p() {
    actor c = m.Counter() { restarts 2 }
    source xs = range(40) partitions 8
    stage pushed = map m.push over xs with server = c effectful
    sink seen = count(pushed)
    sink total = c.value()
}""", m_handle_kill="""
import time
def push(x, server):
    time.sleep(0.04)
    server.add(x)
    return x
class Counter:
    def __init__(self):
        self.total = 0
    def add(self, x):
        self.total += x
    def value(self):
        return self.total
""")
    monkeypatch.chdir(tmp_path)
    killed: list = []
    plan = load(path).lower("dask", client=kill_client)
    result = plan.run(progress=_kill_during(kill_client, "pushed", "c-actor@", killed))
    assert killed
    # re-created from scratch (no checkpoint), and the whole stage ran again against it
    assert result.outputs == {"seen": 40, "total": sum(range(40))}
    assert "actor `c` was lost" in plan.last_driver.events[0]


_LEDGER = """
import time
def push(x, server):
    time.sleep(0.05)
    server.add(x)
    return x
class Ledger:
    def __init__(self):
        self.seen = []
    def add(self, x):
        self.seen.append(x)
    def total(self):
        return sum(self.seen)
    def applied(self):
        return sorted(self.seen)
"""


@pytest.mark.parametrize("victim", ["stage", "actor"])
def test_a_handle_stage_applies_every_call_once_when_a_worker_dies(victim, kill_client, write_pipe, tmp_path,
                                                                   monkeypatch):
    """Calls through a handle carry idempotency keys: a stage task re-run after its worker
    died sends the same keys and the ledger answers them without applying them again; a
    lost actor comes back from its snapshot and the stage runs again against it."""
    path = write_pipe("""
use m_ledger as m
pipeline p() {
    actor c = m.Ledger() { restarts 2 }
    source xs = range(60) partitions 6
    repeat 2 as r {
        stage pushed = map m.push over xs with server = c
        value seen = count(pushed)
    }
    sink applied = c.applied()
}""", m_ledger=_LEDGER)
    monkeypatch.chdir(tmp_path)
    killed: list = []

    def kill():
        time.sleep(0.3)
        holder = _actor_worker(kill_client, "c-actor@")
        workers = sorted(kill_client.scheduler_info()["workers"])
        target = holder if victim == "actor" else next(w for w in workers if w != holder)
        _kill(kill_client, target)
        killed.append(target)

    def on_stage(name):
        if name == "pushed" and not killed:
            threading.Thread(target=kill, daemon=True).start()
    result = load(path).lower("dask", client=kill_client).run(progress=Recorder(on_stage=on_stage))
    assert killed
    assert result.outputs["applied"] == sorted(list(range(60)) * 2)  # every call of both rounds, once


def test_an_actor_without_restarts_fails_clearly_when_its_worker_dies(kill_client, write_pipe, tmp_path, monkeypatch):
    path = write_pipe("""
use m_an_actor_without_res as m
pipeline p() {
    actor c = m.C()
    repeat 3 {
        c.inc()
    }
    sink out = c.get()
}""", m_an_actor_without_res="class C:\n    def __init__(self):\n        self.n = 0\n    def inc(self):\n        self.n += 1\n"
        "    def get(self):\n        return self.n\n")
    monkeypatch.chdir(tmp_path)
    client = kill_client

    def on_round(index):
        if index == 1:
            _kill(client, _actor_worker(client, "c-actor@"))
    with pytest.raises(PipelineRuntimeError) as err:
        load(path).lower("dask", client=client).run(progress=Recorder(on_round=on_round))
    assert "actor `c` was lost with its worker and has no restarts left" in err.value.render()
    assert "restarts N" in err.value.render()


# ---- the engine: embedded, and a real `dask scheduler` + `dask worker` ------------------------------


@pytest.fixture(scope="module")
def dask_cli_cluster(tmp_path_factory):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1 (no resources)."""
    from distributed import Client
    folder = tmp_path_factory.mktemp("dask-cli")
    scheduler_file = folder / "scheduler.json"
    log = open(folder / "cluster.log", "w")
    procs = [subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], cwd=folder, stdout=log, stderr=log)]
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):
            procs.append(subprocess.Popen(["dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                                           "--memory-limit", "1GiB", "--name", f"w{i}"],
                                          cwd=folder, stdout=log, stderr=log))
        client = Client(address, timeout="30s")
        client.wait_for_workers(2, timeout=60)
        yield address, client
        client.close()
    finally:
        stop_processes(procs, timeout=5)
        log.close()


def test_examples_on_a_dask_scheduler_and_two_workers(dask_cli_cluster, workdir):
    address, _ = dask_cli_cluster
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pipec", "run", "examples/wordcount.pipe", "--backend", "dask",
                          "--address", address], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    dask_top = Path("out/top.json").read_bytes()
    assert Path(load("examples/wordcount.pipe").run(backend="local").files["top_words"]).read_bytes() == dask_top
    params = {"rows": 2000, "epochs": 3}
    pipeline = load("examples/train.pipe")
    on_cluster = _sinks(pipeline.run(backend="dask", params=params, address=address))
    assert on_cluster == _sinks(pipeline.run(backend="local", params=params))


def test_a_resource_no_worker_offers_fails_before_running(dask_cli_cluster, write_pipe, tmp_path, monkeypatch):
    address, client = dask_cli_cluster
    path = write_pipe("""
use m_a_resource_no_worker as m
pipeline p() {
    source xs = range(6) partitions 2
    stage ys = map m.inc over xs resources { cpus 2 }
    sink out = collect(ys)
}""", m_a_resource_no_worker="def inc(x):\n    return x + 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineRuntimeError) as err:
        load(path).run(backend="dask", address=address)
    assert "stage `ys` needs 2 cpus: the most a worker of the cluster (as --resources) has is 0" in err.value.render()
    assert "p.pipe:5:" in err.value.render()


# ---- random pipelines: the same bytes as the reference ------------------------------------------------

_RANDOM_MODULE = """
def inc(x): return x + 1
def even(x): return x % 2 == 0
def lst(x): return [x, x * 3]
def pair(x): return (x % 5, x)
def add(a, b): return a + b
def third(x): return x / 3.0
def size(vs): return len(vs)
def jsum(ab): return ab[0] + ab[1]
def scale(x, f): return x * f
"""


def _random_pipeline(seed: int) -> str:
    """Sources, element-wise stages, shuffles, joins, unions, reductions and a loop over
    a collection var, wired at random (fusion, shuffles and key names get exercised)."""
    rng = random.Random(seed)
    lines, ints, pairs, vals = [], [], [], []

    def new(prefix):
        return f"{prefix}{len(lines)}"
    for _ in range(rng.randint(1, 2)):
        s = new("s")
        lines.append(f"source {s} = range({rng.randint(0, 40)}) partitions {rng.randint(1, 12)}")
        ints.append(s)
    for _ in range(rng.randint(3, 9)):
        c, x = rng.random(), None
        src = rng.choice(ints)
        if c < 0.15:
            x = new("c"); lines.append(f"stage {x} = map m.inc over {src}"); ints.append(x)
        elif c < 0.25:
            x = new("c"); lines.append(f"stage {x} = filter m.even over {src}"); ints.append(x)
        elif c < 0.32:
            x = new("c"); lines.append(f"stage {x} = flat_map m.lst over {src}"); ints.append(x)
        elif c < 0.45 or not pairs:
            x = new("p"); lines.append(f"stage {x} = map m.pair over {src}"); pairs.append(x)
        elif c < 0.55:
            x = new("p"); lines.append(f"stage {x} = reduce_by_key m.add over {rng.choice(pairs)}"); pairs.append(x)
        elif c < 0.62:
            x = new("p"); lines.append(f"stage {x} = map_values m.size over (group_by_key over {rng.choice(pairs)})")
            pairs.append(x)
        elif c < 0.68:
            x = new("c"); lines.append(f"stage {x} = distinct({src})"); ints.append(x)
        elif c < 0.74:
            x = new("c"); lines.append(f"stage {x} = union({src}, {rng.choice(ints)})"); ints.append(x)
        elif c < 0.80:
            x = new("p"); lines.append(f"stage {x} = map_values m.jsum over join({rng.choice(pairs)}, "
                                       f"{rng.choice(pairs)})"); pairs.append(x)
        elif c < 0.87:
            x = new("v"); lines.append(f"value {x} = reduce m.add over (map m.third over {src})"); vals.append(x)
        elif c < 0.92 and vals:
            x = new("c"); lines.append(f"stage {x} = map m.scale over {src} with f = {rng.choice(vals)}"); ints.append(x)
        else:
            x = new("v"); lines.append(f"value {x} = count({rng.choice(ints + pairs)})"); vals.append(x)
    if rng.random() < 0.5:
        v = rng.choice(ints)
        lines += [f"var w = {v}", f"repeat {rng.randint(1, 3)} as i {{",
                  f"    w = map m.scale over (union(w, {v})) with f = i + 1", "}"]
        ints.append("w")
    lines += [f"sink o{i} = collect({c}) -> json(\"out/o{i}.json\")" for i, c in enumerate(ints + pairs)]
    lines += [f"sink q{i} = {v} -> json(\"out/q{i}.json\")" for i, v in enumerate(vals)]
    return "use m_random_pipelines as m\npipeline r() {\n" + "\n".join("    " + x for x in lines) + "\n}\n"


def _outcome(pipeline, **options):
    import shutil
    shutil.rmtree("out", ignore_errors=True)
    try:
        return _sinks(pipeline.run(**options))
    except PipelineRuntimeError as exc:  # the same error, too (say, a reduce over nothing)
        return exc.render()


@pytest.mark.parametrize("seed", range(12))
def test_random_pipelines_write_the_reference_bytes(seed, client, write_pipe, tmp_path, monkeypatch):
    path = write_pipe(_random_pipeline(seed), m_random_pipelines=_RANDOM_MODULE)
    monkeypatch.chdir(tmp_path)
    pipeline = load(path)
    pipeline.check()
    assert _outcome(pipeline, backend="dask", client=client) == _outcome(pipeline, backend="local")


# ---- the exact semantics the lowering relies on (no cluster) -----------------------------------------


def test_top_from_partition_candidates_is_top_of_everything():
    from pipec.backends.runtime import semantics
    rng = random.Random(3)
    for trial in range(300):
        order = rng.choice([None, "key", "element"])
        k = rng.randint(1, 6)
        if order == "element":
            parts = [sorted({rng.randint(0, 30) for _ in range(rng.randint(0, 8))}) for _ in range(k)]
            by = rng.choice([None, lambda x: x % 4])
        else:
            parts = [sorted([(rng.randint(0, 9), rng.randint(0, 3)) for _ in range(rng.randint(0, 8))])
                     if order == "key" else [(rng.randint(0, 9), rng.randint(0, 3)) for _ in range(rng.randint(0, 8))]
                     for _ in range(k)]
            by = rng.choice([None, lambda kv: kv[1]])
        n = rng.randint(0, 10)
        everything = semantics.ordered([x for p in parts for x in p], order)
        expected = semantics.top(everything, n, by)
        got = semantics.top_merge([semantics.top_partial(p, n, by, order) for p in parts], n, by, order)
        assert got == expected, (trial, parts, n, order)
