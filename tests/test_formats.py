"""Data formats: Parquet, CSV, text and JSON-lines sources on files, folders and globs;
batches as pandas, arrow and numpy; Parquet and CSV dataset sinks committed atomically.

What every backend must write byte for byte is in tests/test_conformance.py; here are
the cut of a source into partitions, the commit of a dataset sink (old dataset kept on
failure, no stale or duplicate parts, leftovers of killed runs removed), the errors a
user sees for bad input, the static checks, and real S3 (moto's server on loopback).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipec import load
from pipec.backends.runtime import datasets
from pipec.backends.runtime.preflight import PreflightError
from pipec.dsl.diagnostics import CompileError, PipelineRuntimeError
from pipec.dsl.format import format_source
from pipec.dsl.source import SourceFile
from tests.conftest import ROOT
from tests.engines import BACKENDS, engine_options

MODULE = '''
def sizes(batch, partition):
    import pyarrow as pa
    return pa.table({"partition": [partition], "rows": [batch.num_rows], "columns": [",".join(batch.column_names)],
                     "first": [batch["id"][0].as_py() if batch.num_rows else -1]})

def same_columns(cols):
    return dict(cols)

def keys(row):
    return sorted(row)

def narrow(table):
    import pyarrow as pa
    return table.set_column(0, "id", table["id"].cast(pa.int32()))

def id_type(table):
    import pyarrow as pa
    return pa.table({"type": [str(table.schema.field("id").type)]})

def boom(x):
    raise ValueError("boom after the sink was staged")

def add(a, b):
    return a + b
'''


def _pipe(tmp_path: Path, body: str, params: str = "") -> Path:
    (tmp_path / "fm.py").write_text(MODULE)
    path = tmp_path / "p.pipe"
    path.write_text(f"use fm as m\n\npipeline p({params}) {{\n{body}\n}}\n")
    return path


def _dataset(folder: Path, files: dict[str, tuple[int, int]]) -> None:
    """Parquet files ``name -> (first id, rows)`` with row groups of 2 rows."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (start, n) in files.items():
        ids = list(range(start, start + n))
        pq.write_table(pa.table({"id": ids, "x": [i * 0.5 for i in ids], "tag": [f"t{i}" for i in ids]}),
                       folder / name, row_group_size=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_partitions_follow_files_and_row_groups(backend, tmp_path, monkeypatch):
    """One partition per piece (a file, or a row group of a large file), `partitions k`
    groups the pieces contiguously, and only the columns asked for are read. The driver
    lists the pieces (so a smaller PIECE_BYTES here splits files on every engine); the
    tasks read them."""
    monkeypatch.chdir(tmp_path)
    _dataset(tmp_path / "data", {"a.parquet": (0, 3), "b.parquet": (3, 5)})
    monkeypatch.setattr(datasets, "PIECE_BYTES", 0)  # every file is large: a piece per row group
    pieces, single, _ = datasets.list_pieces("parquet", "data")
    assert not single
    assert [(Path(f).name, g) for f, g in pieces] == [("a.parquet", 0), ("a.parquet", 1), ("b.parquet", 0),
                                                      ("b.parquet", 1), ("b.parquet", 2)]
    path = _pipe(tmp_path, """
    source rows = read_parquet("data", columns = ["id", "tag"])
    source grouped = read_parquet("data", columns = ["id"]) partitions 2
    sink per_piece = collect(map_batches m.sizes over rows as arrow)
    sink per_group = collect(map_batches m.sizes over grouped as arrow)
    sink row_keys = collect(map m.keys over rows)""")
    out = load(path).run(backend=backend, **engine_options(backend)).outputs
    assert [(r["partition"], r["rows"], r["first"]) for r in out["per_piece"]] == \
        [(0, 2, 0), (1, 1, 2), (2, 2, 3), (3, 2, 5), (4, 1, 7)]
    assert {r["columns"] for r in out["per_piece"]} == {"id,tag"}
    # five pieces in two groups: [0, 2) and [2, 5)
    assert [(r["partition"], r["rows"], r["first"]) for r in out["per_group"]] == [(0, 3, 0), (1, 5, 3)]
    assert out["row_keys"] == [["id", "tag"]] * 8


@pytest.mark.parametrize("backend", ["local", "dask"])
def test_batch_stages_hand_tables_on_without_rows(backend, tmp_path, monkeypatch):
    """A partition read only by batch stages stays a table: an int32 column arrives as
    int32. Read by a plain `map` too, it becomes rows (dicts) and comes back int64."""
    monkeypatch.chdir(tmp_path)
    _dataset(tmp_path / "data", {"a.parquet": (0, 3)})
    path = _pipe(tmp_path, """
    source rows = read_parquet("data")
    stage only_batches = map_batches m.narrow over rows as arrow
    stage shared = map_batches m.narrow over rows as arrow
    sink kept = collect(map_batches m.id_type over only_batches as arrow)
    sink via_rows = collect(map_batches m.id_type over shared as arrow)
    sink keys = collect(map m.keys over shared)""")
    out = load(path).run(backend=backend, **engine_options(backend)).outputs
    assert out["kept"] == [{"type": "int32"}]
    assert out["via_rows"] == [{"type": "int64"}]


def _parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_dataset_sink_is_committed_whole_or_not_at_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _dataset(tmp_path / "data", {"a.parquet": (0, 3), "b.parquet": (3, 2), "c.parquet": (5, 4)})
    body = """
    source rows = read_parquet("data") partitions k
    stage stats = map_batches m.same_columns over (map_batches m.sizes over rows as arrow) as numpy
    sink out = stats -> parquet("out/stats")
    sink table = rows -> csv("out/rows")"""
    path = _pipe(tmp_path, body, "k: int = 3")
    load(path).run(backend="local")
    assert _parts(tmp_path / "out/stats") == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet",
                                              "part-00002.parquet"]
    assert pq.read_table("out/stats").column("rows").to_pylist() == [3, 2, 4]
    assert (tmp_path / "out/rows/part-00001.csv").read_text() == '"id","x","tag"\n3,1.5,"t3"\n4,2,"t4"\n'

    # A later write with fewer partitions leaves no stale part behind.
    load(path).run(backend="local", params={"k": 1})
    assert _parts(tmp_path / "out/stats") == ["_SUCCESS", "part-00000.parquet"]
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}

    # A killed run's staging folder for the same target...
    leftover = tmp_path / "out" / ".stats.pipec-staged-deadbeef.dataset"
    leftover.mkdir()
    (leftover / "part-00000.parquet").write_bytes(b"half")
    # ...and a run that fails after staging: the datasets stay as they were, nothing staged is left.
    failing = _pipe(tmp_path, body + "\n    value bad = reduce m.add over (map m.boom over rows)\n    sink b = bad",
                    "k: int = 3")
    with pytest.raises(PipelineRuntimeError, match="boom after the sink was staged"):
        load(failing).run(backend="local")
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    assert not list((tmp_path / "out").glob(".*")), "no staging folder left"


