"""What an upgrade keeps: analysts' views built on the store's definitions, and grants.

Re-applying ``sql/`` drops every definition with CASCADE. Before that, ``record`` notes the views
and materialized views outside the definitions that depend on them (``pg_depend`` through
``pg_rewrite``, recursively) with their definitions, owners, options, comments, indexes,
triggers and grants, and the grants on the definitions themselves. After the definitions are
re-created, ``restore`` re-creates and re-grants all of it in the same transaction. What no longer
fits (a view reading a column that is gone, a grant on a function that was removed) makes
``restore`` raise, naming each and why, so the caller's transaction rolls back and nothing
changes. Other objects the drop would take with it (e.g. an analyst's function whose body reads a
store view) make ``record`` refuse before anything changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from avengers_store.errors import StoreStateError
from avengers_store.store.queries import query

SCHEMA = "avengers"
# avengers.meta key: the (type, identity) of every object the sql/ files created.
OBJECTS_KEY = "sql_objects"

_SCHEMA_OBJECTS = query("store", "schema_objects")

_GRANTEE = "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END"
_OPTION = "CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END"


@contextmanager
def _plain_search_path(conn: psycopg.Connection) -> Iterator[None]:
    """Only pg_catalog on the search path: definitions are read and re-created this way, so every
    other name in them comes out schema-qualified and resolves the same when re-created."""
    saved = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
    try:
        yield
    finally:
        # After a database error the transaction is rolling back anyway (and takes this with it).
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("SELECT set_config('search_path', %s, true)", (saved,))


def schema_objects(conn: psycopg.Connection) -> list[tuple[int, int, str, str]]:
    return conn.execute(_SCHEMA_OBJECTS, {"s": SCHEMA}).fetchall()


def own_objects(conn: psycopg.Connection) -> list[tuple[int, int, str, str]]:
    """The schema objects the applied sql/ files created (all of them for a store whose list
    predates this library)."""
    found = schema_objects(conn)
    if conn.execute("SELECT to_regclass('avengers.meta')").fetchone()[0] is None:
        return found
    row = conn.execute("SELECT value FROM avengers.meta WHERE key = %s", (OBJECTS_KEY,)).fetchone()
    if row is None:
        return found
    listed = {tuple(item) for item in json.loads(row[0])}
    return [o for o in found if (o[2], o[3]) in listed]


def write_own_objects(conn: psycopg.Connection, objects: list[tuple[int, int, str, str]]) -> None:
    value = json.dumps(sorted([o[2], o[3]] for o in objects))
    conn.execute(
        """INSERT INTO avengers.meta (key, value) VALUES (%s, %s)
           ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()""",
        (OBJECTS_KEY, value),
    )


@dataclass(frozen=True)
class KeptView:
    """An analyst's view (or materialized view) on the store's definitions, as it was."""

    oid: int
    name: str  # schema-qualified, quoted
    kind: str  # VIEW or MATERIALIZED VIEW
    create: str
    after: tuple[str, ...]  # owner, comments, indexes, triggers, rules, grants
    reads: frozenset[int]  # other kept views it reads


@dataclass(frozen=True)
class KeptGrants:
    """Grants on one of the store's own objects, to put back on its re-created namesake."""

    type: str
    identity: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Kept:
    views: tuple[KeptView, ...]
    grants: tuple[KeptGrants, ...]


def record(conn: psycopg.Connection) -> Kept:
    """What ``restore`` needs, read before the definitions are dropped. Raises
    ``StoreStateError`` when the drop would take objects it cannot re-create."""
    own = own_objects(conn)
    if not own:
        return Kept((), ())
    own_keys = [(o[0], o[1]) for o in own]
    with _plain_search_path(conn):
        views = _dependent_views(conn, own_keys)
        _refuse_other_dependents(conn, own_keys, [v.oid for v in views])
        grants = tuple(g for o in own if (g := _own_grants(conn, o)) is not None)
    return Kept(views, grants)


