"""Conversation affinity: a conversation that carries a session id (``x-session-id`` header or
the ``user`` field) stays on the model that answered its first turn (``avengers.gateway_sessions``;
the id is stored only as a hash). Later turns ask that model first (``avengers.decide``'s pinned
model, when it is a candidate); the others stay as fallbacks."""

from __future__ import annotations

import hashlib

from avengers_store.store.queries import query
from avengers_store.store.statement import Statement

PINNED_SQL = query("gateway", "pinned_model")

PIN_SQL = query("gateway", "pin_session")


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
