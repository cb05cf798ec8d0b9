"""Feedback: a score in [0, 1] for the answer of one routed request, by route id.

One row per route and source (a second one from the same source replaces the first). The rules
(the route exists, the model is one the request sampled) live in SQL, ``avengers.record_feedback``
for one row and ``avengers.feedback_problem`` for a file, so every path applies the same ones.
Triggers count each row in ``avengers.production_stats`` at once; routing serves it after
``refresh_production`` (cheap: clusters x models rows, calibration outcomes are not re-read).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from avengers_store.errors import InputError
from avengers_store.ingest.readers import Table, read_table
from avengers_store.store import connections, driver_errors
from avengers_store.store.queries import query
from avengers_store.store.statement import Statement, run

DEFAULT_SOURCE = "user"

RECORD_SQL = (
    "SELECT feedback_id, model_name, replaced "
    "FROM avengers.record_feedback(%s, %s, %s, %s, coalesce(%s, now()))"
)
REFRESH_SQL = "CALL avengers.refresh_production()"


@dataclass(frozen=True)
class Feedback:
    """A stored feedback row. ``replaced``: the source had scored this route before."""

    id: int
    route_id: uuid.UUID
    model: str
    score: float
    source: str
    replaced: bool


def as_route_id(value: Any, *, location: str = "route_id") -> uuid.UUID:
    """A route id (a UUID, or its text) or an ``InputError`` naming ``location``."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise InputError(
        f"{value!r} is not a route id (a UUID such as x-avengers-route-id gives)",
        location=location,
    )


def feedback_params(
    route_id: uuid.UUID | str,
    score: float,
    model: str | None,
    source: str,
    at: datetime | None,
) -> tuple[Any, ...]:
    """The checked parameters of ``RECORD_SQL``. The store checks the rest (route, model)."""
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise InputError(f"score must be a number in [0, 1], got {score!r}", location="score")
    if not 0.0 <= float(score) <= 1.0:  # also refuses NaN
        raise InputError(f"score must be in [0, 1], got {score!r}", location="score")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InputError(f"model must be a model name, got {model!r}", location="model")
    if not isinstance(source, str) or not source.strip():
        raise InputError("source must be a non-blank name (e.g. user, grader)", location="source")
    return (as_route_id(route_id), float(score), model, source.strip(), at)


def record_statement(params: tuple[Any, ...]) -> Statement:
    """The statement storing one feedback row (``feedback_params``' values)."""
    return Statement(RECORD_SQL, params)


def from_row(params: tuple[Any, ...], row: Sequence[Any]) -> Feedback:
    """The stored feedback from ``feedback_params``' values and ``RECORD_SQL``'s row."""
    return Feedback(row[0], params[0], row[1], params[1], params[3], row[2])


def record_feedback(
    conn: psycopg.Connection,
    route_id: uuid.UUID | str,
    score: float,
    model: str | None = None,
    source: str = DEFAULT_SOURCE,
    *,
    at: datetime | None = None,
    refresh: bool = True,
) -> Feedback:
    """Store one feedback row in the caller's connection (one transaction with the refresh);
    ``model`` None scores the model whose answer was returned; ``at`` (default now) is when the
    outcome was observed. ``refresh`` serves it at once (``refresh_production``)."""
    params = feedback_params(route_id, score, model, source, at)
    with conn.transaction():
        rows = run(conn, record_statement(params))
        if refresh:
            run(conn, Statement(REFRESH_SQL))
    return from_row(params, rows[0])


def refresh_production(conn: psycopg.Connection) -> None:
    """Serve the feedback recorded since the last refresh (production outcomes only)."""
    with driver_errors.translated():
        conn.execute(REFRESH_SQL)


# --- files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackImport:
    """What ``import_feedback`` did: rows read, rows stored (a route scored twice by one source
    in the file counts once, the later row), rows that replaced earlier feedback."""

    path: str
    rows_read: int
    stored: int
    replaced: int
    duplicates_in_file: int
    seconds: float


