"""Fuzzing the importers: a generated file is loaded in full or refused naming where, and a refused
file changes nothing. See the package docstring for how the run is bounded."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from avengers_store.calibration.query_vectors import import_npy
from avengers_store.errors import InputError
from avengers_store.ingest.datasets import add_dataset
from avengers_store.ingest.outcomes import import_outcomes
from avengers_store.ingest.text_identity import content_hash
from avengers_store.ingest.wide_tables import load_table
from avengers_store.testing import table_counts, throwaway_database

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=timedelta(seconds=20),  # shared cores: generous, still a bound per example
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=500,
                          derandomize=False)  # fmt: skip
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.timeout(240)

SPLIT_MAP = {"train": "calibration", "test": "test", "dev": "skip"}
SPLITS = {"train": "calibration", "test": "test", "dev": None}  # "val" and None: refused
PREFIX = "acc|"
# What a message may name instead of a row, line or column: the file as a whole.
FILE_LEVEL = ("no rows left to load", "holds no JSON records", "the file is empty", "no column")

# -- generated content -------------------------------------------------------------------------

TRICKY = st.sampled_from(
    ['"', ",", "\n", "\r", "\r\n", "\t", "#", " ", "\\", "\x00", "é", "✓", "'", "{", "\u2028"]
)
# Files are mostly well-formed, with texts a CSV or JSON writer must quote or escape, so that
# loads succeed and their content is checked; some rows are hostile anywhere.
ANY_TEXT = st.lists(st.one_of(TRICKY, st.characters(codec="utf-8")), max_size=10).map("".join)
GOOD_TEXT = st.one_of(
    st.text(alphabet="abcdefgh xyz?", min_size=1, max_size=12),
    ANY_TEXT.map(lambda t: t.replace("\x00", "")),
).filter(str.strip)
GOOD_SCORE = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(min_value=0.0, max_value=1.0), st.none()
)
ANY_SCORE = st.one_of(
    GOOD_SCORE,
    st.floats(min_value=-0.5, max_value=1.5),
    st.sampled_from([math.nan, math.inf, "", " ", "0.5", "abc", "1e0", "-1"]),
)
TEXT = st.one_of(GOOD_TEXT, ANY_TEXT)


def row_strategy(text, score, splits) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "bench": st.sampled_from(["alpha", "beta"]),
            "question": text,
            "split": st.sampled_from(splits),
            "acc|m1": score,
            "acc|m2": score,
        }
    )


GOOD_ROW = row_strategy(GOOD_TEXT, GOOD_SCORE, ["train", "test", "train", "dev"])
ANY_ROW = row_strategy(ANY_TEXT, ANY_SCORE, ["train", "test", "dev", None, "val"])
ROWS = st.one_of(
    st.lists(GOOD_ROW, min_size=1, max_size=6),
    st.lists(st.one_of(GOOD_ROW, GOOD_ROW, ANY_ROW), min_size=1, max_size=6),
)
# A byte-level fault: None, or (where as a fraction of the file, what is inserted; b"" truncates).
FAULT = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.tuples(
        st.floats(min_value=0.0, max_value=1.0),
        st.sampled_from([b'"', b",", b"\n", b"\r", b"\x00", b"\xff", b'""', b"{", b"]", b""]),
    ),
)


def serialize(rows: list[dict], fmt: str, fault) -> bytes:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = list(rows[0])
        writer.writerow(header)
        for row in rows:
            values = [row[key] for key in header]
            writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v
                             for v in values])  # fmt: skip
        data = buffer.getvalue().encode()
    elif fmt == "jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    else:
        columns = {key: [r[key] for r in rows] for key in rows[0]}
        arrays = {}
        for key, values in columns.items():
            numeric = key.startswith("acc|") and all(
                v is None or isinstance(v, float) for v in values
            )
            kind = pa.float64() if numeric else pa.string()
            arrays[key] = pa.array(
                [v if numeric or v is None else str(v) for v in values], type=kind
            )
        sink = io.BytesIO()
        pq.write_table(pa.table(arrays), sink)
        data = sink.getvalue()
    if fault is not None:
        where, what = fault
        at = int(where * len(data))
        data = data[:at] + what if what == b"" else data[:at] + what + data[at:]
    return data


# -- reference readers: what a loaded file must have put in the store --------------------------


class Unreadable(Exception):
    """The reference reader refuses the file: a load that succeeds is then wrong."""


def reference_records(data: bytes, fmt: str, path: Path) -> list[dict]:
    if fmt == "parquet":
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # any failure of the reference reader
            raise Unreadable(str(exc)) from exc
    # Bytes that are not UTF-8 become surrogates: harmless in a column no importer reads, a
    # failure (content_hash cannot encode them) in one that a successful load stored.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    if fmt == "jsonl":
        out = []
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise Unreadable(str(exc)) from exc
            if not isinstance(value, dict):
                raise Unreadable("not an object")
            out.append(value)
        return out
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise Unreadable(str(exc)) from exc
    if not records:
        raise Unreadable("empty")
    header, body = records[0], [r for r in records[1:] if r]
    if any(len(r) != len(header) for r in body):
        raise Unreadable("field count")
    return [{k: (v if v != "" else None) for k, v in zip(header, r, strict=True)} for r in body]


def outcome_columns(record: dict) -> list[str]:
    """The outcome columns as the file names them (a fault may have renamed one)."""
    return [k for k in record if k.startswith(PREFIX) and len(k) > len(PREFIX)]


def as_score(value) -> float:
    """A cell as the importers read it: missing, NaN and empty are NaN (not evaluated)."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        return float(value.strip()) if value.strip() else math.nan
    return float(value)


