"""``pipec lsp``: the language server, on standard input and output, built on pygls.

This module only translates: LSP positions to offsets into the text and back, and the
plain results of :mod:`pipec.lsp.navigate` and :mod:`pipec.lsp.complete` to lsprotocol
types. What the server knows comes from the front end and the checker as they are.

Positions: pipec counts columns in characters (code points); LSP counts in the code
units the client and server agreed on (UTF-16 unless the client offers another), so
every position passes through the document's codec.
"""

from __future__ import annotations

import logging

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from pipec.dsl.diagnostics import PipecError
from pipec.dsl.source import SourceFile, Span
from pipec.lsp import navigate
from pipec.lsp.complete import complete
from pipec.lsp.document import Analysis, Document

NAME = "pipec"
_REQUEST_FAILED = -32803  # LSP's RequestFailed: the request was valid, the answer is no

_SEVERITY = {"error": lsp.DiagnosticSeverity.Error, "warning": lsp.DiagnosticSeverity.Warning}


class PipeServer(LanguageServer):
    """The server and the documents it has open."""

    def __init__(self):
        from importlib.metadata import PackageNotFoundError, version
        try:
            ours = version("pipec")
        except PackageNotFoundError:
            ours = "0"
        super().__init__(NAME, ours, text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.documents: dict[str, Document] = {}

    def document(self, uri: str) -> Document:
        """The state of the document at ``uri``, made on first use."""
        if uri not in self.documents:
            self.documents[uri] = Document(to_fs_path(uri) or uri)
        return self.documents[uri]

    def analyse(self, uri: str) -> Analysis:
        """Check the document's current text and publish its diagnostics."""
        text_document = self.workspace.get_text_document(uri)
        analysis = self.document(uri).update(text_document.source)
        lines = analysis.source.text.split("\n")
        codec = text_document.position_codec
        diagnostics = [_diagnostic(d, lines, codec) for d in analysis.report.diagnostics]
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
            uri=uri, diagnostics=diagnostics, version=text_document.version))
        return analysis

    def position(self, uri: str, analysis: Analysis, offset: int) -> lsp.Position:
        """The LSP position of character ``offset`` of the analysed text."""
        codec = self.workspace.get_text_document(uri).position_codec
        text = analysis.source.text
        line_start = text.rfind("\n", 0, offset) + 1
        return lsp.Position(line=text.count("\n", 0, offset),
                            character=codec.client_num_units(text[line_start:offset]))

    def range(self, uri: str, analysis: Analysis, span: Span) -> lsp.Range:
        """The LSP range of a pipec span of the analysed text."""
        codec = self.workspace.get_text_document(uri).position_codec
        return _range(span, analysis.source.text.split("\n"), codec)

    def offset(self, uri: str, position: lsp.Position) -> int:
        """The character offset into the document's text of an LSP position."""
        return self.workspace.get_text_document(uri).offset_at_position(position)


def _range(span: Span, lines: list[str], codec) -> lsp.Range:
    def point(line: int, column: int) -> lsp.Position:
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        return lsp.Position(line=max(line - 1, 0), character=codec.client_num_units(text[:max(column - 1, 0)]))
    return lsp.Range(start=point(span.line, span.column), end=point(span.end_line, span.end_column))


def _diagnostic(d, lines: list[str], codec) -> lsp.Diagnostic:
    span = d.span or Span(1, 1, 1, 1, 0, 0)
    message = d.message + (f"\nhint: {d.hint}" if d.hint else "")
    return lsp.Diagnostic(range=_range(span, lines, codec), message=message, severity=_SEVERITY[d.severity],
                          code=d.code, source=NAME)


server = PipeServer()


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: PipeServer, params: lsp.DidOpenTextDocumentParams) -> None:
    """Check a document as it opens."""
    ls.analyse(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: PipeServer, params: lsp.DidChangeTextDocumentParams) -> None:
    """Check a document again after each change (pygls has applied it to the text)."""
    ls.analyse(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: PipeServer, params: lsp.DidSaveTextDocumentParams) -> None:
    """Check again on save: a module the file uses may have changed meanwhile."""
    ls.analyse(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: PipeServer, params: lsp.DidCloseTextDocumentParams) -> None:
    """Forget a closed document and clear its diagnostics."""
    ls.documents.pop(params.text_document.uri, None)
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))


