"""One build's diagnostics, and the signal that stops a statement at its first error.

The builder reports every error of a file in one pass. A check that cannot go on
records its diagnostic and raises :class:`Abort`; the builder catches it around the
statement, keeps the statement's name defined, and goes on with the next one.
"""

from __future__ import annotations

from typing import NoReturn

from pipec.dsl.diagnostics import ERROR, WARNING, Diagnostic
from pipec.dsl.source import Span


class Abort(Exception):
    """Stops building one statement after its error was recorded."""


class Reporter:
    """Collects the diagnostics of one ``.pipe`` file, in the order they were found."""

    def __init__(self, path: str):
        self.path = path
        self.diagnostics: list[Diagnostic] = []

    def error(self, message: str, span: Span | None, hint: str | None = None, *, code: str) -> None:
        """Record an error at ``span`` (with an optional hint); the caller goes on. ``code``
        names the check (a key of :data:`pipec.dsl.codes.CODES`)."""
        self.diagnostics.append(Diagnostic(ERROR, message, span, hint, self.path, code))

    def warn(self, message: str, span: Span | None, hint: str | None = None, *, code: str) -> None:
        """Record a warning at ``span`` (with an optional hint) under ``code``."""
        self.diagnostics.append(Diagnostic(WARNING, message, span, hint, self.path, code))

    def fail(self, message: str, span: Span | None, hint: str | None = None, *, code: str) -> NoReturn:
        """Record an error at ``span`` under ``code`` and raise :class:`Abort` to stop the
        statement."""
        self.error(message, span, hint, code=code)
        raise Abort

    @property
    def has_errors(self) -> bool:
        """True once any error was recorded (warnings do not count)."""
        return any(d.is_error for d in self.diagnostics)
