"""Reading user files strictly: a malformed CSV or JSONL row, a NUL character or a bad header is an
``InputError`` naming the file, the data row (and the line it starts on) or the column."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avengers_store.errors import InputError
from avengers_store.ingest.readers import read_table

HEADER = "benchmark,question,split,acc|m\n"


def refused(path: Path, columns=None, *, column: str | None = None) -> str:
    """The message of the InputError reading ``path`` (and, with ``column``, its values)."""
    with pytest.raises(InputError) as info:
        table = read_table(path, columns)
        if column is not None:
            table.values(column)
    message = str(info.value)
    assert message.startswith(str(path.resolve())), message
    return message[len(str(path.resolve())) :]


def test_an_unterminated_quote_in_a_large_csv_is_refused_at_the_row_it_opens(tmp_path):
    path = tmp_path / "big.csv"
    rows = [f"mmlu,question {i},train,1\n" for i in range(30_000)]
    rows.insert(15_000, 'mmlu,"an unterminated question,train,1\n')
    path.write_text(HEADER + "".join(rows))
    message = refused(path)
    assert message.startswith(" data row 15001 (line 15002): ")
    assert "quote" in message


@pytest.mark.parametrize(
    "body, where, reason",
    [
        ("mmlu,q1,train,1\nmmlu,q2,train,1,extra\n", "data row 2 (line 3)", "found 5"),
        ("mmlu,q1,train,1\nmmlu,q2\nmmlu,q3,test,0\n", "data row 2 (line 3)", "found 2"),
        ('mmlu,q1,train,1\nmmlu,"q2,train,1\n', "data row 2 (line 3)", "never closed"),
        ('mmlu,"said ""hi"" x" more,train,1\n', "data row 1 (line 2)", "follows a closing"),
        # A quoted field over three lines: the row after it starts on line 5.
        ('mmlu,"one\ntwo\nthree",train,1\nmmlu,q2,train\n', "data row 2 (line 5)", "found 3"),
        # Blank lines are not rows (DuckDB skips them too), but they are lines.
        ("mmlu,q1,train,1\n\n\nmmlu,q2,train\n", "data row 2 (line 5)", "found 3"),
        ("mmlu,q1,train,1\r\nmmlu,q2,train,1,2\r\n", "data row 2 (line 3)", "found 5"),
    ],
)
def test_malformed_csv_rows_are_named(tmp_path, body, where, reason):
    path = tmp_path / "bad.csv"
    path.write_bytes((HEADER + body).encode())
    # Asking for a column first used to make the sniffer answer "no column 'benchmark'".
    message = refused(path, ["benchmark", "question"])
    assert message.startswith(f" {where}: "), message
    assert reason in message


def test_a_compressed_csv_is_scanned_too(tmp_path):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress((HEADER + "mmlu,q1,train,1\nmmlu,q2,train\n").encode()))
    assert refused(path).startswith(" data row 2 (line 3): expected 4 fields")


def test_bytes_that_are_not_utf8_are_named(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "mmlu,ok,train,1\n").encode() + b"mmlu,caf\xe9,train,1\n")
    assert refused(path) == " data row 2 (line 3): field 2 is not valid UTF-8 text"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", ": the file is empty: expected a header row"),
        ("a,question,a\nx,y,z\n", " header: column name 'a' appears twice (columns 1 and 3)"),
        ("a,,c\nx,y,z\n", " header: column 2 has no name"),
    ],
)
def test_header_faults(tmp_path, content, message):
    path = tmp_path / "h.csv"
    path.write_text(content)
    assert refused(path) == message


@pytest.mark.parametrize(
    "content, message",
    [
        (b"ques\x00tion,split\nq,train\n", " header: the name of column 1 holds a NUL"),
        (b"Split,question,split\nx,q,train\n", " header: column name 'split' and 'Split' differ"),
    ],
)
def test_header_names_duckdb_cannot_take(tmp_path, content, message):
    path = tmp_path / "names.csv"
    path.write_bytes(content)
    assert refused(path).startswith(message)


@pytest.mark.parametrize(
    "content, where",
    [
        # The header ends with \r\n, the rows with \n: DuckDB reads one ending per file.
        (b"question,split\r\nq1,train\nq2,test\n", "data row 1 (line 2)"),
        (b'question,split\n"q1",train\n"q2"\r\n', "data row 2 (line 3)"),
        (b"question,split\nq1,train\n\r", "data row 2 (line 3)"),
    ],
)
def test_mixed_line_endings_are_named(tmp_path, content, where):
    path = tmp_path / "mixed.csv"
    path.write_bytes(content)
    message = refused(path)
    assert message.startswith(f" {where}: ") and "mixes line endings" in message, message


def test_a_row_only_duckdb_refuses_is_found_by_bisection(tmp_path):
    # Python's csv module reads "\r\r\n" as a line end; DuckDB refuses it. The row is still named.
    path = tmp_path / "rr.csv"
    path.write_bytes(b"split,question\ndev,c\ntest,y\ndev,\r\r\n")
    assert refused(path).startswith(" data row 3 (line 4): DuckDB cannot read this row (")


def test_an_empty_first_line_is_no_header(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_bytes(b"\nquestion\nq\n")
    assert refused(path) == " line 1: the first line is empty: it must name the columns"


def test_a_semicolon_file_gets_a_hint(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("question;split\nq1;train\n")
    assert "separated by semicolons" in refused(path, ["question"])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_nul_character_is_named_by_file_row_and_column(tmp_path, suffix):
    rows = [{"question": "fine", "answer": "a"}, {"question": "bro\x00ken", "answer": "b"}]
    path = tmp_path / f"nul{suffix}"
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["question", "answer"])
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    table = read_table(path)
    assert table.values("answer") == ["a", "b"]  # other columns stay readable
    assert refused(path, column="question") == (
        " data row 2 column 'question': the value holds a NUL character (\\x00), which "
        "PostgreSQL text cannot store: remove it from the file"
    )


def test_a_nul_inside_a_nested_json_value_is_named(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text('{"q": "x", "meta": {"a": 1}}\n{"q": "y", "meta": ["ok", "b\\u0000"]}\n')
    assert refused(path, column="meta").startswith(" data row 2 column 'meta': ")


@pytest.mark.parametrize(
    "lines, where, reason",
    [
        (['{"q": "a"}', '{"q": "b",', '{"q": "c"}'], "data row 2 (line 2)", "not valid JSON"),
        (['{"q": "a"}', "", "[1, 2]"], "data row 2 (line 3)", "expected a JSON object"),
        (['{"q": "a"} trailing'], "data row 1 (line 1)", "not valid JSON"),
        (['{"q": "a", "q": "b"}'], "data row 1 (line 1)", "the key 'q' appears twice"),
        (['{"q": "a"}', '{"q": "\\ud800"}'], "data row 2 (line 2)", "lone surrogate"),
    ],
)
def test_malformed_jsonl_lines_are_named(tmp_path, lines, where, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    message = refused(path)
    assert message.startswith(f" {where}: "), message
    assert reason in message


def test_an_empty_jsonl_file_says_so(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert refused(path) == ": the file holds no JSON records"


def test_valid_csv_reads_as_pythons_csv_module_reads_it(tmp_path):
    texts = [
        "plain",
        "with, a comma",
        'with "quotes" inside',
        "over\ntwo lines",
        "# starts like a comment",
        "  spaced  ",
        "007",
        "ünïcödé — ✓",
        "carriage\r\nreturn",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["id", "question"])
    writer.writerows([[str(i), t] for i, t in enumerate(texts)])
    path = tmp_path / "ok.csv"
    path.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode())  # with a BOM, as Excel writes
    table = read_table(path)
    assert table.columns == ("id", "question")
    assert table.values("question") == texts
    assert table.labels("id") == [str(i) for i in range(len(texts))]
