"""Reading user tables (JSONL, CSV, Parquet) with DuckDB, and turning their cells into checked
Python values. Every complaint names the file, the data row and the column.

Rows are numbered two ways: ``index`` is 0-based over the file's data rows (what metadata and
precomputed vector files use); messages say "data row N", 1-based, header not counted, and for
text formats also the line the row starts on.

CSV is read strictly, in one dialect (RFC 4180: comma, or tab for ``.tsv``; double quotes, a quote
inside a quoted field written twice; first line the header) rather than a sniffed one: a sniffer
that guesses the quote character or the delimiter from a sample turns an unterminated quote into
text, or a malformed row into a file with one column. When DuckDB refuses a file, the file is
scanned again in Python to name the row where the fault starts (DuckDB counts lines its own way).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from avengers_store.errors import InputError

# Suffix (after an optional compression suffix) -> (format, field delimiter).
FORMATS = {
    ".parquet": ("parquet", None),
    ".pq": ("parquet", None),
    ".csv": ("csv", ","),
    ".tsv": ("csv", "\t"),
    ".jsonl": ("jsonl", None),
    ".ndjson": ("jsonl", None),
    ".json": ("json", None),
}
COMPRESSION_SUFFIXES = (".gz", ".zst")
# Every CSV cell arrives as text: numbers are parsed here so a bad cell is named by row, and ids
# such as "007" or all-digit texts keep their spelling. No comment character: a text may start
# with '#'.
CSV_OPTIONS = (
    "auto_detect = false, header = true, delim = {delim}, quote = '\"', escape = '\"', "
    "comment = '', strict_mode = true, null_padding = false, ignore_errors = false, "
    "columns = {columns}"
)
JSON_CALLS = {
    "jsonl": "read_json($1, format = 'newline_delimited', records = true, sample_size = -1)",
    "json": "read_json($1, format = 'auto', records = true, sample_size = -1)",
}
NUL = "\x00"
_SURROGATE = re.compile("[\ud800-\udfff]")


def row_label(index: int) -> str:
    """How a person counts data rows: 1-based, header excluded."""
    return f"data row {index + 1}"


def file_format(path: Path) -> tuple[str, str | None]:
    """(format, delimiter) from the file name; an unknown extension is an ``InputError``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in FORMATS:
        raise InputError(
            f"cannot tell the format from the extension {suffix or '(none)'!r}: use one of "
            + ", ".join(sorted(FORMATS)),
            location=str(path),
        )
    return FORMATS[suffix]


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
        """Python values of a column; JSON-typed cells (mixed types in JSONL) are decoded. A NUL
        character anywhere in a cell is an ``InputError`` naming the cell: PostgreSQL text
        cannot hold one."""
        self.require(column)
        arrow = self.data.column(column)
        if pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type):
            hits = pc.match_substring(arrow, NUL).to_numpy(zero_copy_only=False)
            found = np.flatnonzero(hits == True)  # noqa: E712 (nulls are None, not False)
            if found.size:
                self._nul(int(found[0]), column)
        values = arrow.to_pylist()
        if column in self.json_columns:
            values = [None if v is None else json.loads(v) for v in values]
        if column in self.json_columns or not pa.types.is_primitive(arrow.type):
            for i, value in enumerate(values):
                if _holds_nul(value):
                    self._nul(i, column)
        return values

    def _nul(self, index: int, column: str) -> None:
        raise InputError(
            "the value holds a NUL character (\\x00), which PostgreSQL text cannot store: "
            "remove it from the file",
            location=self.where(index, column),
        )

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

    def unit_scores(self, column: str, what: str = "score") -> np.ndarray:
        """``numbers(column)``, every present value in [0, 1] (an outcome); else an
        ``InputError`` at the first cell outside, counting the others (``what``: the cells'
        name in the message)."""
        values = self.numbers(column)
        bad = np.flatnonzero(~np.isnan(values) & ((values < 0) | (values > 1)))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{what} {float(values[i])!r} is outside [0, 1]"
                + (f" ({bad.size} such cells in the column)" if bad.size > 1 else ""),
                location=self.where(i, column),
            )
        return values


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> Table:
    """Read ``path`` (format from its extension), keeping file row order.

    ``columns`` limits what is loaded; a column missing from the file is an ``InputError`` that
    lists the columns the file has. A file that cannot be parsed is an ``InputError`` naming the
    data row (and line) where the fault starts, when it can be found.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError("no such file", location=str(path))
    kind, delim = file_format(path)
    call = _call(path, kind, delim)
    con = duckdb.connect()
    try:
        # One thread keeps DuckDB from reordering rows (row i of the file is row i here).
        con.execute("SET threads = 1")
        con.execute("SET preserve_insertion_order = true")
        try:
            relation = con.execute(f"DESCRIBE SELECT * FROM {call}", [str(path)]).fetchall()
        except duckdb.Error as exc:
            raise _unreadable(path, kind, delim, exc) from exc
        available = tuple(row[0] for row in relation)
        for position, name in enumerate(available):
            if NUL in name:
                raise InputError(
                    f"the name of column {position + 1} holds a NUL character (\\x00)",
                    location=str(path),
                )
        json_columns = frozenset(row[0] for row in relation if row[1] == "JSON")
        wanted = list(dict.fromkeys(c for c in (columns or available) if c is not None))
        missing = [c for c in wanted if c not in available]
        if missing:
            raise InputError(
                f"no column {', '.join(repr(c) for c in missing)}; the file has: "
                + ", ".join(repr(c) for c in available)
                + _delimiter_hint(available, kind),
                location=str(path),
            )
        select = ", ".join(_quote(c) for c in wanted) if wanted else "NULL AS _none"
        try:
            data = con.execute(f"SELECT {select} FROM {call}", [str(path)]).to_arrow_table()
        except duckdb.Error as exc:
            raise _unreadable(path, kind, delim, exc) from exc
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


def _call(path: Path, kind: str, delim: str | None) -> str:
    """The DuckDB table function that reads ``path`` (bound as $1)."""
    if kind == "parquet":
        return "read_parquet($1)"
    if kind in JSON_CALLS:
        return JSON_CALLS[kind]
    header = csv_header(path, delim or ",")
    columns = "{" + ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in header) + "}"
    return "read_csv($1, " + CSV_OPTIONS.format(delim=_literal(delim or ","), columns=columns) + ")"


def csv_header(path: Path, delim: str) -> list[str]:
    """The column names of a CSV file: its first record, which must name each column once."""
    with _text(path) as text:
        reader = csv.reader(text, delimiter=delim, quotechar='"', doublequote=True, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(
                "the file is empty: expected a header row", location=str(path)
            ) from None
        except csv.Error as exc:
            raise InputError(
                f"the header row is not valid CSV: {exc}", location=f"{path} line 1"
            ) from None
    where = f"{path} header"
    if not header:
        raise InputError(
            "the first line is empty: it must name the columns", location=f"{path} line 1"
        )
    for position, name in enumerate(header):
        if _SURROGATE.search(name):
            raise InputError(f"column {position + 1} is not valid UTF-8", location=where)
        if NUL in name:
            raise InputError(
                f"the name of column {position + 1} holds a NUL character (\\x00)", location=where
            )
        if not name.strip():
            raise InputError(f"column {position + 1} has no name", location=where)
    # DuckDB matches column names without regard to case: 'Score' and 'score' would collide.
    seen: dict[str, tuple[int, str]] = {}
    for position, name in enumerate(header):
        key = name.casefold()
        if key in seen:
            first, spelled = seen[key]
            same = "appears twice" if spelled == name else f"and {spelled!r} differ only in case"
            raise InputError(
                f"column name {name!r} {same} (columns {first + 1} and {position + 1})",
                location=where,
            )
        seen[key] = (position, name)
    return header


@contextmanager
def _binary(path: Path) -> Iterator[io.BufferedIOBase]:
    """The file's bytes, decompressed when the name ends in .gz or .zst."""
    stream = pa.input_stream(str(path), compression="detect")
    try:
        yield io.BufferedReader(stream)  # type: ignore[arg-type]
    finally:
        stream.close()


