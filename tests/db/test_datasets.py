"""Loading datasets from JSONL / CSV / Parquet into a real PostgreSQL: merges, splits, bad rows."""

from __future__ import annotations

import json
import random

import psycopg
import pytest
from avengers_store.cli.main import cli
from click.testing import CliRunner

from avengers_store.errors import InputError, NotFound
from avengers_store.ingest import datasets
from avengers_store.ingest.outcomes import import_outcomes
from avengers_store.ingest.readers import read_table
from avengers_store.ingest.text_identity import content_hash
from avengers_store.testing import table_counts, write_rows

TABLES = ("datasets", "queries", "outcomes", "models")


def queries_of(url: str, name: str) -> list[tuple]:
    with psycopg.connect(url) as c:
        return c.execute(
            """SELECT q.external_id, q.text, q.split, q.task_type, q.reference_answer, q.metadata
               FROM avengers.queries q JOIN avengers.datasets d ON d.id = q.dataset_id
               WHERE d.name = %s ORDER BY (q.metadata ->> 'source_row')::int""",
            (name,),
        ).fetchall()


ROWS = [
    {"id": "a1", "question": "What is 2+2?", "gold": "4", "split": "train"},
    {"id": "a2", "question": "Name a prime.", "gold": "2", "split": "test"},
    {"id": "a3", "question": "  What is   2+2? ", "gold": "4", "split": "test"},
    {"id": "a4", "question": "Capital of Peru?", "gold": "Lima", "split": "dev"},
    {"id": "a5", "question": "Name  a prime. ", "gold": "3", "split": "test"},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_each_format_loads_with_merged_duplicates(db_url, tmp_path, suffix):
    path = write_rows(tmp_path / f"rows{suffix}", ROWS)
    name = f"fmt{suffix[1:]}"
    report = datasets.add_dataset(
        name,
        path,
        text_col="question",
        id_col="id",
        answer_col="gold",
        task_type="mc",
        split_col="split",
        split_map={"train": "calibration", "test": "test", "dev": "skip"},
        url=db_url,
    )
    d = report.dataset
    assert (d.rows, d.queries, d.calibration, d.test) == (4, 3, 1, 2)
    assert (d.merged_rows, d.in_both_splits) == (1, 1)
    assert report.rows_skipped == {"split=dev": 1}
    rows = queries_of(db_url, name)
    assert [(r[0], r[2]) for r in rows] == [("a1", "calibration"), ("a2", "test"), ("a3", "test")]
    # A text in both splits is a query in each, with its own row's text, id and answer.
    assert rows[0][1] == "What is 2+2?" and rows[2][1] == "  What is   2+2? "
    assert rows[0][3] == rows[2][3] == "multiple_choice"
    assert rows[0][5] == {"source_file": str(path.resolve()), "source_row": 0}
    assert rows[2][5] == {"source_file": str(path.resolve()), "source_row": 2}
    # Within one split, the merged query keeps its first row's text, id and answer; the other
    # row is listed.
    assert (rows[1][1], rows[1][4]) == ("Name a prime.", "2")
    assert rows[1][5] == {
        "source_file": str(path.resolve()),
        "source_row": 1,
        "merged_rows": [4],
        "merged_external_ids": ["a5"],
    }
    ds = datasets.get_dataset(name, url=db_url)
    assert ds.metadata["source_file"] == str(path.resolve())
    assert ds.metadata["source_file_rows"] == 5
    assert ds.split_seed is None and ds.calibration_fraction is None


def test_outcomes_of_a_text_in_both_splits_go_to_both_queries(db_url, tmp_path):
    path = write_rows(tmp_path / "both.jsonl", ROWS)
    datasets.add_dataset(
        "both", path, text_col="question", id_col="id", split_col="split",
        split_map={"train": "calibration", "test": "test", "dev": "skip"}, url=db_url,
    )  # fmt: skip
    scores = write_rows(
        tmp_path / "scores.csv",
        [
            {"question": "What is 2+2?", "model": "m", "score": "1"},
            {"question": "Name a prime.", "model": "m", "score": "0"},
        ],
    )
    report = import_outcomes(scores, dataset="both", create_models=True, url=db_url)
    assert report.outcomes_written == 3
    with psycopg.connect(db_url) as c:
        got = c.execute(
            """SELECT q.split, q.external_id, o.score FROM avengers.outcomes o
               JOIN avengers.queries q ON q.id = o.query_id
               JOIN avengers.datasets d ON d.id = q.dataset_id WHERE d.name = 'both'
               ORDER BY q.id"""
        ).fetchall()
    assert got == [("calibration", "a1", 1.0), ("test", "a2", 0.0), ("test", "a3", 1.0)]


def test_readers_agree_and_keep_row_order(tmp_path):
    rows = [{"t": f"text {i}", "x": i / 10} for i in range(50)]
    tables = [
        read_table(write_rows(tmp_path / f"r{s}", rows)) for s in (".jsonl", ".csv", ".parquet")
    ]
    for table in tables:
        assert table.texts("t") == [r["t"] for r in rows]
        assert table.numbers("x").tolist() == [r["x"] for r in rows]


def _texts(n: int) -> list[str]:
    return [f"question number {i}" for i in range(n)]


def test_seeded_split_is_reproducible_and_recorded(db_url, tmp_path):
    texts = _texts(40)
    shuffled = texts[:]
    random.Random(3).shuffle(shuffled)
    a = write_rows(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    b = write_rows(tmp_path / "b.csv", [{"text": t} for t in shuffled])
    ra = datasets.add_dataset("seeded_a", a, calibration_fraction=0.7, seed=7, url=db_url)
    rb = datasets.add_dataset("seeded_b", b, calibration_fraction=0.7, seed=7, url=db_url)
    rc = datasets.add_dataset("seeded_c", a, calibration_fraction=0.7, seed=8, url=db_url)
    assert ra.dataset.calibration == rb.dataset.calibration == 28
    split_a = {r[1]: r[2] for r in queries_of(db_url, "seeded_a")}
    split_b = {r[1]: r[2] for r in queries_of(db_url, "seeded_b")}
    split_c = {r[1]: r[2] for r in queries_of(db_url, "seeded_c")}
    assert split_a == split_b  # file order does not matter, only seed and texts
    assert split_a != split_c
    assert rc.dataset.calibration == 28
    ds = datasets.get_dataset("seeded_a", url=db_url)
    assert (ds.split_seed, ds.calibration_fraction) == (7, 0.7)
    # The library function itself: same hashes, same seed -> same split.
    hashes = [content_hash(t) for t in texts]
    assert datasets.seeded_split(hashes, 0.7, 7) == datasets.seeded_split(hashes, 0.7, 7)


def test_bad_row_names_file_row_column_and_changes_nothing(db_url, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"text": "fine one"}\n{"text": "fine two"}\n{"text": null}\n{"text": "fine four"}\n'
    )
    before = table_counts(db_url)
    with pytest.raises(InputError) as err:
        datasets.add_dataset("bad", path, url=db_url)
    assert str(path.resolve()) in str(err.value)
    assert "data row 3" in str(err.value) and "'text'" in str(err.value)
    assert table_counts(db_url) == before
    with pytest.raises(NotFound):
        datasets.get_dataset("bad", url=db_url)


def test_wrong_type_in_jsonl_is_named(db_url, tmp_path):
    path = tmp_path / "typed.jsonl"
    path.write_text('{"q": "a text"}\n{"q": 17}\n')
    before = table_counts(db_url)
    with pytest.raises(InputError, match=r"data row 2 column 'q': expected text, found int 17"):
        datasets.add_dataset("typed", path, text_col="q", url=db_url)
    assert table_counts(db_url) == before


def test_unmapped_split_value_is_named(db_url, tmp_path):
    path = write_rows(tmp_path / "s.csv", [{"text": "x", "s": "train"}, {"text": "y", "s": "val"}])
    with pytest.raises(InputError, match=r"data row 2 column 's': split value 'val'"):
        datasets.add_dataset("splitty", path, split_col="s", url=db_url)


def test_file_errors(db_url, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        datasets.add_dataset("nofile", tmp_path / "missing.csv", url=db_url)
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(InputError, match="extension"):
        datasets.add_dataset("odd", odd, url=db_url)
    path = write_rows(tmp_path / "cols.csv", [{"question": "x"}])
    with pytest.raises(InputError, match="no column 'text'; the file has: 'question'"):
        datasets.add_dataset("cols", path, url=db_url)
    with pytest.raises(InputError, match="task type"):
        datasets.add_dataset("cols", path, text_col="question", task_type="essay", url=db_url)


def test_existing_dataset_needs_replace_and_remove_deletes(db_url, tmp_path, monkeypatch):
    path = write_rows(tmp_path / "r.jsonl", [{"text": t} for t in _texts(5)])
    datasets.add_dataset("again", path, url=db_url)
    with pytest.raises(InputError, match="already in the store.*pass `replace`"):
        datasets.add_dataset("again", path, url=db_url)
    # The CLI names the flag that fills the parameter.
    monkeypatch.setenv("AVENGERS_DATABASE_URL", db_url)
    refused = CliRunner().invoke(cli, ["datasets", "add", "again", str(path)])
    assert "pass `--replace` to reload" in str(refused.exception)
    path2 = write_rows(tmp_path / "r2.jsonl", [{"text": t} for t in _texts(8)])
    report = datasets.add_dataset("again", path2, replace=True, url=db_url)
    assert report.dataset.queries == 8
    assert datasets.remove_dataset("again", url=db_url) == 8
    assert "again" not in {d.name for d in datasets.list_datasets(url=db_url)}


def test_cli_add_list_remove(cli_env, tmp_path):
    path = write_rows(tmp_path / "c.csv", [{"q": t, "k": str(i)} for i, t in enumerate(_texts(10))])
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "datasets",
            "add",
            "clids",
            str(path),
            "--text-col",
            "q",
            "--id-col",
            "k",
            "--ood",
            "--category",
            "demo",
            "--seed",
            "1",
            "--calibration-fraction",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "10 queries (5 calibration, 5 test)" in result.output
    listed = runner.invoke(cli, ["datasets", "list", "--json"])
    row = next(d for d in json.loads(listed.output) if d["name"] == "clids")
    assert row["is_ood"] and row["category"] == "demo" and row["split_seed"] == 1
    # The singular group name of earlier releases still runs the same commands.
    assert runner.invoke(cli, ["dataset", "list", "--json"]).output == listed.output
    assert runner.invoke(cli, ["datasets", "remove", "clids", "--yes"]).exit_code == 0
    missing = runner.invoke(cli, ["dataset", "remove", "clids", "--yes"])
    assert isinstance(missing.exception, NotFound)
    for args in (["datasets", "add", "--help"], ["datasets", "list", "--help"]):
        assert "Example:" in runner.invoke(cli, args).output
