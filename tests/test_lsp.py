"""`pipec lsp` end to end: a real LSP client (pytest-lsp) talks JSON-RPC over stdio to
`python -m pipec lsp` in a subprocess, as an editor does.

The Python module the pipelines use writes a file when imported: every test ends by
checking the server never imported it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygls")
pytest_lsp = pytest.importorskip("pytest_lsp")

from lsprotocol import types as lsp  # noqa: E402
from pygls.exceptions import JsonRpcException  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities  # noqa: E402

from pipec.checking import check_source  # noqa: E402
from pipec.dsl.format import format_source  # noqa: E402
from pipec.dsl.source import SourceFile  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODULE = '''"""Tools for the test pipelines."""
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("user code ran")


def make(n, seed=0):
    """Rows to train on."""
    return list(range(n))


def grad(batch, weights):
    """The gradient of one batch."""
    return batch


def add(a, b):
    return a + b


class Server:
    """Holds the weights."""

    def __init__(self, size: int, rate: float = 0.1):
        self.w = [0.0] * size

    def weights(self):
        """The current weights."""
        return self.w

    def apply(self, total):
        """Apply one summed gradient."""
        self.w = total
'''

PIPE = '''use tools as t

pipeline train(epochs: int = 3, rows: int = 100) {
    source batches = t.make(rows, seed = 0) partitions 2
    actor ps = t.Server(size = 4)
    repeat epochs {
        stage grads = map t.grad over batches with weights = ps.weights()
        value total = reduce t.add over grads
        ps.apply(total)
    }
    sink out = ps.weights() -> json("out.json")
}
'''

PUBLISH = lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lsp")
    (folder / "tools.py").write_text(MODULE)
    return folder


@pytest_lsp.fixture(scope="module", config=ClientServerConfig(
    server_command=[sys.executable, "-m", "pipec", "lsp"],
    server_env={**os.environ, "PYTHONPATH": str(ROOT)}))
async def client(lsp_client: LanguageClient, project: Path):
    await lsp_client.initialize_session(lsp.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), root_uri=project.as_uri()))
    yield
    await lsp_client.shutdown_session()
    assert not (project / "IMPORTED").exists(), "the language server imported user code"


_count = iter(range(1_000_000))


async def open_doc(client: LanguageClient, project: Path, text: str) -> tuple[str, list[lsp.Diagnostic]]:
    """Open a new document holding ``text``; its URI and first diagnostics."""
    path = project / f"doc{next(_count)}.pipe"
    path.write_text(text)
    uri = path.as_uri()
    diagnostics = await _published(client, uri, lambda: client.text_document_did_open(lsp.DidOpenTextDocumentParams(
        text_document=lsp.TextDocumentItem(uri=uri, language_id="pipe", version=1, text=text))))
    return uri, diagnostics


async def _published(client: LanguageClient, uri: str, send) -> list[lsp.Diagnostic]:
    client.diagnostics.pop(uri, None)
    send()
    while uri not in client.diagnostics:
        await asyncio.wait_for(client.wait_for_notification(PUBLISH), 30)
    return list(client.diagnostics[uri])


async def change(client: LanguageClient, uri: str, version: int, start: tuple[int, int], end: tuple[int, int],
                 text: str) -> list[lsp.Diagnostic]:
    """Replace the range ``start``-``end`` (0-based line, character) with ``text``."""
    rng = lsp.Range(start=lsp.Position(*start), end=lsp.Position(*end))
    return await _published(client, uri, lambda: client.text_document_did_change(lsp.DidChangeTextDocumentParams(
        text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[lsp.TextDocumentContentChangePartial(range=rng, text=text)])))


def position(text: str, needle: str, nth: int = 0, delta: int = 1) -> lsp.Position:
    """The position ``delta`` characters into the ``nth`` occurrence of ``needle``."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    at += delta
    line = text.count("\n", 0, at)
    return lsp.Position(line=line, character=at - (text.rfind("\n", 0, at) + 1))


def doc(uri: str) -> lsp.TextDocumentIdentifier:
    return lsp.TextDocumentIdentifier(uri=uri)


# ---- diagnostics ----------------------------------------------------------------------------


