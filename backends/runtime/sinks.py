"""Every file pipec writes (sinks, snapshots, run records, formatted sources) is written
atomically: temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

from pipec.backends.runtime.semantics import render_sink


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` so readers see the old file
    or the whole new one: temporary file in the same folder, fsync, rename.

    A symlink is followed (its target is replaced, the link stays) and an existing
    file keeps its permissions; a new file gets the usual mode (0666 less the umask).
    Returns ``path`` as given."""
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return Path(path)


def remove_partial_writes(folder: str | Path) -> None:
    """Remove the temporary files of atomic writes that were killed midway, anywhere
    under ``folder`` (a run folder: records, snapshots, manifests). Only for a folder no
    other process is writing to."""
    for partial in Path(folder).rglob(".*.tmp"):
        if partial.is_file():
            partial.unlink(missing_ok=True)


def write_sink(value, fmt: str, path: str, is_collection: bool) -> Path:
    """Render ``value`` in ``fmt`` (fully, before touching the disk) and write it."""
    return atomic_write(path, render_sink(value, fmt, is_collection))


STAGED_MARK = ".pipec-staged-"
MANIFEST = "staged.json"


class StagedSinks:
    """The sinks of one run, committed together when the run succeeds.

    Each sink is rendered and written in full, fsynced, under a hidden name beside its
    target (``.NAME.pipec-staged-RUN.tmp``); the names are listed in the run folder's
    ``staged.json`` before the data is written. ``commit`` renames them all onto their
    targets at the end of the run, ``abort`` removes them when it fails, and the next run
    in the same folder (a resume) removes what a killed run left. So a reader sees every
    sink of a run or none of them (each target is replaced whole by a rename; between the
    first and the last rename of a commit, some targets are new and some still old)."""

    def __init__(self, run_dir: Path, run_id: str):
        self.run_dir, self.run_id = Path(run_dir), run_id
        self.staged: dict[str, Path] = {}  # target (as given) -> its staged file

    def stage(self, value, fmt: str, path: str, is_collection: bool) -> str:
        """Render ``value`` and write it under the staged name of ``path`` (a sink written
        again, in a later round, replaces its staged file). Returns ``path``."""
        data = render_sink(value, fmt, is_collection)
        target = Path(os.path.realpath(path))
        tmp = target.with_name(f".{target.name}{STAGED_MARK}{self.run_id}.tmp")
        if path not in self.staged:
            self.staged[path] = tmp
            self._write_manifest()
        target.parent.mkdir(parents=True, exist_ok=True)
        for old in target.parent.glob(f".{target.name}{STAGED_MARK}*.tmp"):
            if old != tmp:  # another run's leftover for this very target: it was killed
                old.unlink(missing_ok=True)
        atomic_write(tmp, data)
        return path

    def commit(self) -> None:
        """Rename every staged sink onto its target, then forget the manifest."""
        for path, tmp in self.staged.items():
            os.replace(tmp, os.path.realpath(path))
        self.staged.clear()
        (self.run_dir / MANIFEST).unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove every staged sink: the run failed, and its outputs are not written."""
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged.clear()
        (self.run_dir / MANIFEST).unlink(missing_ok=True)

    def clean_leftovers(self) -> None:
        """Remove the staged files an earlier run in this folder left when it was killed,
        and the temporary files of its writes that were cut short in the run folder."""
        remove_partial_writes(self.run_dir)
        manifest = self.run_dir / MANIFEST
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            listed = []  # none, or killed while the manifest itself was written
        for tmp in [*listed, str(manifest)]:
            Path(tmp).unlink(missing_ok=True)
            for partial in Path(tmp).parent.glob(f".{Path(tmp).name}.*.tmp"):  # killed inside atomic_write
                partial.unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        atomic_write(self.run_dir / MANIFEST, json.dumps(sorted(str(p) for p in self.staged.values())))


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