_DEPENDENT_VIEWS = query("store", "dependent_views")


def _dependent_views(conn: psycopg.Connection, own: list[tuple[int, int]]) -> tuple[KeptView, ...]:
    rows = conn.execute(
        _DEPENDENT_VIEWS,
        {"classids": [o[0] for o in own], "objids": [o[1] for o in own]},
    ).fetchall()
    oids = [r[0] for r in rows]
    return tuple(_kept_view(conn, oid, set(oids)) for oid in oids)


def _kept_view(conn: psycopg.Connection, oid: int, kept: set[int]) -> KeptView:
    name, relkind, owner, definition, options, populated, comment = conn.execute(
        query("store", "view_definition"),
        (oid,),
    ).fetchone()
    kind = "MATERIALIZED VIEW" if relkind == "m" else "VIEW"
    body = definition.strip().rstrip(";")
    create = f"CREATE {kind} {name}" + (f" WITH ({options})" if options else "") + f" AS {body}"
    if kind == "MATERIALIZED VIEW":
        create += " WITH DATA" if populated else " WITH NO DATA"
    after: list[str] = [f"ALTER {kind} {name} OWNER TO {_ident(conn, owner)}"]
    if comment is not None:
        after.append(f"COMMENT ON {kind} {name} IS {_literal(conn, comment)}")
    after += [
        f"COMMENT ON COLUMN {name}.{column} IS {_literal(conn, text)}"
        for column, text in conn.execute(
            """SELECT quote_ident(a.attname), col_description(a.attrelid, a.attnum)
               FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0
                 AND NOT a.attisdropped AND col_description(a.attrelid, a.attnum) IS NOT NULL
               ORDER BY a.attnum""",
            (oid,),
        ).fetchall()
    ]
    after += [
        r[0]
        for r in conn.execute(
            query("store", "index_definitions"),
            {"o": oid},
        ).fetchall()
    ]
    after += _relation_grants(conn, oid, name)
    reads = {
        r[0]
        for r in conn.execute(
            query("store", "views_read"),
            (oid,),
        ).fetchall()
    }
    return KeptView(oid, name, kind, create, tuple(after), frozenset((reads & kept) - {oid}))


def _relation_grants(conn: psycopg.Connection, oid: int, name: str) -> list[str]:
    """GRANT statements for a relation's table and column privileges (the owner's own left out:
    an owner has them all)."""
    return [
        r[0]
        for r in conn.execute(
            query("store", "relation_grants"),
            {"o": oid, "n": name},
        ).fetchall()
    ]


def _own_grants(conn: psycopg.Connection, obj: tuple[int, int, str, str]) -> KeptGrants | None:
    classid, objid, type_, identity = obj
    catalog = conn.execute("SELECT %s::regclass::text", (classid,)).fetchone()[0]
    if catalog == "pg_class" and type_ in ("view", "materialized view"):
        has_acl = conn.execute(
            "SELECT relacl IS NOT NULL OR EXISTS (SELECT 1 FROM pg_attribute "
            "WHERE attrelid = %(o)s AND attacl IS NOT NULL) FROM pg_class WHERE oid = %(o)s",
            {"o": objid},
        ).fetchone()[0]
        statements = _relation_grants(conn, objid, identity) if has_acl else []
    elif catalog in ("pg_proc", "pg_type"):
        # Functions and types start with PUBLIC's EXECUTE / USAGE: a recorded ACL is put back
        # exactly, so a privilege revoked from PUBLIC stays revoked.
        acl_column, owner_column, keyword = {
            "pg_proc": ("proacl", "proowner", "ROUTINE"),
            "pg_type": ("typacl", "typowner", "TYPE"),
        }[catalog]
        acl = conn.execute(
            f"SELECT {acl_column} IS NOT NULL FROM {catalog} WHERE oid = %s", (objid,)
        ).fetchone()[0]
        if not acl:
            return None
        statements = [f"REVOKE ALL ON {keyword} {identity} FROM PUBLIC"] + [
            r[0]
            for r in conn.execute(
                f"""SELECT format('GRANT %%s ON {keyword} %%s TO %%s%%s', a.privilege_type,
                                  %(n)s::text, {_GRANTEE}, {_OPTION})
                    FROM {catalog} x, aclexplode(x.{acl_column}) a
                    WHERE x.oid = %(o)s AND a.grantee <> x.{owner_column}""",
                {"o": objid, "n": identity},
            ).fetchall()
        ]
    else:
        return None
    return KeptGrants(type_, identity, tuple(statements)) if statements else None


