"""``avengers db grant-analyst``: an analyst role reads the store and routes, and can do nothing
else; its grants survive a definition upgrade."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest
from avengers_store.cli.testing import run_cli, run_cli_error
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from avengers_store.errors import InputError
from avengers_store.store import analyst, connections, schema
from avengers_store.testing import add_scripted_store


@pytest.fixture(scope="module")
def served(db_url) -> str:
    with connections.connect(db_url) as conn:
        add_scripted_store(conn, "http://127.0.0.1:9/v1")
        conn.execute(
            "INSERT INTO avengers.api_keys (name, key_hash, prefix) VALUES ('ops', %s, 'av-')",
            ("ab" * 32,),
        )
        conn.commit()
    return db_url


@pytest.fixture
def role(pg_admin_url, served):
    """A login role of its own (roles belong to the whole server), dropped afterwards."""
    name = f"analyst_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(served, autocommit=True) as c:
        c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(url: str, role: str) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(url, user=role), autocommit=True)


def test_every_relation_of_the_schema_is_either_for_analysts_or_private(served):
    with psycopg.connect(served) as c:
        found = {
            row[0]
            for row in c.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'avengers'::regnamespace "
                "AND relkind IN ('r', 'v', 'm', 'p')"
            )
        }
    assert found == set(analyst.ANALYST_RELATIONS) | set(analyst.PRIVATE_RELATIONS)
    assert not set(analyst.ANALYST_RELATIONS) & set(analyst.PRIVATE_RELATIONS)


def test_the_analyst_reads_and_routes_but_cannot_write_or_see_keys(served, role):
    granted = analyst.grant_analyst(role, url=served)
    assert "api_keys" not in granted.relations and "cluster_profiles" in granted.relations
    assert granted.functions and all(".route" in f for f in granted.functions)
    with as_role(served, role) as c:
        assert c.execute("SELECT count(*) FROM avengers.cluster_profiles").fetchone()[0] > 0
        ranked = c.execute(
            "SELECT * FROM avengers.route((SELECT centroid FROM avengers.centroids LIMIT 1), 3)"
        ).fetchall()
        assert len(ranked) == 3
        for statement in (
            "INSERT INTO avengers.models (name) VALUES ('intruder')",
            "UPDATE avengers.models SET endpoint = NULL",
            "DELETE FROM avengers.route_log",
            "SELECT * FROM avengers.api_keys",
            "SELECT * FROM avengers.gateway_sessions",
            "CREATE TABLE avengers.mine (x int)",
            "TRUNCATE avengers.outcomes",
            "REFRESH MATERIALIZED VIEW avengers.cluster_profiles",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(statement)
    with psycopg.connect(served) as c:
        assert (
            c.execute("SELECT count(*) FROM avengers.models WHERE name = 'intruder'").fetchone()[0]
            == 0
        )


def test_grants_survive_a_definition_upgrade(served, role):
    analyst.grant_analyst(role, url=served)
    with psycopg.connect(served, autocommit=True) as c:
        c.execute("UPDATE avengers.meta SET value = 'old' WHERE key = %s", (schema.SQL_TEXT_KEY,))
    assert schema.upgrade(served).sql_reapplied
    with as_role(served, role) as c:
        assert c.execute("SELECT count(*) FROM avengers.cluster_ranks").fetchone()[0] > 0
        vector = np.ones(16, dtype=np.float32) / 4.0
        ranked = c.execute(
            "SELECT * FROM avengers.route(%s::vector, 2)", (str(vector.tolist()),)
        ).fetchall()
        assert len(ranked) == 2
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("INSERT INTO avengers.datasets (name) VALUES ('x')")


def test_an_unknown_role_is_named_and_nothing_is_granted(served):
    with pytest.raises(InputError) as caught:
        analyst.grant_analyst("nobody_here", url=served)
    assert caught.value.location == "role" and "nobody_here" in str(caught.value)
    assert "CREATE ROLE" in str(caught.value)


def test_cli_grant_analyst(served, role, monkeypatch):
    monkeypatch.setenv("AVENGERS_DATABASE_URL", served)
    out = run_cli("db", "grant-analyst", role).output
    granted, _, withheld = out.partition("Not granted:")
    assert role in granted and "cluster_profiles" in granted and "api_keys" not in granted
    assert "api_keys" in withheld
    assert "Example" in run_cli("db", "grant-analyst", "--help").output
    failed = run_cli_error("db", "grant-analyst", "'); DROP TABLE avengers.models; --")
    assert isinstance(failed, InputError) and "no role" in str(failed)
    with psycopg.connect(served) as c:
        assert c.execute("SELECT to_regclass('avengers.models')").fetchone()[0] is not None