async def test_diagnostics_on_open_are_the_checkers(client, project):
    text = PIPE.replace("over grads", "over grad")
    uri, diagnostics = await open_doc(client, project, text)
    expected = check_source(SourceFile(str(project / "x.pipe"), text)).diagnostics
    assert [(d.range.start.line + 1, d.range.start.character + 1, d.range.end.character + 1, d.code)
            for d in diagnostics] == [(e.span.line, e.span.column, e.span.end_column, e.code) for e in expected]
    [d] = diagnostics
    assert d.severity == lsp.DiagnosticSeverity.Error and d.source == "pipec"
    assert d.message == "undefined name `grad`\nhint: did you mean `grads`?"


async def test_diagnostics_follow_every_change(client, project):
    uri, diagnostics = await open_doc(client, project, PIPE)
    assert diagnostics == []
    # `ps.apply(total)` -> `ps.aply(total)`: found without importing the module
    line = PIPE.split("\n").index("        ps.apply(total)")
    diagnostics = await change(client, uri, 2, (line, 11), (line, 16), "aply")
    [d] = diagnostics
    assert d.code == "unknown-method" and d.message.startswith("actor class `Server` has no method `aply`")
    assert "did you mean `apply`?" in d.message and d.range.start.line == line
    diagnostics = await change(client, uri, 3, (line, 11), (line, 15), "apply")
    assert diagnostics == []
    diagnostics = await change(client, uri, 4, (line, 8), (line, 8), "stage = ")
    [d] = diagnostics
    assert d.code == "unexpected-token" and d.range.start.line == line


async def test_an_unused_stage_is_a_warning(client, project):
    text = PIPE.replace("    sink out", "    stage spare = map t.make over batches\n    sink out")
    _, diagnostics = await open_doc(client, project, text)
    [d] = diagnostics
    assert (d.severity, d.code) == (lsp.DiagnosticSeverity.Warning, "unused")
    assert "`spare` is computed but never used" in d.message


async def test_columns_are_utf16_code_units(client, project):
    """An emoji is one character to pipec and two UTF-16 units to the editor."""
    text = 'pipeline p() {\n    value label = "\U0001F600"\n    sink s = lable\n}\n'
    text = text.replace("sink s = lable", 'sink s = ["\U0001F600", lable]')
    _, [d] = await open_doc(client, project, text)
    line = text.split("\n")[2]
    assert d.range.start.line == 2
    assert d.range.start.character == len(line[:line.index("lable")].encode("utf-16-le")) // 2


# ---- hover ----------------------------------------------------------------------------------


async def test_hover_says_what_a_name_is(client, project):
    uri, _ = await open_doc(client, project, PIPE)
    hover = await client.text_document_hover_async(lsp.HoverParams(doc(uri), position(PIPE, "over grads", delta=6)))
    assert hover.contents.value.startswith("stage `grads`: a collection")
    assert "stage grads = map t.grad over batches" in hover.contents.value
    hover = await client.text_document_hover_async(lsp.HoverParams(doc(uri), position(PIPE, "apply(total)", delta=7)))
    assert hover.contents.value.startswith("value `total`: a value")
    hover = await client.text_document_hover_async(lsp.HoverParams(doc(uri), position(PIPE, "repeat epochs", delta=8)))
    assert hover.contents.value.startswith("parameter `epochs: int = 3`: a value")
    hover = await client.text_document_hover_async(lsp.HoverParams(doc(uri), position(PIPE, "ps.apply", delta=0)))
    assert hover.contents.value.startswith("actor `ps`: an actor")
    assert "class Server(size: int, rate: float=0.1)" in hover.contents.value and "Holds the weights." in hover.contents.value


async def test_hover_shows_a_python_function_read_as_source(client, project):
    uri, _ = await open_doc(client, project, PIPE)
    hover = await client.text_document_hover_async(lsp.HoverParams(doc(uri), position(PIPE, "t.grad", delta=3)))
    assert hover.contents.kind == lsp.MarkupKind.Markdown
    assert hover.contents.value.startswith("```python\ndef grad(batch, weights)\n```\n\nThe gradient of one batch.")
    start = position(PIPE, "t.grad", delta=2)
    assert (hover.range.start, hover.range.end) == (start, lsp.Position(start.line, start.character + 4))
    hover = await client.text_document_hover_async(lsp.HoverParams(doc(uri), position(PIPE, "ps.weights", delta=4)))
    assert hover.contents.value.startswith("method `weights` of actor `ps`")
    assert "def weights(self)" in hover.contents.value and "The current weights." in hover.contents.value
    hover = await client.text_document_hover_async(lsp.HoverParams(doc(uri), position(PIPE, "as t", delta=3)))
    assert hover.contents.value.startswith("module alias `t` for `tools`\n\nTools for the test pipelines.")
    hover = await client.text_document_hover_async(lsp.HoverParams(doc(uri), position(PIPE, "reduce", delta=2)))
    assert hover.contents.value.startswith("`reduce`: ")


