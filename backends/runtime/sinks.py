"""Sinks are written atomically: temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from backends.runtime.semantics import render_sink


def atomic_write(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so readers see the old file or the whole new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def write_sink(value, fmt: str, path: str, is_collection: bool) -> Path:
    """Render ``value`` in ``fmt`` (fully, before touching the disk) and write it."""
    return atomic_write(path, render_sink(value, fmt, is_collection))