# -- the store --------------------------------------------------------------------------------


def snapshot(url: str) -> tuple:
    """Row counts and names: what a refused file must leave as it was."""
    with psycopg.connect(url) as c:
        names = c.execute(
            "SELECT (SELECT array_agg(name ORDER BY name) FROM avengers.datasets), "
            "(SELECT array_agg(name ORDER BY name) FROM avengers.models), "
            "(SELECT sum(score) FROM avengers.outcomes)"
        ).fetchone()
    return tuple(sorted(table_counts(url).items())), names


def stored_queries(url: str) -> dict[tuple[str, str, str], str]:
    with psycopg.connect(url) as c:
        rows = c.execute(
            "SELECT d.name, q.split, q.content_hash, q.text FROM avengers.queries q "
            "JOIN avengers.datasets d ON d.id = q.dataset_id"
        ).fetchall()
    return {(r[0], r[1], r[2]): r[3] for r in rows}


def stored_outcomes(url: str) -> dict[tuple, float]:
    with psycopg.connect(url) as c:
        rows = c.execute(
            "SELECT d.name, q.split, q.content_hash, m.name, o.score FROM avengers.outcomes o "
            "JOIN avengers.queries q ON q.id = o.query_id "
            "JOIN avengers.datasets d ON d.id = q.dataset_id "
            "JOIN avengers.models m ON m.id = o.model_id"
        ).fetchall()
    return {r[:4]: r[4] for r in rows}


def reset(url: str, *, keep_datasets: bool = False) -> None:
    with psycopg.connect(url) as c:
        if not keep_datasets:
            c.execute("DELETE FROM avengers.datasets")
        c.execute("DELETE FROM avengers.models")
        c.execute("DELETE FROM avengers.embedding_spaces")


def assert_refused_cleanly(exc: InputError, path: Path, before: tuple, url: str, fmt: str) -> None:
    message = str(exc)
    assert message.startswith(str(path)), message
    rest = message[len(str(path)) :]
    located = any(word in rest for word in ("data row", "line", "header", "column"))
    whole_file = any(word in rest for word in FILE_LEVEL) or (
        fmt == "parquet" and "cannot read the file" in rest
    )
    assert located or whole_file, message
    assert snapshot(url) == before, message
    event(f"refused: {rest.split(': ', 1)[-1][:40]}")


def expected_load(records: list[dict], *, prefix: str = "") -> tuple[dict, dict]:
    """Queries (dataset, split, hash) -> first text, and outcomes -> mean score, from records."""
    queries: dict[tuple[str, str, str], str] = {}
    cells: dict[tuple, list[float]] = defaultdict(list)
    for record in records:
        split = SPLITS[record["split"]]
        if split is None:
            continue
        key = (prefix + str(record.get("bench", "")), split, content_hash(record["question"]))
        queries.setdefault(key, record["question"])
        for model in outcome_columns(record):
            score = as_score(record.get(model))
            if not math.isnan(score):
                cells[(*key, model[len(PREFIX) :])].append(score)
    return queries, {k: sum(v) / len(v) for k, v in cells.items()}