# ---- go to definition -----------------------------------------------------------------------


async def test_definition_of_a_binding_is_its_statement(client, project):
    uri, _ = await open_doc(client, project, PIPE)
    found = await client.text_document_definition_async(lsp.DefinitionParams(doc(uri), position(PIPE, "over grads", delta=6)))
    assert found.uri == uri and found.range.start == position(PIPE, "stage grads", delta=6)
    found = await client.text_document_definition_async(lsp.DefinitionParams(doc(uri), position(PIPE, "ps.apply", delta=0)))
    assert found.range.start == position(PIPE, "actor ps", delta=6)


async def test_definition_of_a_dotted_name_is_in_the_python_file(client, project):
    uri, _ = await open_doc(client, project, PIPE)
    source_lines = MODULE.split("\n")
    cases = [("t.grad", 3, "def grad("), ("t.Server", 3, "class Server:"), ("ps.weights", 4, "    def weights(self):"),
             ("use tools", 5, None)]
    for needle, delta, line in cases:
        found = await client.text_document_definition_async(
            lsp.DefinitionParams(doc(uri), position(PIPE, needle, delta=delta)))
        assert found.uri == (project / "tools.py").as_uri(), needle
        expected = next(i for i, text in enumerate(source_lines) if text.startswith(line)) if line else 0
        assert found.range.start.line == expected, needle


# ---- completion -----------------------------------------------------------------------------


async def complete(client, project, text: str, marker: str = "|") -> list[str]:
    at = text.index(marker)
    text = text.replace(marker, "", 1)
    uri, _ = await open_doc(client, project, text)
    pos = lsp.Position(line=text.count("\n", 0, at), character=at - (text.rfind("\n", 0, at) + 1))
    result = await client.text_document_completion_async(lsp.CompletionParams(doc(uri), pos))
    return [item.label for item in result.items]


async def test_completion_of_a_used_modules_functions(client, project):
    labels = await complete(client, project, PIPE.replace("map t.grad over", "map t.|"))
    assert labels == ["make", "grad", "add", "Server"]


async def test_completion_of_an_actors_methods(client, project):
    labels = await complete(client, project, PIPE.replace("        ps.apply(total)", "        ps.|"))
    assert labels == ["weights", "apply"]


async def test_completion_of_keywords_and_names_in_context(client, project):
    statement = await complete(client, project, PIPE.replace("    sink out", "    |\n    sink out"))
    assert {"source", "stage", "value", "var", "actor", "repeat", "sink", "defaults", "ps"} <= set(statement)
    assert "grads" not in statement  # names are not statements
    over = await complete(client, project, PIPE.replace("over batches with", "over | with"))
    assert "batches" in over and "join" in over and "epochs" not in over and "ps" not in over
    assert "grads" not in over  # not yet defined there
    after_map = await complete(client, project, PIPE.replace("map t.grad", "map |"))
    assert {"t", "t.grad", "t.make", "t.add"} <= set(after_map)
    formats = await complete(client, project, PIPE.replace('-> json("out.json")', "-> |"))
    assert formats == ["json", "jsonl", "text", "parquet", "csv"]
    top = await complete(client, project, "|" + PIPE)
    assert top == ["use", "pipeline"]
    options = await complete(client, project, PIPE.replace("actor ps = t.Server(size = 4)",
                                                           "actor ps = t.Server(size = 4) {\n        |\n    }"))
    assert options == ["restarts", "checkpoint", "every", "calls", "idempotent"]


# ---- formatting, outline, rename ------------------------------------------------------------


async def test_formatting_is_fmt(client, project):
    messy = PIPE.replace("    source batches = t.make(rows, seed = 0) partitions 2",
                         "  source batches=t.make(rows,seed=0)   partitions 2")
    uri, _ = await open_doc(client, project, messy)
    edits = await client.text_document_formatting_async(lsp.DocumentFormattingParams(
        doc(uri), lsp.FormattingOptions(tab_size=4, insert_spaces=True)))
    [edit] = edits
    assert edit.new_text == format_source(SourceFile("x.pipe", messy)) == PIPE
    assert edit.range.start == lsp.Position(0, 0)
    tidy_uri, _ = await open_doc(client, project, PIPE)
    assert list(await client.text_document_formatting_async(lsp.DocumentFormattingParams(
        doc(tidy_uri), lsp.FormattingOptions(tab_size=4, insert_spaces=True)))) == []


