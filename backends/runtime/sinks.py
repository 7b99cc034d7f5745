"""The sinks of a run: rendered in full, staged beside their targets, committed together.

Every file pipec writes (sinks, snapshots, run records, formatted sources) is written
atomically through :mod:`pipec.backends.runtime.storage`, on the local disk or at any
fsspec URL; ``atomic_write`` is re-exported here for the callers that know it here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipec.backends.runtime import datasets, storage
from pipec.backends.runtime.semantics import render_sink
from pipec.backends.runtime.storage import atomic_write


def remove_partial_writes(folder: str | Path) -> None:
    """Remove the temporary files of atomic writes that were killed midway, anywhere
    under ``folder`` (a run folder: records, snapshots, manifests). Only for a folder no
    other process is writing to. An object store writes in one PUT and leaves none."""
    if not storage.is_local(folder):
        return
    for partial in Path(storage.local_path(folder)).rglob(".*.tmp"):
        if partial.is_file():
            partial.unlink(missing_ok=True)


def _remove_partial_writes_of(path: str) -> None:
    """The temporary files an atomic write of ``path`` left when it was killed (on disk)."""
    if storage.is_local(path):
        target = Path(storage.local_path(path))
        for partial in target.parent.glob(f".{target.name}.*.tmp"):
            partial.unlink(missing_ok=True)


def write_sink(value, fmt: str, path: str, is_collection: bool) -> Path:
    """Render ``value`` in ``fmt`` (fully, before touching the disk) and write it."""
    return atomic_write(path, render_sink(value, fmt, is_collection))


STAGED_MARK = ".pipec-staged-"
MANIFEST = "staged.json"


class StagedSinks:
    """The sinks of one run, committed together when the run succeeds.

    Each sink is rendered and written in full under a hidden name beside its target
    (``.NAME.pipec-staged-RUN.tmp``, on the target's own storage: a local folder or a
    bucket); the names are listed in the run folder's ``staged.json`` before the data is
    written. ``commit`` moves them all onto their targets at the end of the run (a rename
    on disk, a server-side copy on an object store: either way each target appears
    whole), ``abort`` removes them when it fails, and the next run in the same folder (a
    resume) removes what a killed run left. So a reader sees every sink of a run or none
    of them, except while a commit runs: between its first and its last move some
    targets are new and some still old. A commit is recorded in the manifest before its
    first move, so one that is cut short (the driver killed, a storage error) is never
    undone halfway: the next run in the same folder finishes it."""

    def __init__(self, run_dir: str | Path, run_id: str):
        self.run_dir, self.run_id = str(run_dir), run_id
        self.staged: dict[str, str] = {}  # target (as given) -> its staged file
        # Dataset sinks (parquet, csv): target -> its staging folder, and the parts written
        # there by the tasks (see datasets.py); committed with the files, in the same way.
        self.datasets: dict[str, str] = {}
        self.parts: dict[str, list[str]] = {}
        self.committing = False  # the commit's moves have started

    def stage_dataset(self, path: str) -> str:
        """The staging folder the tasks write dataset sink ``path``'s parts into: listed
        in the manifest first, emptied, other runs' leftovers for ``path`` removed."""
        staging = self.datasets.get(path) or datasets.staging_of(path, self.run_id)
        if path not in self.datasets:
            self.datasets[path] = staging
            self._write_manifest()
        datasets.prepare_staging(path, staging)
        return staging

    def dataset_written(self, path: str, names: list[str]) -> str:
        """The tasks wrote the parts ``names`` of dataset sink ``path``: commit those."""
        self.parts[path] = list(names)
        return path

    def stage(self, value, fmt: str, path: str, is_collection: bool) -> str:
        """Render ``value`` and write it under the staged name of ``path`` (a sink written
        again, in a later round, replaces its staged file). Returns ``path``."""
        data = render_sink(value, fmt, is_collection)
        target = _target(path)
        folder, name = storage.parent(target), storage.name(target)
        tmp = storage.join(folder, f".{name}{STAGED_MARK}{self.run_id}.tmp")
        if path not in self.staged:
            self.staged[path] = tmp
            self._write_manifest()
            for old in storage.listing(folder):
                if old.startswith(f".{name}{STAGED_MARK}") and old.endswith(".tmp") and storage.join(folder, old) != tmp:
                    storage.remove(storage.join(folder, old))  # another run's leftover for this target: it was killed
        storage.atomic_write(tmp, data)
        return path

    def commit(self) -> None:
        """Move every staged sink onto its target, then forget the manifest. The moves
        are recorded first (see :meth:`clean_leftovers`); once they started, a failure
        leaves them to be finished, never undone (:meth:`abort` keeps them)."""
        files = [[tmp, _target(path)] for path, tmp in self.staged.items()]
        sets = [[staging, path, self.parts.get(path, [])] for path, staging in self.datasets.items()]
        if not files and not sets:
            return
        storage.atomic_write(storage.join(self.run_dir, MANIFEST),
                             json.dumps({"commit": {"files": files, "datasets": sets}}, sort_keys=True))
        self.committing = True
        _finish_commit(files, sets, again=False)
        self.staged.clear()
        self.datasets.clear()
        storage.remove(storage.join(self.run_dir, MANIFEST))
        self.committing = False

    def abort(self) -> None:
        """Remove every staged sink: the run failed, and its outputs are not written. A
        commit under way is left as it is, for the next run in the folder to finish."""
        if self.committing:
            return
        for tmp in self.staged.values():
            storage.remove(tmp)
        self.staged.clear()
        for staging in self.datasets.values():
            datasets.remove(staging)
        self.datasets.clear()
        storage.remove(storage.join(self.run_dir, MANIFEST))

    def clean_leftovers(self) -> None:
        """Remove the staged files an earlier run in this folder left when it was killed,
        and the temporary files of its writes that were cut short in the run folder; a
        commit it had started is finished instead (its sinks were complete)."""
        manifest = storage.join(self.run_dir, MANIFEST)
        try:
            listed = json.loads(storage.read_text(manifest))
        except (OSError, ValueError):
            listed = []  # none, or killed while the manifest itself was written
        if isinstance(listed, dict):
            _finish_commit(listed["commit"]["files"], listed["commit"]["datasets"], again=True)
            listed = []
        remove_partial_writes(self.run_dir)
        for tmp in listed:
            if tmp.endswith(datasets.STAGED_SUFFIX):
                datasets.remove(tmp)
            else:
                storage.remove(tmp)
                _remove_partial_writes_of(tmp)  # killed inside atomic_write
        storage.remove(manifest)

    def _write_manifest(self) -> None:
        listed = list(self.staged.values()) + list(self.datasets.values())
        storage.atomic_write(storage.join(self.run_dir, MANIFEST), json.dumps(sorted(listed)))


