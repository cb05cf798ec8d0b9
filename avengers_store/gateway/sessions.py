"""Conversation affinity: a conversation that carries a session id (``x-session-id`` header or
the ``user`` field) stays on the model that answered its first turn (``avengers.gateway_sessions``;
the id is stored only as a hash). Later turns put that model first among the candidates; the
others stay as fallbacks."""

from __future__ import annotations

import hashlib

import psycopg

PINNED_SQL = """
SELECT m.name FROM avengers.gateway_sessions s JOIN avengers.models m ON m.id = s.model_id
WHERE s.session_hash = %s AND s.last_seen_at > now() - make_interval(secs => %s)
"""

PIN_SQL = """
INSERT INTO avengers.gateway_sessions AS s (session_hash, model_id, clustering_id, cluster)
SELECT %s, m.id, %s, %s FROM avengers.models m WHERE m.name = %s
ON CONFLICT (session_hash) DO UPDATE
  SET last_seen_at = now(),
      model_id = CASE WHEN s.last_seen_at > now() - make_interval(secs => %s) THEN s.model_id
                      ELSE excluded.model_id END,
      clustering_id = CASE WHEN s.last_seen_at > now() - make_interval(secs => %s)
                           THEN s.clustering_id ELSE excluded.clustering_id END,
      cluster = CASE WHEN s.last_seen_at > now() - make_interval(secs => %s) THEN s.cluster
                     ELSE excluded.cluster END
"""


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


async def pinned(conn: psycopg.AsyncConnection, session_id: str, ttl_s: float) -> str | None:
    """The model the conversation stays on, if it has one and was seen within ``ttl_s``."""
    cursor = await conn.execute(PINNED_SQL, (session_hash(session_id), ttl_s))
    row = await cursor.fetchone()
    return row[0] if row else None


async def pin(
    conn: psycopg.AsyncConnection,
    session_id: str,
    model: str,
    clustering_id: int | None,
    cluster: int | None,
    ttl_s: float,
) -> None:
    """Record the turn: a new (or expired) conversation is pinned to ``model``; a live one keeps
    its model and is marked seen."""
    await conn.execute(
        PIN_SQL,
        (session_hash(session_id), clustering_id, cluster, model, ttl_s, ttl_s, ttl_s),
    )
