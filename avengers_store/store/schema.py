"""Bringing a database to this library's schema: alembic migrations, then the ``sql/`` definitions.

Migrations (tables, indexes) run once each. ``sql/`` files (views, materialized views, functions,
procedures) are rerunnable: on every change they are dropped and re-created, in file-name order,
inside the same transaction as the migrations, so a failed upgrade changes nothing.

``avengers.meta`` records two hashes of the applied files: their fingerprint (comments, whitespace
and ``COMMENT ON`` texts left out), which clients check, and their full text, which decides
whether ``upgrade`` re-applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import create_engine, pool

from avengers_store.errors import AvengersError, SchemaOutOfDate, StoreStateError
from avengers_store.store import connections, dependents, driver_errors, sql_fingerprint

SCHEMA = "avengers"
VERSION_TABLE = "avengers_alembic_version"
SQL_HASH_KEY = "sql_definitions_fingerprint"
SQL_TEXT_KEY = "sql_text_sha256"
# Written by earlier versions (a hash of the full text, which clients checked); removed on apply.
LEGACY_SQL_HASH_KEY = "sql_definitions_sha256"


def migrations_dir() -> Path:
    return Path(str(resources.files("avengers_store.migrations")))


def sql_files() -> list[tuple[str, str]]:
    """(name, text) of every ``sql/*.sql`` file, in the order they are applied."""
    root = resources.files("avengers_store.sql")
    files = sorted(p for p in root.iterdir() if p.name.endswith(".sql"))
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


def sql_hash() -> str:
    """Fingerprint of the definitions (what clients check): comments and whitespace ignored."""
    return sql_fingerprint.fingerprint(sql_files())


def sql_text_hash() -> str:
    """Hash of the files as written (what ``upgrade`` checks): any edit re-applies them."""
    return sql_fingerprint.text_hash(sql_files())


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("version_locations", str(migrations_dir() / "versions"))
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return heads[0]


@dataclass(frozen=True)
class UpgradeResult:
    from_revision: str | None
    to_revision: str
    sql_reapplied: bool

    @property
    def changed(self) -> bool:
        return self.sql_reapplied or self.from_revision != self.to_revision


def _engine(url: str):
    # One psycopg connection made our way (same URL resolution and errors as everything else).
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: connections.connect(url, vector=False),
        poolclass=pool.NullPool,
    )


def _raw(sa_conn) -> psycopg.Connection:
    return sa_conn.connection.driver_connection


def current_revision(conn: psycopg.Connection) -> str | None:
    exists = conn.execute("SELECT to_regclass(%s)", (f"public.{VERSION_TABLE}",)).fetchone()[0]
    if not exists:
        return None
    row = conn.execute(
        sql.SQL("SELECT version_num FROM {}").format(sql.Identifier("public", VERSION_TABLE))
    ).fetchone()
    return row[0] if row else None


def _meta(conn: psycopg.Connection, key: str) -> str | None:
    if conn.execute("SELECT to_regclass('avengers.meta')").fetchone()[0] is None:
        return None
    row = conn.execute("SELECT value FROM avengers.meta WHERE key = %s", (key,)).fetchone()
    return row[0] if row else None


def applied_sql_hash(conn: psycopg.Connection) -> str | None:
    """Fingerprint of the definitions the database holds (None before the first upgrade)."""
    return _meta(conn, SQL_HASH_KEY)


def applied_sql_text_hash(conn: psycopg.Connection) -> str | None:
    return _meta(conn, SQL_TEXT_KEY)


def sql_stale(conn: psycopg.Connection) -> bool:
    """Whether ``upgrade`` would re-apply ``sql/`` (its text or its fingerprint differ)."""
    return applied_sql_text_hash(conn) != sql_text_hash() or applied_sql_hash(conn) != sql_hash()


_DROP = {
    "view": "VIEW",
    "materialized view": "MATERIALIZED VIEW",
    "function": "ROUTINE",
    "procedure": "ROUTINE",
    "aggregate": "ROUTINE",
    "type": "TYPE",
    "composite type": "TYPE",
}


def drop_definitions(conn: psycopg.Connection) -> None:
    """Drop every view, materialized view, routine and type the ``sql/`` files created (their
    triggers go with their functions). Migrations own tables and indexes only."""
    for _, _, type_, identity in dependents.own_objects(conn):
        if type_ in _DROP:
            conn.execute(f"DROP {_DROP[type_]} IF EXISTS {identity} CASCADE")


def apply_definitions(conn: psycopg.Connection) -> None:
    # BEGIN ATOMIC bodies bind names when created: resolve pgvector's type and operators from the
    # schema the extension lives in (public, or e.g. "extensions" on managed services).
    conn.execute(
        """SELECT set_config('search_path',
                             quote_ident(extnamespace::regnamespace::text) || ', pg_catalog', true)
           FROM pg_extension WHERE extname = 'vector'"""
    )
    existing = {(o[0], o[1]) for o in dependents.schema_objects(conn)}
    for name, text in sql_files():
        try:
            conn.execute(text)
        except psycopg.Error as exc:
            raise AvengersError(f"sql/{name} failed to apply: {exc}") from exc
    # What the files created, so the next upgrade drops exactly that and keeps the rest.
    created = [o for o in dependents.schema_objects(conn) if (o[0], o[1]) not in existing]
    dependents.write_own_objects(conn, created)
    # Re-created materialized views start without statistics; the routing functions' cached
    # plans are built from them (see refresh_profiles in sql/060_procedures_and_triggers.sql).
    for (view,) in conn.execute(
        "SELECT matviewname FROM pg_matviews WHERE schemaname = 'avengers' ORDER BY 1"
    ).fetchall():
        conn.execute(sql.SQL("ANALYZE avengers.{}").format(sql.Identifier(view)))
    for key, value in ((SQL_HASH_KEY, sql_hash()), (SQL_TEXT_KEY, sql_text_hash())):
        conn.execute(
            """INSERT INTO avengers.meta (key, value) VALUES (%s, %s)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()""",
            (key, value),
        )
    conn.execute("DELETE FROM avengers.meta WHERE key = %s", (LEGACY_SQL_HASH_KEY,))


def _create_vector_extension(conn: psycopg.Connection, url: str) -> None:
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        missing = driver_errors.missing_extension(exc, connections.redact(url))
        if missing is None:
            raise
        raise missing from exc


def upgrade(url: str | None = None, revision: str = "head") -> UpgradeResult:
    """Migrate to ``revision`` and (re)apply ``sql/`` in one transaction. A no-op when current."""
    target_url = connections.resolve_url(url)
    target = head_revision() if revision == "head" else revision
    engine = _engine(target_url)
    with engine.begin() as sa_conn:
        raw = _raw(sa_conn)
        before = current_revision(raw)
        stale_sql = sql_stale(raw)
        if before == target and not stale_sql:
            return UpgradeResult(before, target, sql_reapplied=False)
        _create_vector_extension(raw, target_url)
        kept = dependents.record(raw)
        drop_definitions(raw)
        cfg = alembic_config()
        cfg.attributes["connection"] = sa_conn
        command.upgrade(cfg, target)
        apply_definitions(raw)
        dependents.restore(raw, kept)
    return UpgradeResult(before, target, sql_reapplied=True)


def downgrade(url: str | None = None, revision: str = "base") -> str | None:
    """Migrate down to ``revision`` (``base`` removes the schema). Returns the new revision.

    This library's ``sql/`` definitions are re-applied when they fit the older schema. When they
    read tables or columns it does not have, they are left out: the library of that revision
    re-creates its own with ``avengers db upgrade``. That is refused (nothing changes) when
    analysts' views or grants on the definitions would be lost with them."""
    target_url = connections.resolve_url(url)
    engine = _engine(target_url)
    with engine.begin() as sa_conn:
        raw = _raw(sa_conn)
        kept = dependents.record(raw) if revision != "base" else None
        drop_definitions(raw)
        cfg = alembic_config()
        cfg.attributes["connection"] = sa_conn
        command.downgrade(cfg, revision)
        after = current_revision(raw)
        if after is not None:
            try:
                with raw.transaction():  # a savepoint: a failed apply leaves the downgrade
                    apply_definitions(raw)
            except AvengersError as exc:
                if kept is not None and (kept.views or kept.grants):
                    names = [v.name for v in kept.views] + [g.identity for g in kept.grants]
                    raise StoreStateError(
                        f"`avengers db downgrade {revision}` changed nothing: this library's "
                        f"definitions do not fit revision {after} ({exc}), and these would be "
                        "lost with them: " + ", ".join(names) + ". Drop them first, or keep "
                        "the current revision."
                    ) from exc
                dependents.write_own_objects(raw, [])
                raw.execute(
                    "DELETE FROM avengers.meta WHERE key IN (%s, %s)", (SQL_HASH_KEY, SQL_TEXT_KEY)
                )
            else:
                if kept is not None:
                    dependents.restore(raw, kept)
    return after


def check_revision(conn: psycopg.Connection) -> None:
    """Raise ``SchemaOutOfDate`` naming the fix when the database does not match this library."""
    current = current_revision(conn)
    head = head_revision()
    if current == head and applied_sql_hash(conn) == sql_hash():
        return
    if current is None:
        raise SchemaOutOfDate(
            "this database has no avengers schema yet: run `avengers db upgrade`."
        )
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaOutOfDate(
            f"the database is at revision {current}, newer than this library knows (head {head}): "
            "upgrade avengers-store."
        )
    if current == head:
        raise SchemaOutOfDate(
            "the database's views and routing functions (sql/) differ from this library's: "
            "run `avengers db upgrade`."
        )
    raise SchemaOutOfDate(
        f"the database schema is behind this library (revision {current}, head {head}): "
        "run `avengers db upgrade`."
    )


TABLES = (
    "models",
    "datasets",
    "queries",
    "embedding_spaces",
    "query_embeddings",
    "clusterings",
    "centroids",
    "assignments",
    "outcomes",
    "route_log",
    "api_keys",
    "api_key_usage",
    "api_key_minutes",
    "gateway_sessions",
    "feedback",
    "production_stats",
    "production_history",
    "route_vectors",
    "cluster_distances",
)


@dataclass(frozen=True)
class StoreStatus:
    url: str
    embedded: bool
    server_version: str
    pgvector_version: str | None
    revision: str | None
    head: str
    sql_current: bool
    active_clustering: int | None
    counts: dict[str, int]

    @property
    def up_to_date(self) -> bool:
        return self.revision == self.head and self.sql_current


def status(url: str | None = None) -> StoreStatus:
    """Revision, versions and row counts; works on an empty database too."""
    from avengers_store.store import config

    embedded = url is None and config.database_url() is None
    target = connections.resolve_url(url)
    with connections.connect(target, vector=False) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        installed, _ = connections.pgvector_version(conn)
        revision = current_revision(conn)
        counts: dict[str, int] = {}
        active = None
        if revision is not None:
            for table in TABLES:
                if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{table}",)).fetchone()[0]:
                    counts[table] = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, table))
                    ).fetchone()[0]
            # The table, not avengers.active_clustering: status reads databases whose sql/
            # definitions may predate this library.
            row = conn.execute(
                "SELECT id FROM avengers.clusterings WHERE status = 'active'"
            ).fetchone()
            active = row[0] if row else None
        sql_current = not sql_stale(conn)
    return StoreStatus(
        url=connections.redact(target),
        embedded=embedded,
        server_version=version,
        pgvector_version=installed,
        revision=revision,
        head=head_revision(),
        sql_current=sql_current,
        active_clustering=active,
        counts=counts,
    )
