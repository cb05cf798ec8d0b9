"""One snapshot over several connections, so a batch split into parts, each on a connection of
its own, reads what one statement would: PostgreSQL's exported snapshots, as parallel pg_dump
uses them (on a hot standby too). The first connection opens a repeatable-read, read-only
transaction and exports its snapshot; each other one opens its transaction on that snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
EXPORT = "SELECT pg_export_snapshot()"
END = "ROLLBACK"  # read only: nothing to keep


def adopt(snapshot: str) -> sql.Composed:
    """The statement that sets a transaction's snapshot to an exported one. SET TRANSACTION
    SNAPSHOT takes no parameters, so the server's id is quoted into the text."""
    return sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))


def shares(parts: int, connections: int) -> list[list[int]]:
    """The parts each connection runs, in turn (round robin): ``connections`` may be fewer
    than the parts when the pool had no more free."""
    return [list(range(first, parts, connections)) for first in range(connections)]


def in_order(shares: list[list[int]], done: Sequence[list[Any]], parts: int) -> list[Any]:
    """Each part's result in the parts' order, from each connection's results of its share."""
    found: list[Any] = [None] * parts
    for share, results in zip(shares, done, strict=True):
        for i, result in zip(share, results, strict=True):
            found[i] = result
    return found
