"""The SQL reference page (docs/reference/sql.md), generated from a migrated database: every
table, view, materialized view, function and procedure of the ``avengers`` schema with its
``COMMENT ON`` (and each column's), read from the catalog. A test regenerates it from the
suite's migrated template database and compares, so a new object or a changed comment without
the page fails the suite.

    python -m tools.sql_reference --write    # migrate a throwaway database, rewrite the page
    python -m tools.sql_reference --url URL  # print the page for an existing database
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "sql.md"
HEADER = """\
# SQL objects

Every table, view and function of the `avengers` schema, with the comment it carries in the
database (`\\d+` and `\\df+` in psql show the same). [SQL for analysts](../sql.md) shows them at
work.

This page is generated from a migrated database: after changing a migration or a file in
`sql/`, run `python -m tools.sql_reference --write` (a test fails while it is stale).
"""
KINDS = {"r": "table", "v": "view", "m": "materialized view"}
SECTIONS = (
    ("Tables", ("r",)),
    ("Views", ("v", "m")),
)


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", r"\|")


def relations(conn: psycopg.Connection) -> list[tuple[str, str, str | None]]:
    """(name, relkind, comment) of every table, view and materialized view, by name."""
    return conn.execute(
        """SELECT c.relname, c.relkind::text, obj_description(c.oid, 'pg_class')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'avengers' AND c.relkind IN ('r', 'v', 'm')
           ORDER BY c.relname"""
    ).fetchall()


def columns(conn: psycopg.Connection, relation: str) -> list[tuple[str, str, str | None]]:
    """(name, type, comment) of a relation's columns, in order."""
    return conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), col_description(c.oid, a.attnum)
           FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'avengers' AND c.relname = %s AND a.attnum > 0
             AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (relation,),
    ).fetchall()


def routines(conn: psycopg.Connection) -> list[tuple[str, str, str, str | None, str]]:
    """(name, arguments, result, comment, kind) of every function and procedure (trigger
    functions included), by name then arguments."""
    return conn.execute(
        """SELECT p.proname, pg_get_function_arguments(p.oid),
                  coalesce(pg_get_function_result(p.oid), ''),
                  obj_description(p.oid, 'pg_proc'),
                  CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'avengers'
           ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)"""
    ).fetchall()


def render(conn: psycopg.Connection) -> str:
    """The whole page for the database ``conn`` is connected to."""
    out = [HEADER]
    found = relations(conn)
    for title, kinds in SECTIONS:
        out.append(f"## {title}\n")
        for name, kind, comment in (r for r in found if r[1] in kinds):
            out.append(f"### avengers.{name}\n")
            out.append(f"*{KINDS[kind]}*. {_cell(comment) or '(no comment)'}\n")
            out.append("| column | type | comment |\n|---|---|---|")
            for column, type_, note in columns(conn, name):
                out.append(f"| `{column}` | `{type_}` | {_cell(note)} |")
            out.append("")
    out.append("## Functions and procedures\n")
    previous = None
    for name, arguments, result, comment, kind in routines(conn):
        if name != previous:
            out.append(f"### avengers.{name}\n")
            previous = name
        returns = f" → {result}" if result else ""
        out.append(f"```sql\n{kind} avengers.{name}({arguments}){returns}\n```\n")
        out.append(f"{' '.join((comment or '(no comment)').split())}\n")
    return "\n".join(out).rstrip("\n") + "\n"


def render_url(url: str) -> str:
    with psycopg.connect(url) as conn:
        return render(conn)


def _fresh_page() -> str:
    """The page for a new database migrated to head, on a throwaway server."""
    from avengers_store.store import schema
    from avengers_store.testing import postgres_server, throwaway_database

    with postgres_server() as admin, throwaway_database(admin) as url:
        schema.upgrade(url)
        return render_url(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sql_reference", description=__doc__)
    parser.add_argument("--url", help="read this (migrated) database instead of a fresh one")
    parser.add_argument("--write", action="store_true", help=f"rewrite {PAGE.name}")
    args = parser.parse_args(argv)
    page = render_url(args.url) if args.url else _fresh_page()
    if not args.write:
        sys.stdout.write(page)
        return 0
    if PAGE.exists() and PAGE.read_text(encoding="utf-8") == page:
        print(f"{PAGE} is current")
    else:
        PAGE.write_text(page, encoding="utf-8")
        print(f"rewrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
