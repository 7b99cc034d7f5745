"""Datasets on any fsspec URL: listing a file source's pieces, reading a partition's
share of them, and writing a dataset sink's part files.

**Pieces.** A file source names a file, a folder (every file under it, at any depth) or
a glob, but never a file whose name (or folder's, under the folder) starts with ``.`` or
``_`` (``_SUCCESS``, staging folders, temporary parts). Its
files are taken in sorted order, and each is one *piece*, except a Parquet file larger
than :data:`PIECE_BYTES` with several row groups, whose row groups are one piece each.
Without ``partitions`` a source has one partition per piece; ``partitions k`` groups the
pieces contiguously, partition i holding pieces ``[i*p//k, (i+1)*p//k)``. The driver
lists pieces from metadata only (file listings, Parquet footers, never rows; for CSV the
first block of the first file, whose inferred column types every task reads with); each
task reads only its own pieces and, with ``columns``, only those columns.

**Part files.** A dataset sink's task writes its partition as ``part-00000.parquet``
(the partition's index, five digits) into the sink's staging folder beside the target
(``.NAME.pipec-staged-RUN.dataset``), under a temporary name first, then renamed: a
retried task replaces its own part, never adds one. An empty partition writes no file.
:func:`commit` moves the parts into the target folder when the run has succeeded, removes
the target's parts from before, and writes ``_SUCCESS`` last.

All file access goes through :func:`filesystem` (``fsspec.core.url_to_fs``), so a plain
path and an ``s3://`` or ``gs://`` URL behave alike. pyarrow and fsspec are the
``pipec[parquet]`` extra; a missing one is :class:`MissingExtra`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import uuid
from typing import Any, NamedTuple, Sequence

from pipec.backends.runtime import storage

# A Parquet file larger than this with several row groups is read a row group per piece.
PIECE_BYTES = 64 << 20
# The staging folder of a dataset sink, beside its target (see StagedSinks).
STAGED_MARK = ".pipec-staged-"
STAGED_SUFFIX = ".dataset"
SUCCESS = "_SUCCESS"
EXTENSIONS = {"parquet": ".parquet", "csv": ".csv"}
GLOB_CHARS = "*?["


class MissingExtra(ImportError):
    """An optional dependency is not installed: ``package``, in extra ``extra``."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"`{package}` is not installed; it comes with `pip install 'pipec[{extra}]'`")
        self.package, self.extra = package, extra


def require(package: str, extra: str):
    """Import ``package`` or raise MissingExtra naming ``extra``."""
    import importlib
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtra(package, extra) from None


def pyarrow():
    """The pyarrow module (its csv and parquet parts imported too)."""
    pa = require("pyarrow", "parquet")
    for part in ("pyarrow.csv", "pyarrow.parquet"):  # so that pa.csv and pa.parquet exist
        require(part, "parquet")
    return pa


def filesystem(url: str):
    """``(fs, path)`` for ``url`` (a plain path or any fsspec URL), with the storage
    options of this process and its run (see :func:`storage.filesystem`)."""
    require("fsspec", "parquet")
    return storage.filesystem(url)


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _url(fs, path: str) -> str:
    """A path as the workers get it: plain for local files, a full URL otherwise."""
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _visible(path: str, root: str) -> bool:
    rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    return not any(part.startswith((".", "_")) for part in rel.split("/"))


def list_files(url: str) -> tuple[list[str], bool]:
    """The files ``url`` names, sorted, and whether it named one file itself. Raises
    FileNotFoundError when there is nothing there (an empty folder or glob included)."""
    fs, root = filesystem(url)
    if any(c in root for c in GLOB_CHARS):
        files = sorted(p for p in fs.glob(root)
                       if not posixpath.basename(p).startswith((".", "_")) and fs.isfile(p))
        single = False
    elif fs.isdir(root):
        files = sorted(p for p in fs.find(root) if _visible(p, root))
        single = False
    elif fs.isfile(root):
        files, single = [root], True
    else:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", url)
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no files there (names starting with . or _ are skipped)", url)
    return [_url(fs, p) for p in files], single


