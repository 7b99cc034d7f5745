"""The pipec grammar, shipped as package data (``pipe.lark``)."""

from importlib.resources import files


def grammar_text() -> str:
    """The text of ``pipe.lark``."""
    return files(__name__).joinpath("pipe.lark").read_text(encoding="utf-8")
