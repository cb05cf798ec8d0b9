"""``avengers feedback import`` and ``feedback add``: files in three formats, one transaction,
bad rows named by file, row and column, later rows of a route and source replacing earlier
ones."""

from __future__ import annotations

import json
import uuid

import numpy as np
import psycopg
import pytest
from avengers_store.cli.testing import run_cli, run_cli_error

from avengers_store.errors import InputError
from avengers_store.production.feedback import import_feedback
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model, write_rows


@pytest.fixture(scope="module")
def routes(db_url) -> dict[str, uuid.UUID]:
    """Committed route-log rows: two answered by alpha (bravo sampled too in the second), one
    route-only decision whose candidates are bravo then alpha."""
    with connections.connect(db_url) as conn:
        cid = add_clustering(conn, np.eye(2, 3, dtype=np.float32), embedder="import-space-3")
        for name in ("alpha", "bravo"):
            ensure_model(conn, name)
        add_profiles(conn, cid, {"alpha": [[1], [0]], "bravo": [[0], [1]]})
        activate(conn, cid)
        out = {}
        for key, cluster, models, strategy, meta in (
            ("one", 0, ["alpha"], "self-consistency", {}),
            ("two", 1, ["alpha", "bravo"], "model-switch", {}),
            ("decision", 1, [], "route", {"candidates": ["bravo", "alpha"]}),
        ):
            out[key] = uuid.uuid4()
            conn.execute(
                "INSERT INTO avengers.route_log (route_id, query_hash, clustering_id, cluster, "
                "models, strategy, answer_model, metadata) VALUES (%s, 'h', %s, %s, %s, %s, %s, %s)",
                (out[key], cid, cluster, models, strategy, models[0] if models else None,
                 json.dumps(meta)),
            )  # fmt: skip
        conn.commit()
    return out


def counts(url: str) -> dict[tuple[int, str], tuple[int, float]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT cluster, model, n, mean_score FROM avengers.production_profiles"
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def clear(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM avengers.feedback")
        conn.execute("CALL avengers.refresh_production()")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_import_stores_every_row_and_serves_them(db_url, routes, tmp_path, suffix, cli_env):
    clear(db_url)
    rows = [
        {"route_id": str(routes["one"]), "score": 1.0, "model": ""},
        {"route_id": str(routes["two"]), "score": 0.0, "model": "bravo"},
        {"route_id": str(routes["decision"]), "score": 1.0, "model": ""},
        {"route_id": str(routes["one"]), "score": 0.0, "model": ""},  # replaces row 1
    ]
    path = write_rows(tmp_path / f"thumbs{suffix}", rows)
    out = json.loads(run_cli("feedback", "import", str(path), "--json").stdout)
    assert (out["rows_read"], out["stored"], out["replaced"], out["duplicates_in_file"]) == (
        4,
        3,
        0,
        1,
    )
    # The decision's default model is its first candidate; alpha's row 1 was replaced by row 4.
    assert counts(db_url) == {(0, "alpha"): (1, 0.0), (1, "bravo"): (2, 0.5)}
    again = import_feedback(path, url=db_url)
    assert again.replaced == 3 and counts(db_url)[(1, "bravo")] == (2, 0.5)


@pytest.mark.parametrize(
    ("row", "column", "match"),
    [
        ({"score": 1.5}, "score", r"\[0, 1\]"),
        ({"score": None}, "score", "missing"),
        ({"route_id": "nope"}, "route_id", "not a route id"),
        ({"route_id": str(uuid.UUID(int=3))}, "route_id", "no request has route id"),
        ({"model": "charlie"}, "model", "sampled alpha, not charlie"),
    ],
)
def test_a_bad_row_names_file_row_and_column_and_stores_nothing(
    db_url, routes, tmp_path, row, column, match
):
    clear(db_url)
    good = {"route_id": str(routes["one"]), "score": 1.0, "model": None}
    path = write_rows(tmp_path / "bad.jsonl", [good, good | {"source": "b"}, good | row])
    with pytest.raises(InputError, match=match) as caught:
        import_feedback(path, url=db_url)
    assert caught.value.location == f"{path} data row 3 column {column!r}"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM avengers.feedback").fetchone()[0] == 0


def test_columns_and_source_by_option(db_url, routes, tmp_path):
    clear(db_url)
    path = write_rows(
        tmp_path / "graded.csv",
        [{"rid": str(routes["two"]), "correct": "1", "when": "2026-12-01T10:00:00+00:00"}],
    )
    report = import_feedback(
        path, route_id_col="rid", score_col="correct", at_col="when", source="grader", url=db_url
    )
    assert report.stored == 1
    with psycopg.connect(db_url) as conn:
        source, at = conn.execute("SELECT source, at::text FROM avengers.feedback").fetchone()
    assert source == "grader" and at.startswith("2026-12-01 10:00:00")
    with pytest.raises(InputError, match="no column 'nope'"):
        import_feedback(path, route_id_col="nope", url=db_url)


def test_cli_add_and_its_errors(db_url, routes, cli_env):
    clear(db_url)
    out = run_cli("feedback", "add", str(routes["two"]), "0.5", "--model", "bravo", "--json")
    assert json.loads(out.stdout)["model"] == "bravo"
    text = run_cli("feedback", "add", str(routes["two"]), "1", "--model", "bravo").stdout
    assert "replaced" in text
    error = run_cli_error("feedback", "add", str(routes["two"]), "2")
    assert isinstance(error, InputError) and error.location == "SCORE"
    error = run_cli_error("feedback", "add", "not-a-route", "1")
    assert isinstance(error, InputError) and error.location == "ROUTE_ID"
