"""Reading the file sources (`read_text`, `read_jsonl`) exactly as the reference does, on
every backend: whole, on the driver, or one partition per task.

`read_text` means the file's lines in text mode (UTF-8, universal newlines, line ends
removed), cut into contiguous blocks by :func:`semantics.partition_bounds`. A task can read
just its own block: :func:`line_index` counts the newlines of each 64 KiB chunk once (C
speed, the file streamed, never held whole), and :func:`read_lines_part` seeks to the
block's first line and decodes only its bytes. Files with carriage returns are left to the
text layer (each partition then reads the whole file and slices it).

Paths may be storage URLs (``s3://...``, see :mod:`storage`); a task then streams its
block from the object store. Errors are the plain ``OSError`` / ``ValueError`` of
reading; each backend words them.
"""

from __future__ import annotations

import bisect
import json

from pipec.backends.runtime import semantics, storage

CHUNK = 1 << 16


def read_lines(path: str) -> list[str]:
    """Every line of a text file, without its line end."""
    with storage.open_input(path, "r", encoding="utf-8") as fh:
        text = fh.read()  # universal newlines: "\r\n" and "\r" arrive as "\n"
    lines = text.split("\n")
    if lines[-1] == "":  # the last newline ends a line; it does not start another
        lines.pop()
    return lines


def read_jsonl(path: str) -> list:
    """One JSON value per non-blank line; a bad line is a ValueError naming it."""
    out = []
    with storage.open_input(path, "r", encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return out


def line_index(path: str) -> dict | None:
    """Newlines counted per CHUNK bytes of a text file, so each partition can seek to its
    own lines; None when the file has carriage returns."""
    cum, size, last = [0], 0, b""
    with storage.open_input(path) as fh:
        while chunk := fh.read(CHUNK):
            if b"\r" in chunk:
                return None
            cum.append(cum[-1] + chunk.count(b"\n"))
            size += len(chunk)
            last = chunk
    lines = cum[-1] + (1 if size and not last.endswith(b"\n") else 0)
    return {"size": size, "lines": lines, "cum": cum}


def _line_start(fh, index: dict, m: int) -> int:
    """The byte offset where line m starts (just after the m-th newline)."""
    if m == 0:
        return 0
    cum = index["cum"]
    j = bisect.bisect_left(cum, m) - 1  # cum[j] < m <= cum[j + 1]: the m-th newline is in chunk j
    if j + 1 >= len(cum):
        return index["size"]
    fh.seek(j * CHUNK)
    data = fh.read(CHUNK)
    at = -1
    for _ in range(m - cum[j]):
        at = data.index(b"\n", at + 1)
    return j * CHUNK + at + 1


def read_lines_part(path: str, i: int, k: int, index: dict | None) -> list[str]:
    """Partition i of k of :func:`read_lines`, decoding only its bytes when ``index`` (from
    :func:`line_index`) is given."""
    if index is None:
        lines = read_lines(path)
        a, b = semantics.partition_of(len(lines), k, i)
        return lines[a:b]
    a, b = semantics.partition_of(index["lines"], k, i)
    if a == b:
        return []
    with storage.open_input(path) as fh:
        start, end = _line_start(fh, index, a), _line_start(fh, index, b)
        fh.seek(start)
        chunk = fh.read(end - start).decode("utf-8")
    lines = chunk.split("\n")
    if chunk.endswith("\n"):
        lines.pop()
    return lines