@contextmanager
def _text(path: Path, newline: str = "") -> Iterator[io.TextIOBase]:
    """The file as text for Python's csv module: UTF-8 (a BOM is dropped, as DuckDB does), bad
    bytes kept as surrogates so a scan can name the row that holds them. ``newline`` "" accepts
    any line ending; "\\n" or "\\r" ends lines there only."""
    with _binary(path) as raw:
        yield io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


def _line_ending(path: Path) -> str:
    """How the file's first line ends, "\\n", "\\r\\n" or "\\r": DuckDB reads the whole file
    with that ending, so a lone "\\r" elsewhere is a fault in a "\\n" file."""
    with _binary(path) as raw:
        head = raw.read(1 << 20)
    cr, lf = head.find(b"\r"), head.find(b"\n")
    if cr >= 0 and (lf < 0 or cr < lf):
        return "\r\n" if head[cr + 1 : cr + 2] == b"\n" else "\r"
    return "\n"


def _unreadable(path: Path, kind: str, delim: str | None, exc: duckdb.Error) -> InputError:
    """The ``InputError`` for a file DuckDB refused: the first faulty row when a scan finds it,
    else DuckDB's own first line."""
    fault = None
    if kind == "csv":
        fault = _csv_fault(path, delim or ",") or _first_row_duckdb_refuses(path, delim or ",")
    elif kind == "jsonl":
        fault = _jsonl_fault(path)
    if fault is None:
        return _duckdb_error(path, exc)
    index, line, reason = fault
    where = f"{path} {row_label(index)} (line {line})" if index is not None else str(path)
    return InputError(reason, location=where)