def _refuse_other_dependents(
    conn: psycopg.Connection, own: list[tuple[int, int]], views: list[int]
) -> None:
    rows = conn.execute(
        query("store", "other_dependents"),
        {
            "classids": [o[0] for o in own],
            "objids": [o[1] for o in own],
            "views": views,
        },
    ).fetchall()
    if rows:
        named = "\n".join(f"  {what} depends on {on}" for what, on in rows)
        raise StoreStateError(
            "`avengers db upgrade` changed nothing: re-creating the store's definitions would drop "
            f"these objects, which it cannot re-create:\n{named}\n"
            "Drop them (and re-create them after the upgrade), then rerun `avengers db upgrade`."
        )


def restore(conn: psycopg.Connection, kept: Kept) -> None:
    """Re-create the recorded views and grants on the re-applied definitions, each in a savepoint,
    or raise ``StoreStateError`` naming every one that no longer fits (the caller rolls back)."""
    if not kept.views and not kept.grants:
        return
    with _plain_search_path(conn):
        failures = _recreate(conn, kept)
    if failures:
        raise StoreStateError(
            "`avengers db upgrade` changed nothing: what was built on the store's definitions "
            "cannot be kept on the new ones:\n"
            + "\n".join(f"  {f}" for f in failures)
            + "\nChange or drop these (and re-create them after the upgrade), then rerun "
            "`avengers db upgrade`."
        )


def _recreate(conn: psycopg.Connection, kept: Kept) -> list[str]:
    failures: list[str] = []
    present = {(o[2], o[3]) for o in schema_objects(conn)}
    for grants in kept.grants:
        if (grants.type, grants.identity) not in present:
            failures.append(
                f"grants on {grants.type} {grants.identity}: it is no longer defined "
                "(revoke them, or grant on what replaces it after the upgrade)"
            )
            continue
        reason = _attempt(conn, grants.statements)
        if reason:
            failures.append(f"grants on {grants.type} {grants.identity}: {reason}")
    failed: set[int] = set()
    for view in kept.views:
        missing = view.reads & failed
        if missing:
            failed.add(view.oid)
            failures.append(
                f"{view.kind.lower()} {view.name}: it reads "
                + ", ".join(v.name for v in kept.views if v.oid in missing)
                + ", which cannot be re-created"
            )
            continue
        reason = _attempt(conn, (view.create, *view.after))
        if reason:
            failed.add(view.oid)
            failures.append(f"{view.kind.lower()} {view.name}: {reason}")
    return failures


def _attempt(conn: psycopg.Connection, statements: tuple[str, ...]) -> str | None:
    """Run ``statements`` in a savepoint; the database's reason when one fails."""
    conn.execute("SAVEPOINT avengers_keep")
    try:
        for statement in statements:
            conn.execute(statement)
    except psycopg.Error as exc:
        conn.execute("ROLLBACK TO SAVEPOINT avengers_keep")
        return exc.diag.message_primary or str(exc).strip()
    finally:
        conn.execute("RELEASE SAVEPOINT avengers_keep")
    return None


def _ident(conn: psycopg.Connection, name: str) -> str:
    return conn.execute("SELECT quote_ident(%s)", (name,)).fetchone()[0]


def _literal(conn: psycopg.Connection, text: str) -> str:
    return conn.execute("SELECT quote_literal(%s)", (text,)).fetchone()[0]
