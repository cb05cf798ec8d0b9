"""Database errors become the library's errors by SQLSTATE and constraint name."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from avengers_store import routing
from avengers_store.calibration import clusterings
from avengers_store.calibration.reclustering import recluster
from avengers_store.errors import InputError, NotFound, StoreStateError
from avengers_store.store import connections, driver_errors
from avengers_store.testing import seed_store

SQL = Path(__file__).resolve().parents[2] / "sql"


@pytest.fixture(scope="module")
def store(db_url):
    with connections.connect(db_url) as c:
        seed_store(c)
        c.commit()
    recluster(k=4, seed=1, url=db_url)


def _cause(excinfo) -> psycopg.Error:
    cause = excinfo.value.__cause__
    assert isinstance(cause, psycopg.Error)
    return cause


def test_the_store_raises_its_own_sqlstates(store, conn):
    with pytest.raises(NotFound, match="clustering 999999 does not exist") as missing:
        clusterings.activate_clustering(999999, conn=conn)
    assert _cause(missing).sqlstate == driver_errors.NOT_FOUND
    space = conn.execute("SELECT space_id FROM avengers.clusterings LIMIT 1").fetchone()[0]
    building = conn.execute(
        "INSERT INTO avengers.clusterings (space_id, algorithm, k) VALUES (%s, 'kmeans', 2) "
        "RETURNING id",
        (space,),
    ).fetchone()[0]
    with pytest.raises(StoreStateError, match="only a ready clustering") as state:
        clusterings.activate_clustering(building, conn=conn)
    assert _cause(state).sqlstate == driver_errors.WRONG_STATE
    with pytest.raises(InputError, match="does not have the .* dimensions of clustering") as wrong:
        routing.decide(conn, [[1.0, 0.0]], routing.Policy())
    assert wrong.value.location == "query vector"
    assert _cause(wrong).sqlstate == driver_errors.INVALID_INPUT


def test_constraints_are_named_in_the_stores_terms(store, conn):
    query = conn.execute("SELECT min(id) FROM avengers.queries").fetchone()[0]
    outcome = "INSERT INTO avengers.outcomes (query_id, model_id, score) VALUES (%s, -1, 1)"
    with (
        pytest.raises(InputError, match="names a model that is not in the pool") as fk,
        driver_errors.translated(),
        conn.transaction(),
    ):
        conn.execute(outcome, (query,))
    assert isinstance(_cause(fk), psycopg.errors.ForeignKeyViolation)
    conn.execute(
        "INSERT INTO avengers.clusterings (space_id, algorithm, k, status) "
        "SELECT space_id, 'kmeans', 2, 'ready' FROM avengers.clusterings LIMIT 1"
    )
    with (
        pytest.raises(StoreStateError, match="another clustering is active"),
        driver_errors.translated(),
        conn.transaction(),
    ):
        conn.execute("UPDATE avengers.clusterings SET status = 'active'")
    # A constraint the store has no words for still says which one, as an input error.
    with (
        pytest.raises(InputError, match="cost_in_per_m_check") as check,
        driver_errors.translated(location="cost"),
        conn.transaction(),
    ):
        conn.execute("INSERT INTO avengers.models (name, cost_in_per_m) VALUES ('x', -1)")
    assert check.value.location == "cost"


def test_errors_without_a_library_meaning_pass_through(conn):
    @driver_errors.translated()
    def broken() -> None:
        conn.execute("SELEC 1")

    with pytest.raises(psycopg.errors.SyntaxError), conn.transaction():
        broken()


def test_every_raise_in_sql_carries_a_mapped_and_documented_sqlstate():
    readme = (SQL / "README.md").read_text(encoding="utf-8")
    raises = 0
    for path in SQL.glob("*.sql"):
        # A statement ends at a semicolon closing a line (messages may hold one).
        for statement in re.findall(r"RAISE EXCEPTION.*?;\s*\n", path.read_text(), flags=re.S):
            raises += 1
            code = re.search(r"ERRCODE = '(\w{5})'", statement)
            assert code, f"{path.name}: {statement[:60]!r} has no ERRCODE"
            assert code[1] in (driver_errors.NOT_FOUND, driver_errors.WRONG_STATE,
                               driver_errors.INVALID_INPUT)  # fmt: skip
            assert f"`{code[1]}`" in readme
    assert raises >= 3
