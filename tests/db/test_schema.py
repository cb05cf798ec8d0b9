"""Migrations and sql/ definitions against a real PostgreSQL + pgvector."""

from __future__ import annotations

import re

import psycopg
import pytest

from avengers_store.errors import SchemaOutOfDate, StoreStateError
from avengers_store.store import schema


def test_template_is_at_head(conn):
    assert schema.current_revision(conn) == schema.head_revision()
    assert schema.applied_sql_hash(conn) == schema.sql_hash()
    schema.check_revision(conn)  # does not raise


def test_every_table_exists(conn):
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'avengers'").fetchall()
    assert set(schema.TABLES) <= {r[0] for r in rows}


def test_every_table_column_and_view_is_commented(conn):
    missing = conn.execute(
        """
        SELECT c.relname || coalesce('.' || a.attname, '')
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'avengers'
        LEFT JOIN pg_attribute a
          ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'm')
        WHERE c.relkind IN ('r', 'v', 'm')
          AND (obj_description(c.oid, 'pg_class') IS NULL
               OR (a.attname IS NOT NULL AND col_description(c.oid, a.attnum) IS NULL))
        """
    ).fetchall()
    assert missing == []


def test_every_function_procedure_and_type_is_commented(conn):
    missing = conn.execute(
        """
        SELECT p.oid::regprocedure::text FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'avengers'
        WHERE obj_description(p.oid, 'pg_proc') IS NULL
        UNION ALL
        SELECT t.typname || coalesce('.' || a.attname, '') FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace AND n.nspname = 'avengers'
        JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c'
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
        WHERE obj_description(t.oid, 'pg_type') IS NULL
           OR (a.attname IS NOT NULL AND col_description(c.oid, a.attnum) IS NULL)
        """
    ).fetchall()
    assert missing == []
    routines = conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'avengers'"
    ).fetchone()[0]
    assert routines > 10


def test_upgrade_twice_is_a_noop(db_url):
    result = schema.upgrade(db_url)
    assert not result.changed


def test_downgrade_to_base_and_back(db_url):
    assert schema.downgrade(db_url, "base") is None
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regnamespace('avengers')").fetchone()[0] is None
        with pytest.raises(SchemaOutOfDate, match="avengers db upgrade"):
            schema.check_revision(c)
    result = schema.upgrade(db_url)
    assert result.from_revision is None and result.to_revision == schema.head_revision()
    with psycopg.connect(db_url) as c:
        schema.check_revision(c)


def test_a_text_may_be_in_both_splits_and_downgrade_refuses_to_merge_it(db_url):
    def key_of(c):
        return c.execute(
            """SELECT pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint')
               FROM pg_constraint WHERE conrelid = 'avengers.queries'::regclass AND contype = 'u'"""
        ).fetchone()

    with psycopg.connect(db_url) as c:
        assert key_of(c)[0] == "UNIQUE (dataset_id, split, content_hash) DEFERRABLE"
        assert "one query in each" in key_of(c)[1]
        ds = c.execute(
            "INSERT INTO avengers.datasets (name) VALUES ('shared') RETURNING id"
        ).fetchone()[0]
        for split in ("calibration", "test"):
            c.execute(
                "INSERT INTO avengers.queries (dataset_id, text, split, content_hash) "
                "VALUES (%s, 'same text', %s, %s)",
                (ds, split, "ab" * 32),
            )
        c.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute(
                "INSERT INTO avengers.queries (dataset_id, text, split, content_hash) "
                "VALUES (%s, 'same text', 'test', %s)",
                (ds, "ab" * 32),
            )
        c.rollback()
    with pytest.raises(StoreStateError, match=r"below 0003: .*: shared \(1\)"):
        schema.downgrade(db_url, "0001")
    with psycopg.connect(db_url) as c:
        assert schema.current_revision(c) == schema.head_revision()  # nothing changed
        c.execute("DELETE FROM avengers.queries WHERE split = 'test' AND text = 'same text'")
        c.commit()
    assert schema.downgrade(db_url, "0001") == "0001"
    with psycopg.connect(db_url) as c:
        assert key_of(c)[0] == "UNIQUE (dataset_id, content_hash)"
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute(
                "INSERT INTO avengers.queries (dataset_id, text, split, content_hash) "
                "SELECT dataset_id, text, 'test', content_hash FROM avengers.queries"
            )
    assert schema.upgrade(db_url).to_revision == schema.head_revision()
    with psycopg.connect(db_url) as c:
        assert key_of(c)[0] == "UNIQUE (dataset_id, split, content_hash) DEFERRABLE"
        c.execute("DELETE FROM avengers.datasets WHERE name = 'shared'")
        c.commit()
        schema.check_revision(c)


def test_stale_sql_definitions_are_reported(db_url):
    with psycopg.connect(db_url) as c:
        c.execute("UPDATE avengers.meta SET value = 'stale' WHERE key = %s", (schema.SQL_HASH_KEY,))
        c.commit()
        with pytest.raises(SchemaOutOfDate, match="avengers db upgrade"):
            schema.check_revision(c)
    assert schema.upgrade(db_url).sql_reapplied
    with psycopg.connect(db_url) as c:
        schema.check_revision(c)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO avengers.models (name, cost_in_per_m) VALUES ('m', -1)",
        "INSERT INTO avengers.models (name) VALUES ('  ')",
        "INSERT INTO avengers.datasets (name, calibration_fraction) VALUES ('d', 1.5)",
    ],
)
def test_check_constraints_reject_bad_rows(conn, statement):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(statement)