def _first_row_duckdb_refuses(path: Path, delim: str) -> tuple[int, int, str] | None:
    """(index, line, reason) of the first record DuckDB cannot read, for faults Python's csv
    module accepts (DuckDB is stricter about line endings): DuckDB reads ever longer prefixes of
    the file, cut at the record starts Python finds, in a binary search."""
    ending = _line_ending(path)
    with _text(path, ending[-1]) as text:
        lines = _Remembered(text)
        reader = csv.reader(lines, delimiter=delim, quotechar='"', doublequote=True, strict=True)
        try:
            header = next(reader)
            starts = []  # first line of each data record (1-based)
            while True:
                line = reader.line_num + 1
                if next(reader):
                    starts.append(line)
        except (StopIteration, csv.Error):
            pass
    if not starts:
        return None
    with _binary(path) as raw:
        data = raw.read()
    split = b"\r" if ending == "\r" else b"\n"
    physical = data.split(split)
    call = (
        "read_csv($1, "
        + CSV_OPTIONS.format(
            delim=_literal(delim),
            columns="{" + ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in header) + "}",
        )
        + ")"
    )

    def refused(records: int) -> str | None:
        end = starts[records] - 1 if records < len(starts) else len(physical)
        with tempfile.NamedTemporaryFile(suffix=".csv") as part:
            part.write(split.join(physical[:end]) + split)
            part.flush()
            con = duckdb.connect()
            try:
                con.execute(f"SELECT count(*) FROM {call}", [part.name]).fetchall()
            except duckdb.Error as exc:
                return _first_line(exc)
            finally:
                con.close()
        return None

    low, high = 1, len(starts)  # the smallest prefix (in records) that DuckDB refuses
    if refused(high) is None:
        return None
    while low < high:
        middle = (low + high) // 2
        if refused(middle) is None:
            low = middle + 1
        else:
            high = middle
    reason = refused(high) or "DuckDB cannot read it"
    return high - 1, starts[high - 1], f"DuckDB cannot read this row ({reason})"


def _csv_fault(path: Path, delim: str) -> tuple[int, int, str] | None:
    """(index, line, reason) of the first malformed record: a quote left open, a field count
    other than the header's, bytes that are not UTF-8, line endings that change. Blank lines are
    skipped, as DuckDB does."""
    ending = _line_ending(path)
    with _text(path, ending[-1]) as text:
        lines = _Remembered(text)
        reader = csv.reader(lines, delimiter=delim, quotechar='"', doublequote=True, strict=True)
        try:
            width = len(next(reader))
        except (StopIteration, csv.Error):
            return None
        index = 0
        while True:
            line = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                return index, line, _csv_reason(str(exc))
            if not record:
                if ending == "\n" and "\r" in lines.last:
                    return (
                        index,
                        line,
                        "a carriage return (\\r) alone on a line: the file mixes line endings",
                    )
                continue
            if _mixed_ending(lines.last, ending):
                return (
                    index,
                    line,
                    (
                        f"the row ends its line with {_shown(lines.last)} but the file's first line "
                        f"ends with {_shown(ending)}: the file mixes line endings"
                    ),
                )
            for position, field in enumerate(record):
                if _SURROGATE.search(field):
                    return index, line, f"field {position + 1} is not valid UTF-8 text"
            if len(record) != width:
                spans = reader.line_num - line + 1
                hint = (
                    f"; its quoted text runs over {spans} lines: is a quote left open here?"
                    if spans > 1
                    else ""
                )
                return (
                    index,
                    line,
                    f"expected {width} fields (as the header), found {len(record)}{hint}",
                )
            index += 1


