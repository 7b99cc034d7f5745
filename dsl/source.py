"""Source text and positions: what every diagnostic points into."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Span:
    """A region of source text. Lines and columns are 1-based, offsets 0-based."""

    line: int
    column: int
    end_line: int
    end_column: int
    start: int
    end: int

    def to(self, other: "Span") -> "Span":
        """The span from the start of ``self`` to the end of ``other``."""
        return Span(self.line, self.column, other.end_line, other.end_column, self.start, other.end)

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


def fast_constructor(cls: type):
    """A function building an instance of ``cls``, a frozen slotted dataclass, from all
    its fields in order, as ``cls(...)`` does but about twice as fast (no call through
    the type, no ``object.__setattr__`` per field): for the loops that make spans and
    nodes by the ten thousand (the parser, the language server moving statements)."""
    if getattr(cls, "__post_init__", None) is not None or "__dict__" in dir(cls):
        raise TypeError(f"{cls.__name__} is not a plain frozen slotted dataclass")
    names = [f.name for f in fields(cls)]
    scope = {"new": object.__new__, "cls": cls, **{f"s{i}": cls.__dict__[n].__set__ for i, n in enumerate(names)}}
    args = ", ".join(f"a{i}" for i in range(len(names)))
    sets = "".join(f"    s{i}(o, a{i})\n" for i in range(len(names)))
    exec(f"def make({args}):\n    o = new(cls)\n{sets}    return o\n", scope)
    return scope["make"]


make_span = fast_constructor(Span)


@dataclass(frozen=True)
class SourceFile:
    """A `.pipe` file's name and decoded text."""

    path: str
    text: str

    @classmethod
    def read(cls, path: str | Path) -> "SourceFile":
        """Read ``path`` as UTF-8. Raises :class:`pipec.dsl.diagnostics.FileError` on any failure."""
        from pipec.dsl.diagnostics import FileError

        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise FileError(str(path), "no such file") from None
        except IsADirectoryError:
            raise FileError(str(path), "is a directory, not a .pipe file") from None
        except OSError as exc:
            raise FileError(str(path), exc.strerror or str(exc)) from None
        if data.startswith(codecs.BOM_UTF8):  # some editors start UTF-8 files with one
            data = data[len(codecs.BOM_UTF8):]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            # In characters, like every other column: the line up to the bad byte is valid.
            col = len(data[data.rfind(b"\n", 0, exc.start) + 1 : exc.start].decode("utf-8")) + 1
            raise FileError(str(path), f"byte 0x{data[exc.start]:02x} is not valid UTF-8",
                            hint=".pipe files are UTF-8 text", line=line, column=col) from None
        return cls(str(path), text)

    @cached_property
    def _lines(self) -> list[str]:
        return self.text.split("\n")

    def line_text(self, line: int) -> str:
        """The text of 1-based ``line`` without its newline ('' past the end)."""
        lines = self._lines
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""
