"""Where a loop's partitions live on a Dask cluster, and one task per worker's share.

Two rules for the collections a loop reads every round but that are made once, before
it (paramserver's batches, a model's training data):

* **spread**: the tasks making them go to the workers in equal contiguous shares,
  partition i of P to worker i x W / P (a preference: a task whose worker is gone runs
  elsewhere). Left to Dask, they pile up where their input is: six of paramserver's eight
  batches sat on one worker, so each round ran six gradients on one core and two on the
  other.
* **batch**: in every graph, the tasks of one segment whose input partitions one worker
  holds run as one Dask task (body ``segments``, keyed ``grads-0..3``), giving the list of
  those partitions' results. Dask pays a few hops between processes for every task, and
  paramserver's gradients compute for under 1 ms each: in one session its rounds took
  0.93x the hand-written program's, 1.03x with a task per partition (2 workers, load
  under 1, December 2026). Each result is still its partition's own, read by its readers
  in partition order (a failed partition fails its readers only), so every fold and every
  byte is that of a task per partition.

Only a task read inside its own graph is batched: a partition kept for later graphs
keeps a key of its own. The plan `pipec compile` shows names both rules on the tasks
they apply to (:func:`notes`); the shares themselves depend on the workers at run time.
"""

from __future__ import annotations

from dataclasses import replace

from pipec.compiler import ir
from pipec.backends.physical import steps
from pipec.backends.physical.planner import PhysicalPlan, Ref, TaskSpec, key_of


def made_once_read_every_round(graph: ir.IR, node: str) -> bool:
    """Whether collection ``node`` is made outside loops and read inside one (a node of
    the plan's own, a split hoisted out of a loop say, is neither)."""
    return (node in graph and graph.op(node).loop is None
            and any(graph.op(dst).loop is not None for dst, _ in graph.out_edges(node)))


def spread_keys(graph: ir.IR, exports, parts: dict[str, list[Ref]], in_step: dict) -> dict[str, list[str]]:
    """Collection -> the keys of the tasks making its partitions, in order, for each
    collection of this graph to spread: made once and read every round, each partition
    a task of its own (not a shared scan's output, nor a grouped merge's run)."""
    wanted = {}
    for node in sorted(exports):
        refs = parts.get(node, ())
        keys = [ref.key for ref in refs]
        if (len(refs) > 1 and len(set(keys)) == len(keys) and all(ref.output is None for ref in refs)
                and all(in_step.get(key) is not None for key in keys) and made_once_read_every_round(graph, node)):
            wanted[node] = keys
    return wanted


def homes(collections: dict[str, list[str]], workers: list[str]) -> dict[str, str]:
    """Task key -> its worker: partition i of P on ``workers[i * W // P]``."""
    return {key: workers[i * len(workers) // len(keys)] for keys in collections.values() for i, key in enumerate(keys)}


def batchable(spec: TaskSpec) -> bool:
    """Whether segment task ``spec`` may share a task with its worker's other partitions:
    one output per partition, an input partition it reads, no pool member, resources or
    actor handle (a handle's calls are keyed by their task)."""
    if spec.body != "segment" or spec.member is not None or spec.resources:
        return False
    segment, base = spec.args[0], spec.args[2]
    if steps.several(segment.terminal) or not isinstance(base, Ref):
        return False
    return not any(isinstance(b, steps.Handle) for stage in segment.steps for _, b in stage.bindings)


def eligible(specs: list[TaskSpec], kept: set[str]) -> set[str]:
    """Keys of the tasks of one graph that may share a task with their worker's share:
    batchable, not ``kept`` for later graphs (a key of its own), and read in this graph
    (where a failed partition's failure surfaces) but not by a stage served by an actor
    pool (a member serves its partitions in order and waits for each, so a partition's
    failure must reach it exactly as a task of its own would deliver it)."""
    read = {ref.key for spec in specs for ref in spec.deps}
    read -= {ref.key for spec in specs if spec.body == "pool" for ref in spec.deps}
    return {spec.key for spec in specs if spec.key in read and spec.key not in kept and batchable(spec)}


def batches(specs: list[TaskSpec], home_of, taken: set[str]) -> tuple[list[TaskSpec], dict[str, tuple[str, int]],
                                                                    dict[str, str]]:
    """``specs`` with each run of consecutive partitions of one segment that one worker
    holds made one ``segments`` task. ``home_of(spec)`` is the worker holding a batchable
    task's input (None: not batched); ``taken``, the keys already in the graph. Gives the
    specs, plan key -> (its batch's key, position), and batch key -> its worker."""
    runs: dict[tuple, list] = {}
    order: list = []
    for spec in specs:
        home = home_of(spec)
        if home is None:
            order.append(spec)
            continue
        segment, partition = spec.args[0], spec.args[1]
        run = runs.get((id(segment), home))
        if run is None or run[-1].args[1] != partition - 1 or run[-1].args[3:] != spec.args[3:]:
            run = runs[(id(segment), home)] = []
            order.append(run)
        run.append(spec)
    out, batched, where = [], {}, {}
    for item in order:
        if isinstance(item, TaskSpec):
            out.append(item)
            continue
        first, last = item[0], item[-1]
        key = f"{first.args[0].name}-{first.args[1]}..{last.args[1]}"
        if len(item) == 1 or key in taken:
            out.extend(item)
            continue
        out.append(replace(first, key=key, body="segments",
                           label=f"{first.label}: partitions {first.args[1]}..{last.args[1]}, one task on the "
                                 "worker holding them",
                           args=(first.args[0], tuple(s.args[1] for s in item), *(s.args[2] for s in item),
                                 *first.args[3:])))
        batched.update((spec.key, (key, position)) for position, spec in enumerate(item))
        where[key] = home_of(first)
    return out, batched, where


def notes(plan: PhysicalPlan) -> dict[str, str]:
    """Plan key -> what the two rules do to its task, for the plan `pipec compile` shows:
    the same rules on the plan's own tasks (how many partitions share a task is up to the
    workers there at run time)."""
    out, spread = {}, set()
    for step in plan.planner.graph_steps():
        if step.loop is None:
            in_step = {spec.key: spec for spec in plan.tasks[step.number]}
            for keys in spread_keys(plan.ir, step.exports, plan.refs, in_step).values():
                spread.update(keys)
                out.update((key, "spread: an equal contiguous share of the partitions per worker") for key in keys)
    for step in plan.planner.graph_steps():
        specs = plan.tasks[step.number]
        kept = {ref.key for node in step.exports for ref in plan.refs.get(node, ())} | {key_of(n) for n in step.exports}
        batchable_here = eligible(specs, kept)
        for spec in specs:
            if spec.key in batchable_here and spec.args[2].key in spread:
                out[spec.key] = f"batched: one task per worker's share, `{spec.args[0].name}-a..b`"
    return out
