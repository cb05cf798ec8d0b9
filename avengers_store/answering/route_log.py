"""The route log: one ``avengers.route_log`` row per answered request (the decision and the vote).

The query text itself is never logged, only its content hash (``textnorm.content_hash``). Each
row carries the route id its caller got. A client made with ``log_vectors`` also keeps the query's
embedding (and with ``log_texts`` its text) in ``avengers.route_vectors``, so feedback on it counts
in later clustering versions. ``write`` inserts rows on a sync connection, ``awrite`` on an async
one (the same statements); ``RouteLogWriter`` writes them in the background.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector
from psycopg.types.json import Jsonb

from avengers_store.ingest.text_identity import content_hash

# Idempotent by route id: a row replayed from the spool (``route_log_spool``) that reached the
# store already is skipped. ``at`` is the database's clock unless the row carries its own (a
# spooled row keeps the time it was answered).
INSERT_SQL = """
INSERT INTO avengers.route_log (route_id, api_key_id, query_hash, clustering_id, cluster, distance,
                                models, strategy, final_answer, vote_share, samples, latency_ms,
                                metadata, answer_model, novelty, ood, ood_policy, exploration,
                                explored, at)
VALUES (%(route_id)s, %(api_key_id)s, %(query_hash)s, %(clustering_id)s, %(cluster)s, %(distance)s,
        %(models)s, %(strategy)s, %(final_answer)s, %(vote_share)s, %(samples)s, %(latency_ms)s,
        %(metadata)s, %(answer_model)s, %(novelty)s, %(ood)s, %(ood_policy)s, %(exploration)s,
        %(explored)s, coalesce(%(at)s::timestamptz, now()))
ON CONFLICT (route_id) DO NOTHING
RETURNING id
"""

# The vector's space is the one of the clustering that routed it.
VECTOR_SQL = """
INSERT INTO avengers.route_vectors (route_id, space_id, embedding, query_text)
SELECT %(route_id)s, k.space_id, %(embedding)s, %(query_text)s
FROM avengers.clusterings k WHERE k.id = %(clustering_id)s
ON CONFLICT (route_id) DO NOTHING
"""


def entry(
    question: str,
    *,
    decision: Any,
    answer: Any | None,
    strategy: str,
    latency_ms: float,
    error: str | None = None,
    extra: Mapping[str, Any] | None = None,
    route_id: uuid.UUID | None = None,
    api_key_id: int | None = None,
    models: Sequence[str] | None = None,
    vector: Any | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """The row for one request. ``answer`` is an ensemble Answer, or None when it failed
    (``error`` then says why). ``route_id`` defaults to the answer's, else a new one; ``models``
    (the models called) defaults to the answer's. ``vector`` (the query's embedding as routed)
    is kept in route_vectors, and ``text`` with it, when given."""
    metadata: dict[str, Any] = {
        "candidates": [c.model for c in decision.candidates] if decision else [],
        **(extra or {}),
    }
    if answer is not None:
        metadata.update(
            task_type=answer.task_type,
            votes=dict(answer.votes),
            valid=answer.valid,
            usage=[asdict(u) for u in answer.usage],
            fallbacks=[asdict(f) for f in answer.fallbacks],
        )
    if error is not None:
        metadata["error"] = error
    if route_id is None:
        route_id = getattr(answer, "route_id", None) or uuid.uuid4()
    called = list(models if models is not None else answer.models if answer else [])
    answer_model = answer.model if answer is not None else (called[0] if called else None)
    row = {
        "route_id": route_id,
        "api_key_id": api_key_id,
        "query_hash": content_hash(question),
        "clustering_id": decision.clustering_id if decision else None,
        "cluster": decision.cluster if decision else None,
        "distance": decision.distance if decision else None,
        "models": called,
        "strategy": strategy,
        "final_answer": answer.answer if answer is not None else None,
        "vote_share": answer.share if answer is not None else None,
        "samples": len(answer.samples) if answer is not None else 0,
        "latency_ms": max(0.0, latency_ms),
        "metadata": Jsonb(metadata),
        "answer_model": answer_model,
        "novelty": getattr(decision, "novelty", None),
        "ood": getattr(decision, "ood", None),
        "ood_policy": getattr(decision, "ood_policy", None),
        "exploration": getattr(decision, "exploration", None),
        "explored": getattr(decision, "explored", None),
        "at": None,  # the database's clock when written
    }
    if vector is not None and decision is not None:
        row["vector"] = {
            "route_id": route_id,
            "clustering_id": decision.clustering_id,
            "embedding": Vector(np.asarray(vector, dtype=np.float32)),
            "query_text": text,
        }
    return row


def write(conn: psycopg.Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert rows made by ``entry`` in the caller's transaction; returns the ids of those
    inserted (a route id already stored is skipped)."""
    ids: list[int] = []
    # One transaction for a batch (a savepoint inside the caller's, if one is open).
    with conn.transaction(), conn.cursor() as cur:
        for row in rows:
            inserted = cur.execute(INSERT_SQL, {"at": None, **row}).fetchone()
            if inserted is None:
                continue
            ids.append(inserted[0])
            if "vector" in row:
                cur.execute(VECTOR_SQL, row["vector"])
    return ids


async def awrite(conn: psycopg.AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """``write`` on an async connection."""
    ids: list[int] = []
    async with conn.transaction(), conn.cursor() as cur:
        for row in rows:
            await cur.execute(INSERT_SQL, {"at": None, **row})
            inserted = await cur.fetchone()
            if inserted is None:
                continue
            ids.append(inserted[0])
            if "vector" in row:
                await cur.execute(VECTOR_SQL, row["vector"])
    return ids
