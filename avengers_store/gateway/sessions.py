"""Conversation affinity: a conversation that carries a session id (``x-session-id`` header or
the ``user`` field) stays on the model that answered its first turn (``avengers.gateway_sessions``;
the id is stored only as a hash). Later turns ask that model first (``avengers.decide``'s pinned
model, when it is a candidate); the others stay as fallbacks."""

from __future__ import annotations

import hashlib

from avengers_store.store.statement import Statement

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


def pinned_statement(session_id: str, ttl_s: float) -> Statement:
    """The model the conversation stays on, if it has one and was seen within ``ttl_s``: one
    row (its name) or none."""
    return Statement(PINNED_SQL, (session_hash(session_id), ttl_s))


def pin_statement(
    session_id: str, model: str, clustering_id: int | None, cluster: int | None, ttl_s: float
) -> Statement:
    """Record the turn: a new (or expired) conversation is pinned to ``model``; a live one keeps
    its model and is marked seen."""
    return Statement(
        PIN_SQL, (session_hash(session_id), clustering_id, cluster, model, ttl_s, ttl_s, ttl_s)
    )
