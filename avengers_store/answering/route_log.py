"""The route log: one ``avengers.route_log`` row per answered request (the decision and the vote).

The query text itself is never logged, only its content hash (``textnorm.content_hash``). Each
row carries the route id its caller got. A client made with ``log_vectors`` also keeps the query's
embedding (and with ``log_texts`` its text) in ``avengers.route_vectors``, so feedback on it counts
in later clustering versions. Rows are plain JSON values (``entry``), written by one statement,
``avengers.log_routes`` (``statement``), idempotently by route id; ``RouteLogWriter`` writes them
in the background.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from avengers_store.ingest.text_identity import content_hash
from avengers_store.store.statement import Statement, run

# Idempotent by route id (sql/065_route_log.sql): a row replayed from the spool
# (``route_log_spool``) that reached the store already is skipped.
LOG_SQL = "SELECT avengers.log_routes(%s)"


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
            usage=[_flat(u) for u in answer.usage],
            fallbacks=[_flat(f) for f in answer.fallbacks],
            finish_reason=answer.finish_reason,
        )
    if error is not None:
        metadata["error"] = error
    if route_id is None:
        route_id = getattr(answer, "route_id", None) or uuid.uuid4()
    called = list(models if models is not None else answer.models if answer else [])
    answer_model = answer.model if answer is not None else (called[0] if called else None)
    row: dict[str, Any] = {
        "route_id": str(route_id),
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
        "metadata": metadata,
        "answer_model": answer_model,
        "novelty": getattr(decision, "novelty", None),
        "ood": getattr(decision, "ood", None),
        "ood_policy": getattr(decision, "ood_policy", None),
        "exploration": getattr(decision, "exploration", None),
        "explored": getattr(decision, "explored", None),
        "propensity": getattr(decision, "propensity", None),
        "at": None,  # the database's clock when written; a spooled row keeps its own
    }
    if vector is not None and decision is not None:
        row["embedding"] = np.asarray(vector, dtype=np.float32).tolist()
        row["query_text"] = text
    return row


def statement(rows: Sequence[Mapping[str, Any]]) -> Statement:
    """The statement writing rows made by ``entry`` (route ids already logged are skipped)."""
    return Statement(LOG_SQL, (Jsonb([plain(dict(r)) for r in rows]),))


def _flat(record: Any) -> dict[str, Any]:
    """A dataclass of plain values (``ModelUsage``, ``Fallback``) as a dict: ``asdict`` without
    its deep copy of each value."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


_AS_IS = frozenset({str, int, bool, type(None)})


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: numpy scalars as numbers, a non-finite number as its
    text (Postgres reads ``"Infinity"`` back into a float column), ids and times as text."""
    kind = type(value)
    if kind in _AS_IS:  # most of a row: taken as they are before the checks below
        return value
    if kind is float and math.isfinite(value):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, uuid.UUID | datetime):
        return str(value) if isinstance(value, uuid.UUID) else value.isoformat()
    return value


def write(conn: psycopg.Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Write rows made by ``entry`` in the caller's connection; returns how many were new."""
    if not rows:
        return 0
    return run(conn, statement(rows))[0][0]