class Listing(NamedTuple):
    """What the driver learns of a file source before any task reads it."""

    pieces: tuple  # (file, row group or None), in order
    single: bool  # whether the path named one file
    # A CSV dataset's column types, ((name, pyarrow type), ...), inferred once from the first
    # file; every task reads its pieces with them. None for the other formats.
    types: tuple | None = None


def list_pieces(fmt: str, url: str, columns: Sequence[str] | None = None,
                options: dict | None = None) -> Listing:
    """The pieces of a ``fmt`` source on ``url`` (see the module docstring): a tuple of
    ``(file, row group or None)`` in order, and whether ``url`` named one file. Parquet
    footers are read to split large files and to check that every file has the columns
    asked for (or the first file's columns) with the same types; a file that is not
    Parquet, or a column that differs, is a ValueError naming the file and the column.
    For CSV the first block of the first file is read for the dataset's column types
    (``options``: the source's ``header`` and ``delimiter``)."""
    files, single = list_files(url)
    if fmt == "csv":
        types = _csv_types(pyarrow(), files[0], options or {})
        return Listing(tuple((f, None) for f in files), single, tuple(types.items()))
    if fmt != "parquet":
        return Listing(tuple((f, None) for f in files), single)
    pieces, first = [], None
    for f in files:
        meta = _parquet_file(f).metadata
        schema = meta.schema.to_arrow_schema()
        if first is None:
            first = (f, schema)
            missing = [c for c in columns or () if c not in schema.names]
            if missing:
                raise ValueError(f"{f} has no column `{missing[0]}` (its columns: {', '.join(schema.names)})")
        else:
            _same_columns(first, (f, schema), columns)
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if meta.num_row_groups > 1 and size > PIECE_BYTES:
            pieces.extend((f, i) for i in range(meta.num_row_groups))
        else:
            pieces.append((f, None))
    return Listing(tuple(pieces), single)


def _same_columns(first: tuple, other: tuple, columns: Sequence[str] | None) -> None:
    (a, sa), (b, sb) = first, other
    for name in columns or sa.names:
        if name not in sb.names:
            raise ValueError(f"the files differ: {b} has no column `{name}`, which {a} has")
        ta, tb = sa.field(name).type, sb.field(name).type
        if ta != tb:
            raise ValueError(f"the files differ in column `{name}`: {ta} in {a}, {tb} in {b}")
    if not columns:
        extra = [n for n in sb.names if n not in sa.names]
        if extra:
            raise ValueError(f"the files differ: {b} has a column `{extra[0]}` that {a} lacks")


def _parquet_file(url: str):
    pq = pyarrow().parquet
    fs, path = filesystem(url)
    try:
        return pq.ParquetFile(path if _is_local(fs) else fs.open(path, "rb"))
    except OSError:
        raise
    except Exception as exc:  # ArrowInvalid: not Parquet, a truncated footer, ...
        raise ValueError(f"{url} is not a readable Parquet file ({exc})") from None


# ---- reading a partition --------------------------------------------------------------------


