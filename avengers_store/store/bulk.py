"""Bulk writes: rows streamed into a table by binary COPY (pgvector's recommended load path),
the table and column names composed as identifiers, never formatted into the text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql


def copy_rows(
    conn: psycopg.Connection,
    table: str | Sequence[str],
    columns: Mapping[str, str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """Write ``rows`` into ``table`` (a name, or (schema, name)) by binary COPY, in the caller's
    transaction; ``columns`` maps each column, in row order, to its PostgreSQL type."""
    name = sql.Identifier(table) if isinstance(table, str) else sql.Identifier(*table)
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(
        name, sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(list(columns.values()))
        for row in rows:
            copy.write_row(row)