def test_outcome_score_must_be_in_unit_interval(conn):
    m = conn.execute("INSERT INTO avengers.models (name) VALUES ('m1') RETURNING id").fetchone()[0]
    d = conn.execute("INSERT INTO avengers.datasets (name) VALUES ('d1') RETURNING id").fetchone()[
        0
    ]
    q = conn.execute(
        "INSERT INTO avengers.queries (dataset_id, text, split, content_hash) "
        "VALUES (%s, 'q', 'calibration', repeat('a', 64)) RETURNING id",
        (d,),
    ).fetchone()[0]
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO avengers.outcomes (query_id, model_id, score) VALUES (%s, %s, 1.5)", (q, m)
        )


def test_only_one_active_clustering(conn):
    space = conn.execute(
        "INSERT INTO avengers.embedding_spaces (embedder, dimension, active) VALUES ('e', 3, true) RETURNING id"
    ).fetchone()[0]
    for _ in range(2):
        conn.execute(
            "INSERT INTO avengers.clusterings (space_id, algorithm, k, status) VALUES (%s, 'kmeans', 2, 'ready')",
            (space,),
        )
    conn.execute(
        "UPDATE avengers.clusterings SET status = 'active' WHERE id = (SELECT min(id) FROM avengers.clusterings)"
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE avengers.clusterings SET status = 'active'")


def test_a_comment_only_edit_is_not_a_schema_change(db_url, monkeypatch):
    installed = schema.sql_files()
    edited = [
        (
            name,
            "-- a new comment\n"
            + re.sub(r"(COMMENT ON VIEW avengers\.cluster_ranks IS\s*')", r"\1Reworded: ", text),
        )
        for name, text in installed
    ]
    assert any("Reworded: " in text for _, text in edited)
    monkeypatch.setattr(schema, "sql_files", lambda: edited)
    with psycopg.connect(db_url) as c:
        schema.check_revision(c)  # clients keep working
        assert schema.sql_stale(c)
    # ... and `db upgrade` applies the new comment.
    assert schema.upgrade(db_url).sql_reapplied
    with psycopg.connect(db_url) as c:
        comment = c.execute("SELECT obj_description('avengers.cluster_ranks'::regclass)")
        assert comment.fetchone()[0].startswith("Reworded: ")
        schema.check_revision(c)
    # A new definition is a schema change.
    added = "CREATE VIEW avengers.one AS SELECT 1 AS one;\nCOMMENT ON VIEW avengers.one IS 'One.';"
    monkeypatch.setattr(schema, "sql_files", lambda: [*installed, ("999_more.sql", added)])
    with psycopg.connect(db_url) as c, pytest.raises(SchemaOutOfDate, match="sql/"):
        schema.check_revision(c)
    monkeypatch.undo()
    assert schema.upgrade(db_url).sql_reapplied
    with psycopg.connect(db_url) as c:
        schema.check_revision(c)


def test_gateway_revision_downgrades_and_upgrades(db_url):
    assert schema.downgrade(db_url, "0001") == "0001"
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regclass('avengers.api_keys')").fetchone()[0] is None
        columns = {
            r[0]
            for r in c.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'avengers' AND table_name = 'route_log'"
            )
        }
        assert "route_id" not in columns and "api_key_id" not in columns
    assert schema.upgrade(db_url).to_revision == schema.head_revision()
    with psycopg.connect(db_url) as c:
        schema.check_revision(c)
        assert c.execute("SELECT to_regclass('avengers.gateway_sessions')").fetchone()[0]


def _columns(conn: psycopg.Connection, table: str) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'avengers' AND table_name = %s",
            (table,),
        )
    }


def test_loop_revision_downgrades_and_upgrades(db_url):
    # Below 0004 this library's definitions (which read the feedback tables) do not fit: the
    # downgrade leaves them out, and the next upgrade re-creates them.
    assert schema.downgrade(db_url, "0003") == "0003"
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regclass('avengers.feedback')").fetchone()[0] is None
        assert c.execute("SELECT to_regclass('avengers.cluster_profiles')").fetchone()[0] is None
        assert "novelty" not in _columns(c, "route_log")
        assert "production_weight" not in _columns(c, "clusterings")
        assert schema.applied_sql_hash(c) is None
        with pytest.raises(SchemaOutOfDate, match="behind"):
            schema.check_revision(c)
    assert schema.upgrade(db_url).sql_reapplied
    with psycopg.connect(db_url) as c:
        schema.check_revision(c)
        assert c.execute("SELECT to_regclass('avengers.production_stats')").fetchone()[0]
        assert {"ood", "novelty", "explored"} <= _columns(c, "route_log")


def test_a_downgrade_that_would_lose_an_analysts_view_changes_nothing(db_url):
    with psycopg.connect(db_url) as c:
        c.execute(
            "CREATE VIEW public.my_ranks AS SELECT cluster, model FROM avengers.cluster_ranks"
        )
    try:
        with pytest.raises(StoreStateError, match="public.my_ranks"):
            schema.downgrade(db_url, "0002")
        with psycopg.connect(db_url) as c:
            assert schema.current_revision(c) == schema.head_revision()
            assert c.execute("SELECT to_regclass('public.my_ranks')").fetchone()[0]
    finally:
        with psycopg.connect(db_url) as c:
            c.execute("DROP VIEW IF EXISTS public.my_ranks")