def group_of(pieces: Sequence, k: int, partition: int) -> Sequence:
    """The pieces of partition ``partition`` of ``k``: a contiguous run of them."""
    p = len(pieces)
    return pieces[partition * p // k:(partition + 1) * p // k]


def read_pieces(fmt: str, pieces: Sequence, options: dict, all_pieces: Sequence = (),
                types: Sequence | None = None) -> Any:
    """One partition's pieces read and joined in order: a ``pyarrow.Table`` for Parquet
    and CSV, a list of lines (text) or JSON values (jsonl). ``options`` are the source's
    (``columns``, ``header``, ``delimiter``); ``all_pieces`` gives an empty Parquet
    partition its schema; ``types`` are a CSV dataset's column types from its
    :class:`Listing` (inferred here from the first piece when not given)."""
    if fmt in ("text", "jsonl"):
        from pipec.backends.runtime import sources
        read = sources.read_lines if fmt == "text" else sources.read_jsonl
        return [x for url, _ in pieces for x in read(url)]
    pa = pyarrow()
    columns = list(options["columns"]) if options.get("columns") else None
    if fmt == "parquet":
        tables = []
        for url, group in pieces or all_pieces[:1]:
            f = _parquet_file(url)
            try:
                table = f.read(columns=columns) if group is None else f.read_row_group(group, columns=columns)
            except (pa.ArrowException, OSError) as exc:
                raise ValueError(f"{url} is not a readable Parquet file ({exc})") from None
            tables.append(table if pieces else table.schema.empty_table())
        return _concat(pa, tables, pieces)
    if fmt == "csv":
        # The types are the first file's, for every file (as pyarrow's datasets and Dask
        # infer them): a column's type then does not depend on how files are grouped
        # into partitions, nor on which partition a row lands in. The driver infers
        # them once when it lists the source, so a task opens only its own files.
        if not pieces:
            return pa.table({})
        known = dict(types) if types is not None else _csv_types(pa, (all_pieces or pieces)[0][0], options)
        tables = [_read_csv(pa, url, options, columns, known) for url, _ in pieces]
        return _concat(pa, tables, pieces) if tables else pa.table({})
    raise ValueError(f"unknown file format {fmt!r}")


def _concat(pa, tables: list, pieces: Sequence):
    """The tables of a partition's pieces, one after the other; files that differ in
    their columns are a ValueError naming the column."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        first = tables[0].schema
        for (url, _), table in zip(pieces[1:], tables[1:]):
            for name in first.names:
                if name not in table.schema.names:
                    raise ValueError(f"the files differ: {url} has no column `{name}`, which {pieces[0][0]} has") \
                        from None
                if table.schema.field(name).type != first.field(name).type:
                    raise ValueError(f"the files differ in column `{name}`: {first.field(name).type} in "
                                     f"{pieces[0][0]}, {table.schema.field(name).type} in {url}") from None
        raise ValueError(f"the files {pieces[0][0]} .. {pieces[-1][0]} differ in their columns") from None


def _csv_options(pa, options: dict):
    csv = pa.csv
    read = csv.ReadOptions(autogenerate_column_names=not options.get("header", True))
    return read, csv.ParseOptions(delimiter=options.get("delimiter", ","))


def _csv_types(pa, url: str, options: dict) -> dict:
    """The column types pyarrow infers from the first block of CSV file ``url``."""
    read, parse = _csv_options(pa, options)
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            schema = pa.csv.open_csv(fh, read_options=read, parse_options=parse).schema
    except pa.ArrowException as exc:
        raise ValueError(f"{url}: not CSV as asked for ({exc})") from None
    # A header-only first file says nothing of the types: those columns are inferred per file.
    return {field.name: field.type for field in schema if not pa.types.is_null(field.type)}


def _read_csv(pa, url: str, options: dict, columns: list | None, types: dict | None = None):
    """CSV file ``url`` as a table; with ``types`` (the first file's), its columns
    converted to them."""
    csv = pa.csv
    read, parse = _csv_options(pa, options)
    convert = csv.ConvertOptions(include_columns=columns or [], column_types=types or {})
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            return csv.read_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        if types and "conversion error" in str(exc).lower():
            raise ValueError(f"{url} does not fit the types of the dataset's first file: {exc} (every file of a "
                             f"CSV dataset is read with the types inferred from the first one)") from None
        raise ValueError(f"{url}: not CSV as asked for ({exc})") from None
    except pa.ArrowException as exc:
        raise ValueError(f"{url}: not CSV as asked for ({exc})") from None


# ---- writing part files -----------------------------------------------------------------------


def part_name(fmt: str, partition: int) -> str:
    return f"part-{partition:05d}{EXTENSIONS[fmt]}"


def write_part(items, fmt: str, staging: str, partition: int) -> str | None:
    """Write partition ``partition`` (rows that are dicts, or a table) as its part file
    in folder ``staging``; None for an empty partition (no file). Returns the part's
    name. Rows that are not dicts are a TypeError."""
    from pipec.backends.runtime import batches
    if len(items) == 0:
        return None
    table = items if batches.is_table(items) else batches.table_of_rows(items, f"a {fmt} sink")
    pa = pyarrow()
    table = table.replace_schema_metadata(None)  # the same bytes whichever form it came in
    sink = pa.BufferOutputStream()
    try:
        if fmt == "parquet":
            pa.parquet.write_table(table, sink)
        elif fmt == "csv":
            pa.csv.write_csv(table, sink)
        else:
            raise ValueError(f"unknown dataset format {fmt!r}")
    except pa.ArrowException as exc:  # a column CSV cannot hold (a list), say
        raise TypeError(f"a {fmt} sink cannot write these rows ({exc})") from None
    name = part_name(fmt, partition)
    fs, folder = filesystem(staging)
    tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    _put(fs, tmp, sink.getvalue().to_pybytes())
    fs.mv(tmp, posixpath.join(folder, name))
    return name


def _put(fs, path: str, data: bytes) -> None:
    if _is_local(fs):  # fsynced, like every file pipec writes locally
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    else:
        fs.pipe_file(path, data)


# ---- staging and committing a dataset sink --------------------------------------------------------


def staging_of(target: str, run_id: str) -> str:
    """The staging folder of dataset sink ``target`` in run ``run_id`` (beside it)."""
    fs, path = filesystem(target)
    path = path.rstrip("/")
    parent, name = posixpath.split(path)
    return _url(fs, posixpath.join(parent, f".{name}{STAGED_MARK}{run_id}{STAGED_SUFFIX}"))


def prepare_staging(target: str, staging: str) -> None:
    """Make ``staging`` empty and remove other runs' staging folders of ``target`` (left
    by runs that were killed)."""
    fs, path = filesystem(target)
    _not_a_file(fs, path, target)
    parent, name = posixpath.split(path.rstrip("/"))
    _, mine = filesystem(staging)
    if fs.isdir(parent):
        for other in fs.glob(posixpath.join(parent, f".{name}{STAGED_MARK}*{STAGED_SUFFIX}")):
            if other.rstrip("/") != mine.rstrip("/"):
                fs.rm(other, recursive=True)
    if fs.exists(mine):
        fs.rm(mine, recursive=True)
    fs.makedirs(mine, exist_ok=True)


def _not_a_file(fs, path: str, target: str) -> None:
    if fs.isfile(path):
        raise NotADirectoryError(f"{target} is a file, and a dataset sink writes a folder")


def commit(staging: str, target: str, names: Sequence[str], again: bool = False) -> None:
    """Move the parts ``names`` from ``staging`` into the dataset folder ``target``:
    ``_SUCCESS`` is removed first, the target's parts from an earlier write that are not
    written again are removed, the new parts renamed in, ``_SUCCESS`` written last.
    ``again``: finishing a commit that was cut short, so a part moved already is left
    where it is, and nothing is done when no part is left to move and ``_SUCCESS`` is
    there (the commit got that far, or a later write of the target replaced it)."""
    fs, root = filesystem(target)
    _, folder = filesystem(staging)
    fs.invalidate_cache(folder)
    try:
        staged = {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)}
    except FileNotFoundError:  # an object store has no empty folders
        staged = set()
    if again and not staged & set(names) and fs.exists(posixpath.join(root, SUCCESS)):
        remove(staging)
        return
    _not_a_file(fs, root, target)
    fs.makedirs(root, exist_ok=True)
    success = posixpath.join(root, SUCCESS)
    if fs.exists(success):
        fs.rm_file(success)
    keep = set(names)
    try:
        existing = fs.ls(root, detail=False)
    except FileNotFoundError:  # an object store has no empty folders
        existing = []
    for old in existing:
        base = posixpath.basename(old.rstrip("/"))
        if base.startswith("part-") and base not in keep:
            fs.rm(old, recursive=True)
    for name in names:
        if name in staged:
            fs.mv(posixpath.join(folder, name), posixpath.join(root, name))
        elif not again or not fs.exists(posixpath.join(root, name)):
            raise FileNotFoundError(errno.ENOENT, "a part the tasks wrote is gone", posixpath.join(folder, name))
    _put(fs, success, b"")
    remove(staging)


def remove(staging: str) -> None:
    """Remove a staging folder and what is in it (nothing if it is gone)."""
    fs, path = filesystem(staging)
    if fs.exists(path):
        fs.rm(path, recursive=True)

