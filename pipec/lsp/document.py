"""One open `.pipe` document as the language server sees it: its text, what the checker
said about it, and the names in it.

Every version of the text is checked by :func:`pipec.checking.check_source`, the same
function behind ``pipec check``, so the editor shows the same messages, codes and hints
as the terminal. While the user types, the text often does not parse; the last version
that did is kept, so outline, hover and completion go on working from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipec.checking import Report, check_source
from pipec.compiler.modules import ModuleIndex
from pipec.dsl.source import SourceFile
from pipec.lsp.names import Names, index
from pipec.lsp.pysource import PySource


@dataclass
class Analysis:
    """One version of a document, checked; ``names`` is None when it does not parse."""

    source: SourceFile
    report: Report
    names: Names | None
    python: PySource

    @property
    def module(self):
        return self.report.module


class Document:
    """The analyses of one open document: the latest, and the latest that parsed."""

    def __init__(self, path: str):
        self.path = path
        self.latest: Analysis | None = None
        self.parsed: Analysis | None = None

    def update(self, text: str) -> Analysis:
        """Check ``text`` as the document's new content and return its analysis."""
        source = SourceFile(self.path, text)
        # A fresh index per version: a module the user just created or edited is read
        # again (reading a module is a millisecond; parsing the .pipe file costs more).
        modules = ModuleIndex.for_file(self.path)
        report = check_source(source, index=modules)
        names = index(report.module, text) if report.module is not None else None
        self.latest = Analysis(source, report, names, PySource(modules))
        if names is not None:
            self.parsed = self.latest
        return self.latest

    @property
    def best(self) -> Analysis | None:
        """The analysis to navigate with: the latest if it parsed, else the last that did."""
        return self.parsed or self.latest