_STAGE = """
CREATE TEMP TABLE avengers_feedback_in (
  ord bigint, route_id uuid, score double precision, model text, source text, at timestamptz
) ON COMMIT DROP
"""

_FIRST_PROBLEM = query("production", "first_problem")

_STORE = query("production", "store_feedback")


def import_feedback(
    path: str | Path,
    *,
    route_id_col: str = "route_id",
    score_col: str = "score",
    model_col: str | None = None,
    source_col: str | None = None,
    at_col: str | None = None,
    source: str = DEFAULT_SOURCE,
    refresh: bool = True,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> FeedbackImport:
    """Store the feedback rows of a file (JSONL, CSV or Parquet) in one transaction: all of them,
    or none and an ``InputError`` naming the file, data row and column of the first bad one.

    Columns: the route id and the score; optional the model (default: ``model`` when the file
    has it; empty: the model whose answer was returned), the source (default ``source`` when
    present, else the ``source`` argument) and when the outcome was observed (``at``)."""
    started = time.perf_counter()
    table = read_table(path)
    table.require(route_id_col, score_col)
    model_col = _optional(table, model_col, "model")
    source_col = _optional(table, source_col, "source")
    at_col = _optional(table, at_col, "at")
    if not isinstance(source, str) or not source.strip():
        raise InputError("source must be a non-blank name", location="source")
    rows = _rows(table, route_id_col, score_col, model_col, source_col, at_col, source.strip())
    columns = {
        "route_id": route_id_col,
        "score": score_col,
        "model": model_col or route_id_col,
        "source": source_col or route_id_col,
    }
    with connections.connection(url, conn=conn) as c, driver_errors.translated(), c.transaction():
        c.execute(_STAGE)
        with (
            c.cursor() as cur,
            cur.copy(
                "COPY avengers_feedback_in (ord, route_id, score, model, source, at) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        bad = c.execute(_FIRST_PROBLEM).fetchone()
        if bad is not None:
            index, field, message = bad
            raise InputError(message, location=table.where(index, columns[field]))
        stored, replaced = c.execute(_STORE).fetchone()
        if refresh:
            c.execute(REFRESH_SQL)
    return FeedbackImport(
        path=str(table.path),
        rows_read=table.n_rows,
        stored=stored,
        replaced=replaced,
        duplicates_in_file=table.n_rows - stored,
        seconds=round(time.perf_counter() - started, 3),
    )


def _optional(table: Table, given: str | None, default: str) -> str | None:
    if given is not None:
        table.require(given)
        return given
    return default if default in table.columns else None


def _rows(
    table: Table,
    route_id_col: str,
    score_col: str,
    model_col: str | None,
    source_col: str | None,
    at_col: str | None,
    source: str,
) -> list[tuple[Any, ...]]:
    """(ord, route id, score, model, source, at) per data row, each cell checked where Python
    can (the store checks the rest)."""
    routes = table.values(route_id_col)
    scores = table.numbers(score_col)
    models = table.labels(model_col) if model_col else [None] * table.n_rows
    sources = table.labels(source_col) if source_col else [source] * table.n_rows
    ats = table.values(at_col) if at_col else [None] * table.n_rows
    out = []
    for i in range(table.n_rows):
        if routes[i] is None:
            raise InputError("the route id is missing", location=table.where(i, route_id_col))
        route = as_route_id(str(routes[i]), location=table.where(i, route_id_col))
        score = float(scores[i])
        if math.isnan(score):
            raise InputError("the score is missing", location=table.where(i, score_col))
        row_source = (sources[i] or "").strip() or source
        at = ats[i]
        if at is not None and not isinstance(at, datetime):
            at = _timestamp(at, table.where(i, at_col))
        out.append((i, route, score, models[i] or None, row_source, at))
    return out


def _timestamp(value: Any, location: str) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed
    raise InputError(
        f"{value!r} is not a time (ISO 8601, e.g. 2026-12-20T10:00:00+00:00)", location=location
    )
