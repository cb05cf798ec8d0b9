"""Input too large or of the wrong kind is refused naming where, before PostgreSQL or numpy
refuse it in their own words: a 1 MB dataset or model name (a B-tree entry holds about 2,700
bytes: "index row requires 11464 bytes" named no file, row or column), a key name of that size,
and a ``.npy`` file that is not one (numpy calls it "pickled (object) data")."""

from __future__ import annotations

import io

import numpy as np
import pytest
from avengers_store.cli.testing import run_process

from avengers_store.arguments import MAX_NAME_LENGTH
from avengers_store.calibration.query_vectors import import_npy
from avengers_store.errors import InputError
from avengers_store.gateway import keys
from avengers_store.ingest.datasets import add_dataset
from avengers_store.ingest.model_pool import add_model
from avengers_store.ingest.outcomes import import_outcomes
from avengers_store.ingest.wide_tables import load_table
from avengers_store.testing import table_counts, write_rows

pytestmark = pytest.mark.timeout(120)

HUGE = "n" * 1_000_000


def good_rows(n: int = 3) -> list[dict]:
    return [
        {"bench": "alpha", "question": f"question {i}?", "split": "train", "acc|m1": 1.0}
        for i in range(n)
    ]


def refused(call, location: str) -> InputError:
    with pytest.raises(InputError) as caught:
        call()
    assert caught.value.location is not None and location in caught.value.location
    assert "index row" not in str(caught.value)
    assert len(str(caught.value)) < 2_000  # the name is not quoted whole
    return caught.value


def test_a_1mb_dataset_name_in_a_wide_table_names_the_row_and_column(db_url, tmp_path):
    rows = good_rows()
    rows[1]["bench"] = HUGE
    path = write_rows(tmp_path / "wide.jsonl", rows)
    before = table_counts(db_url)
    error = refused(
        lambda: load_table(
            path, dataset_col="bench", text_col="question", outcome_prefix="acc|", url=db_url
        ),
        f"{path} data row 2 column 'bench'",
    )
    assert f"at most {MAX_NAME_LENGTH} characters" in str(error)
    assert table_counts(db_url) == before


def test_a_1mb_model_name_as_an_outcome_column_names_the_column(db_url, tmp_path):
    rows = good_rows()
    for row in rows:
        row["acc|" + HUGE] = 0.5
    path = write_rows(tmp_path / "wide.jsonl", rows)
    before = table_counts(db_url)
    refused(
        lambda: load_table(
            path, dataset_col="bench", text_col="question", outcome_prefix="acc|", url=db_url
        ),
        f"{path} column 'acc|nnnn",
    )
    assert table_counts(db_url) == before


def test_a_1mb_model_name_in_a_long_outcomes_file_names_the_row(db_url, tmp_path):
    add_dataset(
        "beta", write_rows(tmp_path / "q.jsonl", good_rows()), text_col="question", url=db_url
    )
    rows = [{"text": "question 0?", "model": m, "score": 1.0} for m in ("ok", HUGE)]
    path = write_rows(tmp_path / "long.jsonl", rows)
    refused(
        lambda: import_outcomes(
            path, dataset="beta", text_col="text", create_models=True, url=db_url
        ),
        f"{path} data row 2 column 'model'",
    )


@pytest.mark.parametrize("kind", ["model", "dataset", "key"])
def test_a_1mb_name_given_as_an_argument_names_it(db_url, tmp_path, kind):
    calls = {
        "model": lambda: add_model(HUGE, url=db_url),
        "dataset": lambda: add_dataset(
            HUGE, write_rows(tmp_path / "q.jsonl", good_rows()), text_col="question", url=db_url
        ),
        "key": lambda: keys.create_key(HUGE, url=db_url),
    }
    refused(calls[kind], "name")


def test_the_cli_says_it_in_one_line(cli_env):
    # 100,000 characters: one command-line argument may not be longer than 128 KiB.
    result = run_process("models", "add", "m" * 100_000)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "at most 256 characters" in result.stderr and len(result.stderr) < 2_000


def npy_bytes(matrix: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, matrix)
    return out.getvalue()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"this is not an array at all", "not a .npy file"),
        (bytes(range(256)), "not a .npy file"),
        (b"", "empty"),
        (b"PK\x03\x04 a zip", "a .npz archive"),
        (npy_bytes(np.ones((4, 8), dtype=np.float32))[:-7], "shorter than its header says"),
        (b"\x93NUMPY\x01\x00\x10\x00{garbage}      \n", "its header cannot be read"),
    ],
    ids=["text", "random-bytes", "empty", "npz", "cut-off", "bad-header"],
)
def test_a_npy_that_is_not_one_says_what_it_is(db_url, tmp_path, content, says):
    npy = tmp_path / "vectors.npy"
    npy.write_bytes(content)
    with pytest.raises(InputError) as caught:
        import_npy(npy, tmp_path / "source.parquet", url=db_url)
    assert says in str(caught.value) and caught.value.location == str(npy)
    assert "pickled" not in str(caught.value)