def test_a_part_written_again_replaces_itself(tmp_path):
    """A retried (or speculative) task writes the same part name: never a duplicate."""
    staging = str(tmp_path / "stage")
    datasets.prepare_staging(str(tmp_path / "target"), staging)
    rows = [{"id": 1, "x": 0.5}]
    assert datasets.write_part(rows, "parquet", staging, 7) == "part-00007.parquet"
    assert datasets.write_part(rows, "parquet", staging, 7) == "part-00007.parquet"
    assert datasets.write_part([], "parquet", staging, 8) is None  # an empty partition writes no file
    assert _parts(tmp_path / "stage") == ["part-00007.parquet"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_source_path_is_located(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _pipe(tmp_path, """
    source rows = read_parquet("no/such/folder")
    sink out = rows -> parquet("out/x")""")
    # refused by the pre-flight, before any engine work, at the source's line
    with pytest.raises(PreflightError) as err:
        load(path).run(backend=backend, **engine_options(backend))
    assert "`read_parquet`: no such file: no/such/folder" in str(err.value)
    assert (err.value.span.line, err.value.span.column) == (5, 5)
    assert not (tmp_path / "out").exists()


def test_bad_files_name_the_file_and_the_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/x.parquet").write_bytes(b"PAR1 but not really")
    (tmp_path / "mixed").mkdir()
    pq.write_table(pa.table({"id": [1], "x": [1.0]}), tmp_path / "mixed/a.parquet")
    pq.write_table(pa.table({"id": [2], "x": ["two"]}), tmp_path / "mixed/b.parquet")
    path = _pipe(tmp_path, """
    source rows = read_parquet(src)
    sink out = collect(rows)""", 'src: str = "bad"')
    with pytest.raises(PipelineRuntimeError) as err:
        load(path).run(backend="local")
    assert "bad/x.parquet is not a readable Parquet file" in str(err.value) and err.value.span.line == 5
    with pytest.raises(PipelineRuntimeError) as err:
        load(path).run(backend="local", params={"src": "mixed"})
    assert "the files differ in column `x`: double in" in str(err.value) and "mixed/b.parquet" in str(err.value)


def test_csv_types_are_the_first_files_whatever_the_partitions(tmp_path, monkeypatch):
    """A dataset's CSV files are all read with the types inferred from the first one, so
    a column's type does not depend on how `partitions k` groups the files; a value that
    does not fit names its file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t/a.csv").write_text("id,x\n1,1.5\n2,2.5\n")
    (tmp_path / "t/b.csv").write_text("id,x\n3,3\n4,4\n")  # ints alone, doubles as the first file says
    path = _pipe(tmp_path, """
    source rows = read_csv("t") partitions k
    sink out = collect(rows)""", "k: int = 1")
    expected = [{"id": 1, "x": 1.5}, {"id": 2, "x": 2.5}, {"id": 3, "x": 3.0}, {"id": 4, "x": 4.0}]
    for k in (1, 2):
        out = load(path).run(backend="local", params={"k": k}).outputs["out"]
        assert out == expected and [type(r["x"]) for r in out] == [float] * 4, (k, out)
    (tmp_path / "t/c.csv").write_text("id,x\nfive,5\n")
    with pytest.raises(PipelineRuntimeError) as err:
        load(path).run(backend="local", params={"k": 2})
    assert "t/c.csv does not fit the types of the dataset's first file" in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_csv_types_are_inferred_once_by_the_driver(backend, tmp_path, monkeypatch):
    """The driver infers a CSV dataset's types once, from the first file, when it lists
    the source, and each task reads only its own file with them: a later file whose own
    inference differs (ints where the first has doubles) reads as the first file says on
    every backend, and a driver that infers strings makes every task read strings (tasks
    inferring for themselves, in their own processes, would give numbers)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t/a.csv").write_text("id,x\n1,1.5\n2,2.5\n")
    (tmp_path / "t/b.csv").write_text("id,x\n3,3\n4,4\n")
    path = _pipe(tmp_path, """
    source rows = read_csv("t")
    sink out = collect(rows)""")
    out = load(path).run(backend=backend, **engine_options(backend)).outputs["out"]
    assert out == [{"id": 1, "x": 1.5}, {"id": 2, "x": 2.5}, {"id": 3, "x": 3.0}, {"id": 4, "x": 4.0}]
    assert [type(r["x"]) for r in out] == [float] * 4
    infer, inferred = datasets._csv_types, []

    def as_strings(pa, url, options):
        inferred.append(url)
        return {**infer(pa, url, options), "x": pa.string()}
    monkeypatch.setattr(datasets, "_csv_types", as_strings)  # in this process only: the driver
    out = load(path).run(backend=backend, **engine_options(backend)).outputs["out"]
    assert [r["x"] for r in out] == ["1.5", "2.5", "3", "4"] and [Path(u).name for u in inferred] == ["a.csv"]


def test_missing_pyarrow_is_a_usage_error_naming_the_extra(tmp_path):
    path = _pipe(tmp_path, """
    source rows = read_parquet("data")
    sink out = collect(rows)""")
    # pyarrow made unimportable in a fresh interpreter, as if it were not installed.
    code = "import sys; sys.modules['pyarrow'] = None; from pipec.cli import entry; entry()"
    proc = subprocess.run([sys.executable, "-c", code, "run", str(path), "--backend", "local"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert "pipec[parquet]" in proc.stderr and "Traceback" not in proc.stderr


STATIC = [
    ('    source xs = read_parquet("d")\n    sink s = collect(map_batches m.keys over xs as pandsa)\n',
     "unknown batch form `pandsa`", "did you mean `pandas`?"),
    ('    source xs = read_parquet("d")\n    sink s = collect(map m.keys over xs as arrow)\n',
     "`as arrow` belongs to `map_batches`", None),
    ('    source xs = read_parquet("d", colums = ["id"])\n    sink s = collect(xs)\n',
     "`read_parquet` has no option `colums`", "did you mean `columns`?"),
    ('    source xs = read_csv("d", delimiter = ";;")\n    sink s = collect(xs)\n',
     "`delimiter` of `read_csv` is one character", None),
    ('    source xs = range(4)\n    sink s = collect(xs)\n', "`range(n)` needs `partitions k`", None),
    ('    source xs = read_parquet("d")\n    sink s = count(xs) -> parquet("out/n")\n',
     "a parquet sink writes a collection", None),
]


@pytest.mark.parametrize("text,message,hint", STATIC, ids=[m for _, m, _ in STATIC])
def test_static_errors(tmp_path, text, message, hint):
    (tmp_path / "fm.py").write_text(MODULE)
    path = tmp_path / "p.pipe"
    path.write_text(f"use fm as m\n\npipeline p() {{\n{text}}}\n")
    with pytest.raises(CompileError) as err:
        load(path).check()
    found = [d for d in err.value.diagnostics if message in d.message]
    assert found, [d.message for d in err.value.diagnostics]
    if hint:
        assert found[0].hint == hint


def test_new_syntax_formats_to_itself():
    text = ('use fm as m\n\npipeline p(src: str = "s3://lake/features") {\n'
            '    source rows = read_parquet(src, columns = ["id", "x"])\n'
            '    source lines = read_text("logs/*.txt") partitions 2\n'
            '    stage scores = map_batches m.keys over rows as pandas with k = 1\n'
            '    sink out = scores -> parquet("out/scores")\n}\n')
    assert format_source(SourceFile("p.pipe", text)) == text


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API (moto's server) on loopback, with a bucket, for fsspec's s3fs."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request log
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import fsspec
    fs = fsspec.filesystem("s3", skip_instance_cache=True, client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("lake")
    fsspec.filesystem("s3").invalidate_cache()
    yield fs
    server.stop()


def test_parquet_on_s3(s3, tmp_path, monkeypatch):
    """Sources and dataset sinks on s3:// URLs: listed, read and committed through fsspec."""
    monkeypatch.chdir(tmp_path)
    for name, start in (("a.parquet", 0), ("b.parquet", 3)):
        ids = list(range(start, start + 3))
        s3.pipe(f"lake/features/{name}", _parquet_bytes({"id": ids, "x": [i * 0.5 for i in ids]}))
    path = _pipe(tmp_path, """
    source rows = read_parquet("s3://lake/features", columns = ["id"])
    sink out = rows -> parquet("s3://lake/scores")
    sink n = count(rows)""")
    result = load(path).run(backend="local")
    assert result.outputs["n"] == 6
    assert sorted(p.rsplit("/", 1)[1] for p in s3.ls("lake/scores", refresh=True)) == \
        ["_SUCCESS", "part-00000.parquet", "part-00001.parquet"]
    assert not [p for p in s3.ls("lake", refresh=True) if "pipec-staged" in p]
    with s3.open("lake/scores/part-00001.parquet", "rb") as fh:
        assert pq.read_table(fh).to_pylist() == [{"id": 3}, {"id": 4}, {"id": 5}]


def _parquet_bytes(columns: dict) -> bytes:
    import io
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out)
    return out.getvalue()