def _finish_commit(files: list, sets: list, again: bool) -> None:
    """The moves of a commit (``[staged, target]`` files, ``[staging, target, parts]``
    datasets); ``again``: what is left of them after one was cut short (a staged file
    that is gone was moved, or replaced by a later run's write of its target)."""
    for tmp, target in files:
        if not again or storage.exists(tmp):
            storage.move(tmp, target)
    for staging, target, names in sets:
        datasets.commit(staging, target, names, again)


ROUND_MARK = ".pipec-round-"
ROUND_LOG = "resume/round-files.json"  # relative to the run folder; a fresh run clears it


class RoundFiles:
    """The files (and dataset folders) that sinks inside loops write, one per round, each
    committed as soon as its round computes it and written exactly once per run, also
    across ``--resume``.

    A file is rendered in full under a hidden name beside its target, then listed in the
    run folder's log (target -> that name), then moved onto its target. A driver killed
    before the log names it leaves a hidden file that nothing lists (the round runs again
    on resume and writes it); killed after, the resumed run finishes the move
    (:meth:`recover`); either way the target is written once, whole. A resumed run that
    runs a round again skips the files the log holds (the round computes the same bytes:
    every backend is deterministic and actor calls are applied exactly once).

    A dataset (``parquet``, ``csv``) is listed in the log as *pending* (its staging folder
    beside the target, no parts yet) before its tasks write their parts there; once they
    all have, the log names the parts and the commit moves them in, ``_SUCCESS`` last
    (:func:`datasets.commit`). A resumed run removes the staging folder of a pending
    dataset (its round runs again and writes it afresh) and finishes the commit of one
    whose parts the log names; so a round's dataset is committed once, whole, and a
    killed round leaves nothing behind."""

    def __init__(self, run_dir: str, run_id: str):
        self.run_dir, self.run_id = str(run_dir), run_id
        # target (as given) -> [hidden name, sink node] for a file; [staging folder, sink
        # node, part names or None while its tasks write them] for a dataset
        self.log: dict[str, list] = {}
        self.recovered: set[str] = set()  # targets an earlier driver of this run committed
        # datasets committed by an earlier driver whose round runs again: target -> the
        # folder its tasks write into this time, thrown away once they have
        self.discarded: dict[str, str] = {}

    def recover(self) -> dict[str, list[str]]:
        """A resumed run: finish the moves the dead driver logged; returns the files it
        committed, per sink node, in the order they were written."""
        try:
            self.log = json.loads(storage.read_text(storage.join(self.run_dir, ROUND_LOG)))
        except (OSError, ValueError):
            self.log = {}
        by_node: dict[str, list[str]] = {}
        pending = []
        for path, (tmp, node, *dataset) in self.log.items():
            if dataset and dataset[0] is None:  # its round's tasks were writing: it runs again
                datasets.remove(tmp)
                pending.append(path)
                continue
            if dataset:
                datasets.commit(tmp, path, dataset[0], again=True)
            elif storage.exists(tmp):
                storage.move(tmp, _target(path))
            self.recovered.add(path)
            by_node.setdefault(node, []).append(path)
        if pending:
            for path in pending:
                del self.log[path]
            self._write_log()
        return by_node

    def stage_dataset(self, node: str, path: str) -> str:
        """The staging folder the tasks of dataset sink ``node`` write this round's parts
        of ``path`` into: listed in the log as pending first, emptied, other runs'
        leftovers for ``path`` removed. Raises FileExistsError for a path this run wrote
        in an earlier round. For a dataset an earlier driver of this run committed, the
        parts go to a folder that :meth:`commit_dataset` throws away."""
        staging = datasets.staging_of(path, self.run_id)
        entry = self.log.get(path)
        if entry is not None:
            if path in self.recovered and entry[1] == node:
                self.discarded[path] = staging
                datasets.prepare_staging(path, staging)
                return staging
            if entry[1:] == [node, None] and entry[0] == staging:  # this round's graph lowered again
                datasets.prepare_staging(path, staging)
                return staging
            raise FileExistsError(path)
        self.log[path] = [staging, node, None]
        self._write_log()
        datasets.prepare_staging(path, staging)
        return staging

    def commit_dataset(self, node: str, path: str, names: list[str]) -> bool:
        """The tasks wrote the parts ``names`` of this round's dataset ``path``: listed in
        the log, then committed; False when an earlier driver of this run committed it
        (this round's parts are removed, the target is left as it is)."""
        if path in self.discarded:
            datasets.remove(self.discarded.pop(path))
            return False
        staging = self.log[path][0]
        self.log[path] = [staging, node, list(names)]
        self._write_log()
        datasets.commit(staging, path, names)
        return True

    def abort(self) -> None:
        """The run failed: the staging folders of datasets whose parts were still being
        written are removed, and so is their pending entry in the log."""
        for path, staging in self.discarded.items():
            datasets.remove(staging)
        self.discarded.clear()
        pending = [path for path, entry in self.log.items() if len(entry) > 2 and entry[2] is None]
        for path in pending:
            datasets.remove(self.log.pop(path)[0])
        if pending:
            self._write_log()

    def _write_log(self) -> None:
        storage.atomic_write(storage.join(self.run_dir, ROUND_LOG), json.dumps(self.log, sort_keys=True))

    def write(self, node: str, value, fmt: str, path: str, is_collection: bool) -> bool:
        """Commit round file ``path`` of sink ``node``; False when an earlier driver of
        this run committed it already. Raises FileExistsError for a path this run wrote
        in an earlier round (two rounds must not write one file)."""
        if path in self.log:
            if path in self.recovered and self.log[path][1] == node:
                return False
            raise FileExistsError(path)
        data = render_sink(value, fmt, is_collection)
        target = _target(path)
        tmp = storage.join(storage.parent(target), f".{storage.name(target)}{ROUND_MARK}{self.run_id}.tmp")
        storage.atomic_write(tmp, data)
        self.log[path] = [tmp, node]
        self._write_log()
        storage.move(tmp, target)
        return True


def _target(path: str) -> str:
    """Where sink ``path`` is written: a local path with its symlinks resolved (the link's
    target is replaced, the link stays), a URL as it is."""
    return os.path.realpath(storage.local_path(path)) if storage.is_local(path) else path