def write(workdir: Path, name: str, data: bytes) -> Path:
    path = (workdir / name).resolve()
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


FORMATS = st.sampled_from(["csv", "jsonl", "parquet"])


# -- properties --------------------------------------------------------------------------------


@PROFILE
@given(rows=ROWS, fmt=FORMATS, fault=FAULT)
def test_load_table_loads_all_or_nothing(db_url, workdir, rows, fmt, fault):
    reset(db_url)
    data = serialize(rows, fmt, fault)
    path = write(workdir, f"wide.{fmt}", data)
    before = snapshot(db_url)
    try:
        load_table(path, dataset_col="bench", text_col="question", split_col="split",
                   split_map=SPLIT_MAP, outcome_prefix="acc|", url=db_url)  # fmt: skip
    except InputError as exc:
        assert_refused_cleanly(exc, path, before, db_url, fmt)
        return
    event("loaded")
    records = reference_records(data, fmt, path)  # Unreadable here: a bad file got in
    queries, outcomes = expected_load(records)
    assert stored_queries(db_url) == queries
    stored = stored_outcomes(db_url)
    assert stored.keys() == outcomes.keys()
    for key, score in outcomes.items():
        assert stored[key] == pytest.approx(min(score, 1.0), abs=1e-9)


@PROFILE
@given(rows=ROWS, fmt=FORMATS, fault=FAULT)
def test_dataset_add_loads_all_or_nothing(db_url, workdir, rows, fmt, fault):
    reset(db_url)
    data = serialize(rows, fmt, fault)
    path = write(workdir, f"queries.{fmt}", data)
    before = snapshot(db_url)
    try:
        add_dataset("fuzzed", path, text_col="question", split_col="split",
                    split_map=SPLIT_MAP, url=db_url)  # fmt: skip
    except InputError as exc:
        assert_refused_cleanly(exc, path, before, db_url, fmt)
        return
    event("loaded")
    records = reference_records(data, fmt, path)
    queries, _ = expected_load(
        [{"bench": "fuzzed", "question": r["question"], "split": r["split"]} for r in records]
    )
    assert stored_queries(db_url) == queries


BASE_TEXTS = ["What is 2+2?", "Name a prime.", "Capital of Peru?", 'He said "hi", twice.']