def _mixed_ending(line: str, ending: str) -> bool:
    """Whether a record's last line ends in a way DuckDB refuses for a file of ``ending``: a bare
    "\\n" in a "\\r\\n" file, or "\\r\\n" after a closing quote in a "\\n" file."""
    if ending == "\r\n":
        return line.endswith("\n") and not line.endswith("\r\n")
    return ending == "\n" and line.endswith('"\r\n')


def _shown(line: str) -> str:
    return "\\r\\n" if line.endswith("\r\n") else "\\n" if line.endswith("\n") else "\\r"


class _Remembered:
    """Lines of a text, remembering the last one handed out (the csv module hides them)."""

    def __init__(self, text: Iterator[str]) -> None:
        self.text = text
        self.last = ""

    def __iter__(self) -> _Remembered:
        return self

    def __next__(self) -> str:
        self.last = next(self.text)
        return self.last


def _duckdb_error(path: Path, exc: duckdb.Error) -> InputError:
    """DuckDB's own account of a fault the scan did not find: its reason line, and the line
    number it gives (it counts records from the header on, blank lines included)."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    line = re.search(r"CSV Error on Line: (\d+)", lines[0] if lines else "")
    if line is None:
        return InputError(f"cannot read the file: {_first_line(exc)}", location=str(path))
    # The reason is the last line before the blank one that precedes DuckDB's suggestions.
    end = next((i for i, ln in enumerate(lines) if ln.startswith("Possible")), len(lines))
    reason = next((ln for ln in reversed(lines[1:end]) if ln), "the row is malformed")
    return InputError(
        f"{reason.rstrip('.')} (as DuckDB reads it: line {line.group(1)} counting the header)",
        location=f"{path} line {line.group(1)}",
    )


def _csv_reason(message: str) -> str:
    if "unexpected end of data" in message:
        return "a quote opened in this row is never closed"
    if "field larger than field limit" in message:
        # Python's csv stops a field at 128 KiB: in practice, a quote that swallowed the rows
        # after it.
        return "a quoted field starting in this row runs on for more than 128 KiB: is a quote left open?"
    if "new-line character seen in unquoted field" in message:
        return "a line break inside an unquoted field: the file mixes line endings (\\r and \\n)"
    if "expected after" in message:
        return 'text follows a closing quote (a quote inside a quoted field is written twice: "")'
    return f"not valid CSV: {message}"


def _jsonl_fault(path: Path) -> tuple[int | None, int, str] | None:
    """(index, line, reason) of the first line that is not one JSON object; (None, 0, reason)
    for a file with no records at all."""
    index = 0
    with _binary(path) as raw:
        for line_number, data in enumerate(raw, start=1):
            if not data.strip():
                continue
            try:
                text = data.decode("utf-8-sig" if line_number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                return index, line_number, f"not valid UTF-8 (byte {exc.start + 1} of the line)"
            try:
                value = json.loads(text, object_pairs_hook=_unique_keys)
            except _DuplicateKey as exc:
                return index, line_number, f"the key {exc.args[0]!r} appears twice in the object"
            except ValueError as exc:
                reason = getattr(exc, "msg", str(exc))
                column = getattr(exc, "colno", None)
                at = f" at character {column}" if column else ""
                return index, line_number, f"not valid JSON: {reason}{at}"
            if not isinstance(value, dict):
                return index, line_number, f"expected a JSON object, found {type(value).__name__}"
            if _has_surrogate(value):
                return (
                    index,
                    line_number,
                    "a \\u escape names half of a character (a lone surrogate)",
                )
            index += 1
    if index == 0:
        return None, 0, "the file holds no JSON records"
    return None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    return False


def _delimiter_hint(available: Sequence[str], kind: str) -> str:
    if kind != "csv" or len(available) != 1:
        return ""
    for delim, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
        if delim in available[0]:
            return (
                f". The header seems to be separated by {name}: CSV files here use commas "
                "(name a tab-separated file .tsv)"
            )
    return ""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
