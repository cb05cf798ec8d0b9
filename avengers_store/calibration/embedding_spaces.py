"""Embedding spaces: one per embedder. Vectors of different spaces are never compared.

The *active* space is the one ``embed`` fills and ``recluster`` fits. Queries at routing time must
be embedded in the space of the *active clustering* (``serving_space``), which differs from the
active space only between switching embedders and the next re-cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from avengers_store.errors import InputError, NotFound
from avengers_store.store.queries import query

_COLUMNS = "id, embedder, dimension, active, params, created_at"


@dataclass(frozen=True)
class Space:
    id: int
    embedder: str
    dimension: int
    active: bool
    params: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


def space_from_row(row) -> Space:
    """A Space from (id, embedder, dimension, active, params, created_at)."""
    return Space(
        id=row[0],
        embedder=row[1],
        dimension=row[2],
        active=row[3],
        params=dict(row[4] or {}),
        created_at=row[5],
    )


def list_spaces(conn: psycopg.Connection) -> list[Space]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM avengers.embedding_spaces ORDER BY id").fetchall()
    return [space_from_row(r) for r in rows]


def get_space(conn: psycopg.Connection, embedder_name: str) -> Space | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM avengers.embedding_spaces WHERE embedder = %s", (embedder_name,)
    ).fetchone()
    return space_from_row(row) if row else None


def space_by_id(conn: psycopg.Connection, space_id: int) -> Space:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM avengers.embedding_spaces WHERE id = %s", (space_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"embedding space {space_id} does not exist")
    return space_from_row(row)


def active_space(conn: psycopg.Connection) -> Space | None:
    """The space ``embed`` fills and ``recluster`` fits, or None before anything was embedded."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM avengers.embedding_spaces WHERE active").fetchone()
    return space_from_row(row) if row else None


def serving_space(conn: psycopg.Connection) -> Space | None:
    """The space of the active clustering (what routing must embed queries in); the active
    space when nothing is clustered yet."""
    row = conn.execute(query("calibration", "serving_space")).fetchone()
    return space_from_row(row) if row else active_space(conn)


def get_or_create_space(
    conn: psycopg.Connection,
    embedder_name: str,
    dimension: int,
    params: dict[str, Any] | None = None,
) -> Space:
    """The space of ``embedder_name``, created (inactive) if new. A known space must have the
    same dimension: vectors of another size cannot join it."""
    existing = get_space(conn, embedder_name)
    if existing is not None:
        if existing.dimension != dimension:
            raise InputError(
                f"embedding space {existing.id} ({embedder_name}) holds {existing.dimension}-d "
                f"vectors, got {dimension}-d; use another embedder name for a different model"
            )
        return existing
    row = conn.execute(
        f"""INSERT INTO avengers.embedding_spaces (embedder, dimension, params)
            VALUES (%s, %s, %s)
            ON CONFLICT (embedder) DO UPDATE SET embedder = excluded.embedder
            RETURNING {_COLUMNS}""",
        (embedder_name, int(dimension), Jsonb(json.loads(json.dumps(params or {})))),
    ).fetchone()
    space = space_from_row(row)
    if space.dimension != dimension:  # lost a race with another writer using another dimension
        raise InputError(
            f"embedding space {space.id} ({embedder_name}) holds {space.dimension}-d vectors, "
            f"got {dimension}-d"
        )
    return space


def activate_space(conn: psycopg.Connection, space_id: int) -> Space:
    """Make ``space_id`` the active space (the one-active index allows no other)."""
    space = space_by_id(conn, space_id)
    if space.active:
        return space
    conn.execute("UPDATE avengers.embedding_spaces SET active = false WHERE active")
    conn.execute("UPDATE avengers.embedding_spaces SET active = true WHERE id = %s", (space_id,))
    return space_by_id(conn, space_id)