@pytest.fixture(scope="module")
def outcomes_store(pg_admin_url, template_db, workdir) -> Iterator[str]:
    """A store with dataset "base", whose first text is in both splits (its outcomes then go to
    two queries)."""
    rows = [{"question": t, "split": "train"} for t in BASE_TEXTS]
    rows.append({"question": BASE_TEXTS[0], "split": "test"})
    path = write(workdir, "base.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    with throwaway_database(pg_admin_url, template=template_db) as url:
        add_dataset("base", path, text_col="question", split_col="split", url=url)
        yield url


OUTCOME_ROW = st.one_of(
    st.fixed_dictionaries(
        {"question": st.sampled_from(BASE_TEXTS), "acc|m1": GOOD_SCORE, "acc|m2": GOOD_SCORE}
    ),
    st.fixed_dictionaries(
        {
            "question": st.one_of(st.sampled_from(BASE_TEXTS), TEXT),
            "acc|m1": ANY_SCORE,
            "acc|m2": ANY_SCORE,
        }
    ),  # fmt: skip
)


@PROFILE
@given(rows=st.lists(OUTCOME_ROW, min_size=1, max_size=4), fmt=FORMATS, fault=FAULT)
def test_outcomes_import_loads_all_or_nothing(outcomes_store, workdir, rows, fmt, fault):
    url = outcomes_store
    reset(url, keep_datasets=True)
    data = serialize(rows, fmt, fault)
    path = write(workdir, f"outcomes.{fmt}", data)
    before = snapshot(url)
    try:
        import_outcomes(path, dataset="base", wide_prefix="acc|", text_col="question",
                        create_models=True, url=url)  # fmt: skip
    except InputError as exc:
        assert_refused_cleanly(exc, path, before, url, fmt)
        return
    event("loaded")
    records = reference_records(data, fmt, path)
    splits_of = defaultdict(set)
    for (_, split, h), _text in stored_queries(url).items():
        splits_of[h].add(split)
    cells: dict[tuple, list[float]] = defaultdict(list)
    for record in records:
        h = content_hash(record["question"])
        assert splits_of[h], f"an outcome for a text not in the dataset got in: {record}"
        for model in outcome_columns(record):
            score = as_score(record.get(model))
            if not math.isnan(score):
                for split in splits_of[h]:  # a text in both splits: both queries
                    cells[("base", split, h, model[len(PREFIX) :])].append(score)
    stored = stored_outcomes(url)
    assert stored.keys() == cells.keys()
    for key, scores in cells.items():
        assert stored[key] == pytest.approx(sum(scores) / len(scores), abs=1e-9)


VECTOR_ROWS = 5


@pytest.fixture(scope="module")
def vector_store(pg_admin_url, template_db, workdir) -> Iterator[tuple[str, Path]]:
    """A store with five queries loaded from a file (a .npy must match it row for row)."""
    rows = [{"question": f"vector question {i}", "split": "train"} for i in range(VECTOR_ROWS)]
    path = write(workdir, "vectors.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    with throwaway_database(pg_admin_url, template=template_db) as url:
        add_dataset("vectors", path, text_col="question", split_col="split", url=url)
        yield url, path


GOOD_CELL = st.one_of(
    st.floats(min_value=0.01, max_value=10), st.floats(min_value=-10, max_value=-0.01)
)
CELL = st.one_of(
    GOOD_CELL,
    st.just(0.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e-300, 1e300, 1e-45]),
)
MATRIX = st.tuples(
    st.sampled_from([np.float16, np.float32, np.float64]),
    st.sampled_from([(VECTOR_ROWS, 3), (VECTOR_ROWS, 3), (VECTOR_ROWS - 1, 3), (VECTOR_ROWS, 1)]),
    st.sampled_from([GOOD_CELL, GOOD_CELL, CELL]),
).flatmap(
    lambda spec: hnp.arrays(np.float64, spec[1], elements=spec[2]).map(lambda m: _cast(m, spec[0]))
)


def _cast(matrix: np.ndarray, dtype) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):
        return matrix.astype(dtype)


@PROFILE
@given(
    matrix=MATRIX,
    zero_row=st.one_of(st.none(), st.none(), st.none(), st.integers(0, VECTOR_ROWS - 1)),
)
def test_from_npy_loads_all_or_nothing(vector_store, workdir, matrix, zero_row):
    db_url, vector_source = vector_store
    reset(db_url, keep_datasets=True)
    if zero_row is not None and zero_row < len(matrix):
        matrix = matrix.copy()
        matrix[zero_row] = 0
    npy = (workdir / "fuzz.npy").resolve()
    np.save(npy, matrix)
    before = snapshot(db_url)
    try:
        import_npy(npy, vector_source, embedder="openai:http://127.0.0.1:9/v1#fuzz", url=db_url)
    except InputError as exc:
        message = str(exc)
        assert message.startswith(str(npy)), message
        if matrix.shape == (VECTOR_ROWS, 3):
            assert " row " in message, message
        assert snapshot(db_url) == before, message
        event(f"refused: {message[len(str(npy)) :].split(': ', 1)[-1][:40]}")
        return
    event("loaded")
    with psycopg.connect(db_url) as c:
        rows = c.execute(
            "SELECT (q.metadata->>'source_row')::int, e.embedding::text FROM avengers.queries q "
            "JOIN avengers.query_embeddings e ON e.query_id = q.id"
        ).fetchall()
    assert len(rows) == VECTOR_ROWS
    wide = matrix.astype(np.float32).astype(np.float64)
    for row, text in rows:
        stored = np.array(json.loads(text))
        assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-5)
        expected = wide[row] / np.linalg.norm(wide[row])
        assert np.allclose(stored, expected, atol=1e-5)
