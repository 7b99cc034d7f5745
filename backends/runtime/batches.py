"""The forms a partition takes: a list of rows, or columnar (a ``pyarrow.Table``).

A table source's partitions and the output of ``map_batches ... as pandas|arrow|numpy``
are tables; the physical plan keeps a partition a table exactly when every stage that
reads it takes one (a batch stage or a dataset sink: ``columnar`` on the step that makes
it), so consecutive batch stages never go through Python rows. Everything else sees
rows: a table's rows are plain dicts (``Table.to_pylist``), one per row.

``map_batches f over xs as FORM`` hands ``f`` the partition as:

* ``arrow``: the ``pyarrow.Table`` itself;
* ``pandas``: ``table.to_pandas()`` (a DataFrame with a fresh RangeIndex);
* ``numpy``: a dict of column name -> ``numpy`` array (a list column becomes an object
  array of arrays),

and takes the same form back. Rows that are not dicts cannot become a table: a
TypeError that says so. pyarrow (and pandas for ``as pandas``) is imported only here,
only when a table is made, so a pipeline without tables never needs it.
"""

from __future__ import annotations

from typing import Any

FORMS = ("pandas", "arrow", "numpy")


def is_table(items: Any) -> bool:
    """Whether ``items`` is a columnar partition (checked without importing pyarrow)."""
    return type(items).__name__ == "Table" and type(items).__module__.startswith("pyarrow")


def rows(items):
    """A partition as rows: a table's rows as dicts; anything else as it is."""
    return items.to_pylist() if is_table(items) else items


def table_of_rows(items, what: str):
    """A ``pyarrow.Table`` from a list of dict rows (column types inferred by pyarrow).
    Raises TypeError naming ``what`` when a row is not a dict."""
    from pipec.backends.runtime.datasets import pyarrow
    pa = pyarrow()
    for row in items:
        if not isinstance(row, dict):
            raise TypeError(f"{what} needs rows that are dicts (column name -> value), got "
                            f"{type(row).__name__} {row!r:.60}")
        break
    if not isinstance(items, list):
        items = list(items)
    try:
        return pa.Table.from_pylist(items)
    except pa.ArrowException as exc:
        raise TypeError(f"{what}: the rows do not make a table ({exc})") from None


def to_batch(items, form: str):
    """The partition ``items`` (rows or a table) in batch form ``form``."""
    table = items if is_table(items) else table_of_rows(items, f"map_batches ... as {form}")
    if form == "arrow":
        return table
    if form == "pandas":
        from pipec.backends.runtime.datasets import require
        require("pandas", "pandas")
        return table.to_pandas()
    if form == "numpy":
        return {name: table.column(name).to_numpy() for name in table.column_names}
    raise ValueError(f"unknown batch form {form!r}")


def from_batch(result, form: str):
    """What a batch function returned, in form ``form``, as a table. Raises TypeError
    when it returned another form."""
    from pipec.backends.runtime.datasets import pyarrow
    pa = pyarrow()
    if form == "arrow":
        if isinstance(result, pa.RecordBatch):
            return pa.Table.from_batches([result])
        if isinstance(result, pa.Table):
            return result
        raise TypeError(f"map_batches ... as arrow must return a pyarrow.Table, got {type(result).__name__}")
    if form == "pandas":
        import pandas
        if not isinstance(result, pandas.DataFrame):
            raise TypeError(f"map_batches ... as pandas must return a pandas DataFrame, got {type(result).__name__}")
        try:
            return pa.Table.from_pandas(result, preserve_index=False).replace_schema_metadata(None)
        except pa.ArrowException as exc:  # a column of mixed types, say
            raise TypeError(f"map_batches ... as pandas returned a DataFrame pyarrow cannot hold ({exc})") from None
    if form == "numpy":
        if not isinstance(result, dict):
            raise TypeError(f"map_batches ... as numpy must return a dict of column arrays, got "
                            f"{type(result).__name__}")
        columns = {}
        for name, column in result.items():
            # A 2-d array is a column of rows (a list column), as pyarrow cannot take it whole.
            columns[str(name)] = pa.array(list(column)) if getattr(column, "ndim", 1) > 1 else column
        try:
            return pa.table(columns)
        except pa.ArrowException as exc:
            raise TypeError(f"map_batches ... as numpy returned columns that do not make a table ({exc})") from None
    raise ValueError(f"unknown batch form {form!r}")