def _current(ls: PipeServer, uri: str) -> Analysis:
    """The analysis of the document's current text (checking it if it changed unseen)."""
    doc = ls.document(uri)
    text = ls.workspace.get_text_document(uri).source
    if doc.latest is None or doc.latest.source.text != text:
        ls.analyse(uri)
    return doc.latest


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: PipeServer, params: lsp.HoverParams) -> lsp.Hover | None:
    """What the name or keyword under the cursor is (see :func:`navigate.hover`)."""
    uri = params.text_document.uri
    analysis = _current(ls, uri)
    found = navigate.hover(analysis, ls.offset(uri, params.position))
    if found is None:
        return None
    text, start, end = found
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text),
                     range=lsp.Range(start=ls.position(uri, analysis, start), end=ls.position(uri, analysis, end)))


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def definition(ls: PipeServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    """Where the name under the cursor is defined, here or in a Python file."""
    uri = params.text_document.uri
    analysis = _current(ls, uri)
    place = navigate.definition(analysis, ls.offset(uri, params.position))
    if place is None:
        return None
    if place.span is not None:
        return lsp.Location(uri=uri, range=ls.range(uri, analysis, place.span))
    at = lsp.Position(line=place.line - 1, character=place.column)
    return lsp.Location(uri=from_fs_path(str(place.path)), range=lsp.Range(start=at, end=at))


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=["."]))
def completion(ls: PipeServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    """What may be written at the cursor (see :mod:`pipec.lsp.complete`)."""
    uri = params.text_document.uri
    doc = ls.document(uri)
    text = ls.workspace.get_text_document(uri).source
    if doc.latest is None:
        ls.analyse(uri)
    # While typing, the text rarely parses: names come from the last version that did.
    items = complete(text, ls.offset(uri, params.position), doc.parsed, doc.latest.python)
    return lsp.CompletionList(is_incomplete=False, items=[
        lsp.CompletionItem(label=i.label, kind=lsp.CompletionItemKind[i.kind], detail=i.detail or None,
                           documentation=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=i.documentation)
                           if i.documentation else None)
        for i in items])


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def formatting(ls: PipeServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
    """The document as ``pipec fmt`` prints it, as one edit; nothing if it does not parse."""
    from pipec.dsl.format import format_source
    uri = params.text_document.uri
    text_document = ls.workspace.get_text_document(uri)
    text = text_document.source
    try:
        formatted = format_source(SourceFile(ls.document(uri).path, text))
    except PipecError:
        return None  # the diagnostics already show why it does not parse
    if formatted == text:
        return []
    lines = text.split("\n")
    end = lsp.Position(line=len(lines) - 1, character=text_document.position_codec.client_num_units(lines[-1]))
    return [lsp.TextEdit(range=lsp.Range(start=lsp.Position(line=0, character=0), end=end), new_text=formatted)]


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbol(ls: PipeServer, params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
    """The outline: aliases, then the pipeline's parameters and statements."""
    uri = params.text_document.uri
    _current(ls, uri)
    analysis = ls.document(uri).best
    if analysis is None or analysis.module is None:
        return []

    def convert(symbol: navigate.Symbol) -> lsp.DocumentSymbol:
        return lsp.DocumentSymbol(name=symbol.name, detail=symbol.detail, kind=lsp.SymbolKind[symbol.kind],
                                  range=ls.range(uri, analysis, symbol.span),
                                  selection_range=ls.range(uri, analysis, symbol.selection),
                                  children=[convert(c) for c in symbol.children])
    return [convert(s) for s in navigate.outline(analysis.module, analysis.source.text)]


@server.feature(lsp.TEXT_DOCUMENT_PREPARE_RENAME)
def prepare_rename(ls: PipeServer, params: lsp.PrepareRenameParams):
    """The binding a rename at the cursor would change, or None when it is not one."""
    uri = params.text_document.uri
    analysis = _current(ls, uri)
    occurrence = navigate.rename_target(analysis, ls.offset(uri, params.position))
    if occurrence is None:
        return None
    return lsp.PrepareRenamePlaceholder(range=ls.range(uri, analysis, occurrence.span),
                                        placeholder=occurrence.text)


@server.feature(lsp.TEXT_DOCUMENT_RENAME, lsp.RenameOptions(prepare_provider=True))
def rename(ls: PipeServer, params: lsp.RenameParams) -> lsp.WorkspaceEdit:
    """Every edit renaming the binding under the cursor; a refusal says why."""
    uri = params.text_document.uri
    analysis = _current(ls, uri)
    try:
        spans = navigate.rename(analysis, ls.offset(uri, params.position), params.new_name)
    except navigate.RenameRefused as exc:
        raise JsonRpcException(str(exc), code=_REQUEST_FAILED) from None
    return lsp.WorkspaceEdit(changes={uri: [lsp.TextEdit(range=ls.range(uri, analysis, s), new_text=params.new_name)
                                            for s in spans]})


def serve() -> None:
    """Run the server on standard input and output until the client says exit."""
    # pygls logs to standard error; the editor shows it in the server's output panel.
    logging.basicConfig(level=logging.WARNING, format="pipec lsp: %(message)s")
    server.start_io()


__all__ = ["serve", "server", "PipeServer"]
