"""`db upgrade` re-creates the sql/ definitions and keeps what analysts built on them."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from psycopg import sql

from avengers_store.errors import StoreStateError
from avengers_store.store import schema

WILSON = "avengers.wilson_bound(double precision,integer,boolean)"


@pytest.fixture
def analyst(pg_admin_url, db_url):
    """A role of its own (roles belong to the whole server), dropped afterwards."""
    role = f"analyst_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    yield role
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(pg_admin_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _mark_definitions_changed(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE avengers.meta SET value = 'old' WHERE key = %s", (schema.SQL_TEXT_KEY,))


def _oid(c: psycopg.Connection, name: str) -> int:
    return c.execute("SELECT %s::regclass::oid", (name,)).fetchone()[0]


def _state(c: psycopg.Connection, role: str) -> dict:
    """Everything analysts built, as the catalog describes it."""
    views = c.execute(
        """SELECT n.nspname || '.' || c.relname, c.relkind, pg_get_userbyid(c.relowner),
                  pg_get_viewdef(c.oid), obj_description(c.oid, 'pg_class'),
                  array(SELECT col_description(c.oid, a.attnum) FROM pg_attribute a
                        WHERE a.attrelid = c.oid AND a.attnum > 0 ORDER BY a.attnum)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('v', 'm') AND c.relname LIKE 'my\\_%'
           ORDER BY 1"""
    ).fetchall()
    acl = c.execute(
        """SELECT x.oid::regclass::text, a.grantee::regrole::text, a.privilege_type
           FROM pg_class x CROSS JOIN LATERAL aclexplode(x.relacl) a
           WHERE x.relname IN ('cluster_profiles', 'my_view') AND a.grantee <> 0
           UNION ALL
           SELECT p.oid::regprocedure::text, a.grantee::regrole::text, a.privilege_type
           FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
           WHERE p.proname IN ('wilson_bound', 'route') AND a.grantee <> 0
           ORDER BY 1, 2, 3"""
    ).fetchall()
    return {
        "views": views,
        "acl": acl,
        "column": c.execute(
            "SELECT has_column_privilege(%s, 'public.my_best', 'model', 'SELECT'), "
            "has_column_privilege(%s, 'public.my_best', 'cluster', 'SELECT')",
            (role, role),
        ).fetchone(),
        "public_wilson": c.execute(
            "SELECT has_function_privilege('public', %s, 'EXECUTE')", (WILSON,)
        ).fetchone()[0],
        "indexes": c.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'my_snapshot'"
        ).fetchall(),
        "rows": c.execute(
            "SELECT (SELECT count(*) FROM public.my_view), (SELECT count(*) FROM public.my_best),"
            " (SELECT n FROM public.my_best_count), (SELECT count(*) FROM public.my_snapshot)"
        ).fetchone(),
    }


def test_analyst_views_and_grants_survive_a_definition_upgrade(db_url, analyst):
    role = sql.Identifier(analyst)
    with psycopg.connect(db_url, autocommit=True) as c:
        for statement in (
            "CREATE VIEW public.my_view AS SELECT * FROM avengers.cluster_profiles",
            "COMMENT ON VIEW public.my_view IS 'every served profile'",
            "CREATE VIEW public.my_best AS "
            "SELECT cluster, model FROM avengers.cluster_ranks WHERE rank = 1",
            "COMMENT ON COLUMN public.my_best.model IS 'the winner'",
            "CREATE VIEW public.my_best_count AS SELECT count(*) AS n FROM public.my_best",
            "CREATE VIEW avengers.my_ranks AS SELECT cluster, rank FROM avengers.cluster_ranks",
            "CREATE MATERIALIZED VIEW public.my_snapshot AS "
            "SELECT model, selection_score FROM avengers.model_selection_scores",
            "CREATE INDEX my_snapshot_model ON public.my_snapshot (model)",
        ):
            c.execute(statement)
        for statement in (
            "GRANT SELECT ON avengers.cluster_profiles TO {}",
            "GRANT SELECT ON public.my_view TO {}",
            "GRANT SELECT (model) ON public.my_best TO {}",
            "ALTER VIEW public.my_best_count OWNER TO {}",
            "GRANT EXECUTE ON FUNCTION avengers.route(vector, integer, double precision, "
            "double precision, integer) TO {}",
        ):
            c.execute(sql.SQL(statement).format(role))
        c.execute(f"REVOKE EXECUTE ON FUNCTION {WILSON} FROM PUBLIC")
        before = _state(c, analyst)
        profiles = _oid(c, "avengers.cluster_profiles")
    assert len(before["views"]) == 5 and before["column"] == (True, False)
    assert not before["public_wilson"]

    _mark_definitions_changed(db_url)
    assert schema.upgrade(db_url).sql_reapplied

    with psycopg.connect(db_url) as c:
        assert _oid(c, "avengers.cluster_profiles") != profiles  # re-created, not left alone
        assert _state(c, analyst) == before
        assert c.execute(
            "SELECT has_table_privilege(%s, 'avengers.cluster_profiles', 'SELECT')", (analyst,)
        ).fetchone()[0]
        schema.check_revision(c)
    # The analyst's view in the store's schema is the analyst's, not a definition to drop.
    assert schema.upgrade(db_url).changed is False
    _mark_definitions_changed(db_url)
    schema.upgrade(db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM avengers.my_ranks").fetchone()[0] >= 0
        for name in (
            "public.my_best_count",
            "public.my_best",
            "public.my_view",
            "avengers.my_ranks",
        ):
            c.execute(f"DROP VIEW {name}")
        c.execute("DROP MATERIALIZED VIEW public.my_snapshot")
        c.execute(f"GRANT EXECUTE ON FUNCTION {WILSON} TO PUBLIC")


def _without_wilson_high(files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    edited = [
        (
            name,
            re.sub(
                r"(CREATE VIEW avengers\.cluster_ranks AS.*?)(p\.)?wilson_high, ",
                r"\1",
                text,
                flags=re.S,
            ),
        )  # fmt: skip
        for name, text in files
    ]
    assert edited != files
    return edited


def test_an_incompatible_view_makes_the_upgrade_refuse_and_change_nothing(db_url, monkeypatch):
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(
            "CREATE VIEW public.bounds AS SELECT cluster, model, wilson_high "
            "FROM avengers.cluster_ranks"
        )
        c.execute("CREATE VIEW public.on_bounds AS SELECT count(*) AS n FROM public.bounds")
        meta = c.execute("SELECT key, value FROM avengers.meta ORDER BY key").fetchall()
        oids = [_oid(c, n) for n in ("avengers.cluster_ranks", "public.bounds", "public.on_bounds")]
    edited = _without_wilson_high(schema.sql_files())
    monkeypatch.setattr(schema, "sql_files", lambda: edited)
    with pytest.raises(StoreStateError) as refused:
        schema.upgrade(db_url)
    message = str(refused.value)
    assert "changed nothing" in message
    assert re.search(r"view public\.bounds: column .*wilson_high.* does not exist", message)
    assert "view public.on_bounds: it reads public.bounds" in message
    monkeypatch.undo()
    with psycopg.connect(db_url, autocommit=True) as c:
        assert c.execute("SELECT key, value FROM avengers.meta ORDER BY key").fetchall() == meta
        assert [
            _oid(c, n) for n in ("avengers.cluster_ranks", "public.bounds", "public.on_bounds")
        ] == oids
        assert c.execute("SELECT n FROM public.on_bounds").fetchone()[0] >= 0
        schema.check_revision(c)
        c.execute("DROP VIEW public.on_bounds, public.bounds")


def test_objects_it_cannot_recreate_make_it_refuse_first(db_url):
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(
            """CREATE FUNCTION public.top_model(c integer) RETURNS text LANGUAGE sql STABLE
               BEGIN ATOMIC
                 SELECT model FROM avengers.cluster_ranks WHERE cluster = c AND rank = 1;
               END"""
        )
    _mark_definitions_changed(db_url)
    with pytest.raises(StoreStateError, match=r"function public\.top_model\(integer\) depends on"):
        schema.upgrade(db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        assert c.execute("SELECT to_regprocedure('public.top_model(integer)')").fetchone()[0]
        c.execute("DROP FUNCTION public.top_model(integer)")
    assert schema.upgrade(db_url).sql_reapplied
