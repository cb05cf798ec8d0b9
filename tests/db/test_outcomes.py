"""Outcome imports (long and wide) and the bulk upsert, against a real PostgreSQL."""

from __future__ import annotations

import math

import pytest
from avengers_store.cli.main import cli
from click.testing import CliRunner

from avengers_store.errors import InputError, NotFound
from avengers_store.ingest import datasets, model_pool
from avengers_store.ingest.outcomes import OutcomeRow, import_outcomes, upsert_outcomes
from avengers_store.store import connections
from avengers_store.testing import table_counts, write_rows

TEXTS = ["What is 2+2?", "Name a prime.", "Capital of Peru?", "Largest planet?"]


@pytest.fixture(scope="module")
def store(db_url, tmp_path_factory):
    """Dataset 'qs' (ids q0..q3) and models m1, m2."""
    path = tmp_path_factory.mktemp("qs") / "qs.jsonl"
    write_rows(path, [{"id": f"q{i}", "text": t} for i, t in enumerate(TEXTS)])
    datasets.add_dataset("qs", path, id_col="id", url=db_url)
    for name in ("m1", "m2"):
        model_pool.add_model(name, url=db_url)
    return db_url


def outcomes_of(url: str) -> dict[tuple[str, str], tuple]:
    with connections.connect(url) as c:
        rows = c.execute(
            """SELECT q.external_id, m.name, o.score, o.samples, o.answer, o.tokens_in, o.cost
               FROM avengers.outcomes o JOIN avengers.queries q ON q.id = o.query_id
               JOIN avengers.models m ON m.id = o.model_id"""
        ).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def test_long_import_by_text_and_nan_is_not_zero(store, tmp_path):
    path = write_rows(
        tmp_path / "long.csv",
        [
            {
                "text": TEXTS[0],
                "model": "m1",
                "score": "1",
                "answer": "4",
                "tokens_in": "12",
                "cost": "0.5",
            },
            {
                "text": " What is  2+2? ",
                "model": "m2",
                "score": "0.25",
                "answer": "",
                "tokens_in": "",
                "cost": "",
            },
            {
                "text": TEXTS[1],
                "model": "m1",
                "score": "",
                "answer": "",
                "tokens_in": "",
                "cost": "",
            },
            {
                "text": TEXTS[2],
                "model": "m1",
                "score": "NaN",
                "answer": "",
                "tokens_in": "",
                "cost": "",
            },
        ],
    )
    report = import_outcomes(path, dataset="qs", url=store)
    assert (report.shape, report.outcomes_written, report.not_evaluated) == ("long", 2, 2)
    got = outcomes_of(store)
    assert got[("q0", "m1")] == (1.0, 1, "4", 12, 0.5)
    assert got[("q0", "m2")][0] == 0.25
    assert ("q1", "m1") not in got and ("q2", "m1") not in got  # not evaluated, not 0


def test_wide_import_by_id_and_reimport_upserts(store, tmp_path):
    rows = [
        {"qid": "q1", "acc|m1": 0.0, "acc|m2": 1.0, "other": 5.0},
        {"qid": "q3", "acc|m1": float("nan"), "acc|m2": 0.5, "other": 7.0},
    ]
    path = write_rows(tmp_path / "wide.parquet", rows)
    report = import_outcomes(path, dataset="qs", wide_prefix="acc|", id_col="qid", url=store)
    assert report.models == ("m1", "m2") and report.outcomes_written == 3
    assert report.not_evaluated == 1
    before = table_counts(store)
    rows[0]["acc|m2"] = 0.0
    write_rows(path, rows)
    import_outcomes(path, dataset="qs", wide_prefix="acc|", id_col="qid", url=store)
    assert table_counts(store) == before  # replaced, not added
    got = outcomes_of(store)
    assert got[("q1", "m2")][0] == 0.0 and got[("q1", "m1")][0] == 0.0
    assert ("q3", "m1") not in got


def test_out_of_range_score_names_row_and_column_and_changes_nothing(store, tmp_path):
    path = write_rows(
        tmp_path / "range.jsonl",
        [
            {"text": TEXTS[3], "model": "m1", "score": 1},
            {"text": TEXTS[3], "model": "m2", "score": 1.5},
        ],
    )
    before, before_rows = table_counts(store), outcomes_of(store)
    with pytest.raises(
        InputError, match=r"data row 2 column 'score': score 1.5 is outside \[0, 1\]"
    ):
        import_outcomes(path, dataset="qs", url=store)
    assert table_counts(store) == before and outcomes_of(store) == before_rows


def test_unknown_queries_and_models_are_listed(store, tmp_path):
    rows = [{"text": f"never loaded {i}", "model": "m1", "score": 1} for i in range(7)]
    path = write_rows(tmp_path / "unknown.jsonl", rows)
    with pytest.raises(
        InputError, match=r"7 row\(s\) name a query.*data row 1: 'never loaded 0'.*\.\.\."
    ):
        import_outcomes(path, dataset="qs", url=store)
    path = write_rows(
        tmp_path / "newmodel.jsonl",
        [
            {"text": TEXTS[3], "model": "m9", "score": 1},
            {"text": TEXTS[2], "model": "m8", "score": 0},
        ],
    )
    before = table_counts(store)
    with pytest.raises(NotFound, match=r"2 unknown model\(s\): 'm9', 'm8'.*`create_models`"):
        import_outcomes(path, dataset="qs", url=store)
    assert table_counts(store) == before
    report = import_outcomes(path, dataset="qs", create_models=True, url=store)
    assert set(report.models_created) == {"m8", "m9"}
    with pytest.raises(NotFound, match="no dataset 'nope'"):
        import_outcomes(path, dataset="nope", url=store)


def test_upsert_pools_duplicates_inside_the_callers_transaction(store):
    with connections.connect(store) as c:
        qid = c.execute("SELECT id FROM avengers.queries WHERE external_id = 'q2'").fetchone()[0]
        mid = model_pool.get_model("m2", conn=c).id
        written = upsert_outcomes(
            c,
            [
                OutcomeRow(qid, mid, 1.0, samples=3, tokens_out=10, source="t"),
                OutcomeRow(qid, mid, 0.0, samples=1, tokens_out=5, answer="x\ty\nz", source="t"),
            ],
        )
        assert written == 1
        score, samples, tokens, answer = c.execute(
            "SELECT score, samples, tokens_out, answer FROM avengers.outcomes "
            "WHERE query_id = %s AND model_id = %s",
            (qid, mid),
        ).fetchone()
        assert math.isclose(score, 0.75) and samples == 4 and tokens == 15
        assert answer == "x\ty\nz"
        with pytest.raises(InputError, match="score must be in"):
            upsert_outcomes(c, [OutcomeRow(qid, mid, float("nan"))])
        c.rollback()
    assert ("q2", "m2") not in outcomes_of(store)


def test_cli_import(cli_env, store, tmp_path):
    path = write_rows(tmp_path / "cli.jsonl", [{"query_id": "q2", "model": "m1", "score": 0.5}])
    result = CliRunner().invoke(cli, ["outcomes", "import", str(path), "--dataset", "qs", "--json"])
    assert result.exit_code == 0, result.output
    assert '"outcomes_written": 1' in result.output
    assert outcomes_of(store)[("q2", "m1")][0] == 0.5
    assert "Example:" in CliRunner().invoke(cli, ["outcomes", "import", "--help"]).output
