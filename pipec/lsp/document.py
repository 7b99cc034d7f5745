"""One open `.pipe` document as the language server sees it: its text, what the checker
said about it, and the names in it.

Every version of the text is checked by :func:`pipec.checking.check_source`, the same
function behind ``pipec check``, so the editor shows the same messages, codes and hints
as the terminal; only the parsing is incremental (:mod:`pipec.lsp.incremental`), and
gives the same tree. While the user types, the text often does not parse; the last version
that did is kept, so outline, hover and completion go on working from it.
"""

from __future__ import annotations

from functools import cached_property

from pipec.checking import Report, check_source
from pipec.compiler.modules import ModuleIndex
from pipec.dsl.source import SourceFile
from pipec.lsp.incremental import IncrementalParser
from pipec.lsp.names import Names, index
from pipec.lsp.pysource import PySource


class Analysis:
    """One version of a document, checked. Its :attr:`names` are found on first use,
    not on every keystroke: diagnostics need only the check."""

    def __init__(self, source: SourceFile, report: Report, python: PySource):
        self.source, self.report, self.python = source, report, python

    @property
    def module(self):
        """The AST, or None when this version does not parse."""
        return self.report.module

    @cached_property
    def names(self) -> Names | None:
        """Every name in the text and what it refers to; None when it does not parse."""
        return index(self.module, self.source.text) if self.module is not None else None


class Document:
    """The analyses of one open document: the latest, and the latest that parsed."""

    def __init__(self, path: str):
        self.path = path
        self.latest: Analysis | None = None
        self.parsed: Analysis | None = None
        self.parser = IncrementalParser()

    def update(self, text: str) -> Analysis:
        """Check ``text`` as the document's new content and return its analysis."""
        source = SourceFile(self.path, text)
        # A fresh index per version: a module the user just created or edited is read
        # again (reading a module is a millisecond; parsing the .pipe file costs more).
        modules = ModuleIndex.for_file(self.path)
        report = check_source(source, index=modules, parser=self.parser.parse)
        self.latest = Analysis(source, report, PySource(modules))
        if report.module is not None:
            self.parsed = self.latest
        return self.latest

    @property
    def best(self) -> Analysis | None:
        """The analysis to navigate with: the latest if it parsed, else the last that did."""
        return self.parsed or self.latest
