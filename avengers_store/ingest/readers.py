"""Reading user tables (JSONL, CSV, Parquet) with DuckDB, and turning their cells into checked
Python values. Every complaint names the file, the data row and the column.

Rows are numbered two ways: ``index`` is 0-based over the file's data rows (what metadata and
precomputed vector files use); messages say "data row N", 1-based, header not counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from avengers_store.errors import InputError

# Suffix (after an optional compression suffix) -> DuckDB table function call, path bound as $1.
READERS = {
    ".parquet": "read_parquet($1)",
    ".pq": "read_parquet($1)",
    # Every CSV cell arrives as text: numbers are parsed here so a bad cell is named by row, and
    # ids such as "007" or all-digit texts keep their spelling.
    ".csv": "read_csv($1, all_varchar = true, header = true)",
    ".tsv": "read_csv($1, all_varchar = true, header = true, delim = '\t')",
    ".jsonl": "read_json($1, format = 'newline_delimited', sample_size = -1)",
    ".ndjson": "read_json($1, format = 'newline_delimited', sample_size = -1)",
    ".json": "read_json($1, format = 'auto', sample_size = -1)",
}
COMPRESSION_SUFFIXES = (".gz", ".zst")


def row_label(index: int) -> str:
    """How a person counts data rows: 1-based, header excluded."""
    return f"data row {index + 1}"


def reader_for(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in READERS:
        raise InputError(
            f"cannot tell the format from the extension {suffix or '(none)'!r}: use one of "
            + ", ".join(sorted(READERS)),
            location=str(path),
        )
    return READERS[suffix]


@dataclass(frozen=True)
class Table:
    """Columns of one file, in file row order."""

    path: Path
    columns: tuple[str, ...]
    n_rows: int
    data: pa.Table
    json_columns: frozenset[str] = frozenset()

    def where(self, index: int, column: str) -> str:
        return f"{self.path} {row_label(index)} column {column!r}"

    def require(self, *columns: str | None) -> None:
        missing = [c for c in columns if c is not None and c not in self.columns]
        if missing:
            raise InputError(
                f"no column {', '.join(repr(c) for c in missing)}; the file has: "
                + ", ".join(repr(c) for c in self.columns),
                location=str(self.path),
            )

    def values(self, column: str) -> list[Any]:
        """Python values of a column; JSON-typed cells (mixed types in JSONL) are decoded."""
        self.require(column)
        values = self.data.column(column).to_pylist()
        if column in self.json_columns:
            values = [None if v is None else json.loads(v) for v in values]
        return values

    def texts(self, column: str) -> list[str]:
        """A text column where every row must hold non-blank text."""
        out: list[str] = []
        for i, value in enumerate(self.values(column)):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise InputError("text is missing", location=self.where(i, column))
            if not isinstance(value, str):
                raise InputError(
                    f"expected text, found {type(value).__name__} {value!r}",
                    location=self.where(i, column),
                )
            if not value.strip():
                raise InputError("text is blank", location=self.where(i, column))
            out.append(value)
        return out

    def labels(self, column: str, *, required: bool = False) -> list[str | None]:
        """Names or ids: text or integers, kept as text (``3.0`` becomes ``"3"``)."""
        out: list[str | None] = []
        for i, value in enumerate(self.values(column)):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                if required:
                    raise InputError("value is missing", location=self.where(i, column))
                out.append(None)
            elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise InputError(
                    f"expected text or a whole number, found {value!r}",
                    location=self.where(i, column),
                )
            elif isinstance(value, float):
                if not value.is_integer():
                    raise InputError(
                        f"expected text or a whole number, found {value!r}",
                        location=self.where(i, column),
                    )
                out.append(str(int(value)))
            else:
                out.append(str(value))
        return out

    def numbers(self, column: str) -> np.ndarray:
        """A numeric column as float64; missing cells (null, empty, NaN) are NaN."""
        self.require(column)
        arrow = self.data.column(column)
        numeric = pa.types.is_integer(arrow.type) or pa.types.is_floating(arrow.type)
        if numeric and column not in self.json_columns:
            return np.asarray(arrow.to_numpy(zero_copy_only=False), dtype=np.float64)
        if pa.types.is_boolean(arrow.type):
            return np.array(
                [np.nan if v is None else float(v) for v in arrow.to_pylist()], dtype=np.float64
            )
        out = np.empty(self.n_rows, dtype=np.float64)
        for i, value in enumerate(self.values(column)):
            if value is None:
                out[i] = np.nan
            elif isinstance(value, (bool, int, float)):
                out[i] = float(value)
            elif isinstance(value, str):
                stripped = value.strip()
                if not stripped:
                    out[i] = np.nan
                    continue
                try:
                    out[i] = float(stripped)
                except ValueError:
                    raise InputError(
                        f"{value!r} is not a number", location=self.where(i, column)
                    ) from None
            else:
                raise InputError(f"{value!r} is not a number", location=self.where(i, column))
        return out


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> Table:
    """Read ``path`` (format from its extension), keeping file row order.

    ``columns`` limits what is loaded; a column missing from the file is an ``InputError`` that
    lists the columns the file has.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError("no such file", location=str(path))
    call = reader_for(path)
    con = duckdb.connect()
    try:
        # One thread keeps DuckDB from reordering rows (row i of the file is row i here).
        con.execute("SET threads = 1")
        con.execute("SET preserve_insertion_order = true")
        try:
            relation = con.execute(f"DESCRIBE SELECT * FROM {call}", [str(path)]).fetchall()
        except duckdb.Error as exc:
            raise InputError(
                f"cannot read the file: {_first_line(exc)}", location=str(path)
            ) from exc
        available = tuple(row[0] for row in relation)
        json_columns = frozenset(row[0] for row in relation if row[1] == "JSON")
        wanted = list(dict.fromkeys(c for c in (columns or available) if c is not None))
        missing = [c for c in wanted if c not in available]
        if missing:
            raise InputError(
                f"no column {', '.join(repr(c) for c in missing)}; the file has: "
                + ", ".join(repr(c) for c in available),
                location=str(path),
            )
        select = ", ".join(_quote(c) for c in wanted) if wanted else "NULL AS _none"
        try:
            data = con.execute(f"SELECT {select} FROM {call}", [str(path)]).to_arrow_table()
        except duckdb.Error as exc:
            raise InputError(
                f"cannot read the file: {_first_line(exc)}", location=str(path)
            ) from exc
    finally:
        con.close()
    if not wanted:
        data = data.drop_columns(["_none"])
    return Table(
        path=path,
        columns=available,
        n_rows=data.num_rows,
        data=data,
        json_columns=json_columns & set(wanted),
    )


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
