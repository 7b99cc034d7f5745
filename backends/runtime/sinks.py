"""Every file pipec writes (sinks, snapshots, run records, formatted sources) is written
atomically: temporary file in the same folder, fsync, rename."""

from __future__ import annotations

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


def write_sink(value, fmt: str, path: str, is_collection: bool) -> Path:
    """Render ``value`` in ``fmt`` (fully, before touching the disk) and write it."""
    return atomic_write(path, render_sink(value, fmt, is_collection))


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
