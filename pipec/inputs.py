"""Which `.pipe` files a command line names: files, folders and ``-`` for standard input.

``pipec check`` and ``pipec fmt`` take any mix of them, as pre-commit and CI call them
with many files at once. A folder stands for every ``*.pipe`` file under it, in sorted
order, skipping hidden folders (``.git``, ``.venv``, ``.pipec``): nobody keeps pipelines
to check there, and walking a virtual environment would be slow.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipec.dsl.diagnostics import FileError, UsageError
from pipec.dsl.source import SourceFile

STDIN = "-"
STDIN_NAME = "<stdin>"


def expand(paths: list[str]) -> list[str]:
    """The files named by ``paths``, in the order given, each once.

    Takes file names, folder names and ``-``. A folder becomes the ``*.pipe`` files under
    it; a folder holding none raises :class:`FileError`, since a typo in CI must not pass
    as "nothing to check". A name that does not exist is kept, so reading it reports it
    in its turn. ``-`` may be given once."""
    if paths.count(STDIN) > 1:
        raise UsageError("`-` (standard input) is given more than once")
    found: list[str] = []
    for name in paths:
        path = Path(name)
        if name != STDIN and path.is_dir():
            inside = [str(p) for p in sorted(path.rglob("*.pipe"))
                      if p.is_file() and not _hidden(p.relative_to(path))]
            if not inside:
                raise FileError(name, "is a directory holding no .pipe file",
                                "name .pipe files, or a folder that has some")
            found.extend(inside)
        else:
            found.append(name)
    return list(dict.fromkeys(found))


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts[:-1])


def read(name: str, stdin_name: str | None = None) -> SourceFile:
    """The text of file ``name``, or of standard input for ``-`` (then called
    ``stdin_name``, by default ``<stdin>``, in messages and when looking for the
    modules a ``use`` names). Raises :class:`FileError` when it cannot be read."""
    if name != STDIN:
        return SourceFile.read(name)
    label = stdin_name or STDIN_NAME
    data = sys.stdin.buffer.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return SourceFile(label, data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[data.rfind(b"\n", 0, exc.start) + 1 : exc.start].decode("utf-8")) + 1
        raise FileError(label, f"byte 0x{data[exc.start]:02x} is not valid UTF-8",
                        hint=".pipe files are UTF-8 text", line=line, column=column) from None