async def test_document_symbols_are_the_pipeline_outline(client, project):
    uri, _ = await open_doc(client, project, PIPE)
    symbols = await client.text_document_document_symbol_async(lsp.DocumentSymbolParams(doc(uri)))
    assert [(s.name, s.kind) for s in symbols] == [("t", lsp.SymbolKind.Module), ("train", lsp.SymbolKind.Module)]
    train = symbols[1]
    assert [(s.name, s.detail) for s in train.children] == [
        ("epochs", "int"), ("rows", "int"), ("batches", "source"), ("ps", "actor t.Server"),
        ("repeat epochs", "loop"), ("out", "sink")]
    loop = train.children[4]
    assert [s.name for s in loop.children] == ["grads", "total", "ps.apply(...)"]
    assert train.children[2].selection_range.start == position(PIPE, "source batches", delta=7)


async def test_rename_a_binding_everywhere_it_is_used(client, project):
    uri, _ = await open_doc(client, project, PIPE)
    at = position(PIPE, "over grads", delta=6)
    prepared = await client.text_document_prepare_rename_async(lsp.PrepareRenameParams(doc(uri), at))
    assert prepared.placeholder == "grads"
    edit = await client.text_document_rename_async(lsp.RenameParams(doc(uri), at, new_name="gradients"))
    edits = edit.changes[uri]
    assert sorted((e.range.start.line, e.range.start.character) for e in edits) == sorted(
        [(position(PIPE, "stage grads", delta=6).line, position(PIPE, "stage grads", delta=6).character),
         (at.line, at.character - 1)])
    renamed = _apply(PIPE, edits)
    assert "stage gradients = map" in renamed and "over gradients" in renamed
    assert check_source(SourceFile(str(project / "r.pipe"), renamed)).diagnostics == []
    # a keyword, a name already bound, or something that is not a binding: refused
    for name in ("map", "ps"):
        with pytest.raises(JsonRpcException):
            await client.text_document_rename_async(lsp.RenameParams(doc(uri), at, new_name=name))
    assert await client.text_document_prepare_rename_async(
        lsp.PrepareRenameParams(doc(uri), position(PIPE, "t.grad", delta=3))) is None


def _apply(text: str, edits: list[lsp.TextEdit]) -> str:
    lines = text.split("\n")
    for e in sorted(edits, key=lambda e: (e.range.start.line, e.range.start.character), reverse=True):
        line = lines[e.range.start.line]
        lines[e.range.start.line] = line[:e.range.start.character] + e.new_text + line[e.range.end.character:]
    return "\n".join(lines)


async def test_a_file_that_does_not_parse_keeps_its_outline_and_hover(client, project):
    """While the user types, the last version that parsed still answers."""
    uri, _ = await open_doc(client, project, PIPE)
    line = PIPE.split("\n").index("        ps.apply(total)")
    [d] = await change(client, uri, 2, (line, 0), (line, 0), "        stage broken = map t.\n")
    assert d.code == "unexpected-token"
    symbols = await client.text_document_document_symbol_async(lsp.DocumentSymbolParams(doc(uri)))
    assert [s.name for s in symbols] == ["t", "train"]
    result = await client.text_document_completion_async(lsp.CompletionParams(
        doc(uri), lsp.Position(line=line, character=len("        stage broken = map t."))))
    assert [i.label for i in result.items] == ["make", "grad", "add", "Server"]


async def test_an_unsaved_document_is_checked_too(client, project):
    """An editor's new buffer has no file: its URI is `untitled:...`."""
    uri = "untitled:Untitled-1"
    text = "pipeline p() {\n    sink s = nope\n}\n"
    diagnostics = await _published(client, uri, lambda: client.text_document_did_open(lsp.DidOpenTextDocumentParams(
        text_document=lsp.TextDocumentItem(uri=uri, language_id="pipe", version=1, text=text))))
    [d] = diagnostics
    assert d.message == "undefined name `nope`" and d.range.start == lsp.Position(1, 13)
