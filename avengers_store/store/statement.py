"""A statement to run: SQL text with its bound parameters, and how to run it.

The library's I/O-free code returns ``Statement`` values and the clients' drivers run them, on a
sync or an async connection alike (``run`` / ``arun``), so what a statement is, is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.pq import ExecStatus

from avengers_store.store import driver_errors


@dataclass(frozen=True)
class Statement:
    """``sql`` with ``params`` (values are always bound, never in the text). ``prepare``: keep
    it prepared on the connection (a statement run on every request); ``binary``: results and
    parameters in binary (vectors); ``location``: what an input error from the server is about."""

    sql: str
    params: Sequence[Any] = ()
    prepare: bool | None = None
    binary: bool = False
    location: str | None = field(default=None, compare=False)


def run(conn: psycopg.Connection, statement: Statement) -> list[Any]:
    """Run ``statement`` on a sync connection: its rows (none for a statement without)."""
    try:
        cursor = conn.execute(
            statement.sql, statement.params, prepare=statement.prepare, binary=statement.binary
        )
        return cursor.fetchall() if _has_rows(cursor) else []
    except psycopg.Error as exc:
        driver_errors.reraise(exc, location=statement.location)


async def arun(conn: psycopg.AsyncConnection, statement: Statement) -> list[Any]:
    """``run`` on an async connection."""
    try:
        cursor = await conn.execute(
            statement.sql, statement.params, prepare=statement.prepare, binary=statement.binary
        )
        return await cursor.fetchall() if _has_rows(cursor) else []
    except psycopg.Error as exc:
        driver_errors.reraise(exc, location=statement.location)


def _has_rows(cursor: psycopg.Cursor | psycopg.AsyncCursor) -> bool:
    # The result's status, not ``cursor.description``: that builds a Column object per column on
    # every call (~15 µs for a decision's 30 columns, a tenth of a route).
    result = cursor.pgresult
    return result is not None and result.status == ExecStatus.TUPLES_OK
