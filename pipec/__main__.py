"""``python -m pipec``: the `pipec` command."""

from pipec.cli import entry

entry()
