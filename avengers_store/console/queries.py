"""The console's queries, one per panel, each a plain SELECT over the store's named views and
functions (sql/080_console.sql, the drift views, key_spend, cluster_ranks), named in
avengers_store/queries/console.sql: a page runs it with
bound parameters and prints it with the values in place, for an analyst to run in psql."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from avengers_store.store.queries import query


@dataclass(frozen=True)
class Query:
    """A named query of the console: what it shows (``title``) and its SQL."""

    name: str
    title: str
    sql: str


@dataclass(frozen=True)
class Result:
    """A query's rows (as dicts) and its text with the parameters in place."""

    query: Query
    rows: list[dict[str, Any]]
    shown: str


async def run(
    conn: psycopg.AsyncConnection, query: Query, params: Mapping[str, Any] | Sequence[Any] = ()
) -> Result:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query.sql, params or None)
        rows = await cur.fetchall()
    # The page shows the statement itself: its title already says what the comment line says.
    statement = "\n".join(
        line for line in query.sql.strip().splitlines() if not line.startswith("--")
    )
    shown = psycopg.AsyncClientCursor(conn).mogrify(statement, params or None)
    return Result(query, rows, shown)


TRAFFIC = Query(
    "traffic",
    "Requests, answers, errors, fallbacks, OOD share and spend per bucket",
    query("console", "traffic"),
)
ACTIVE_CLUSTERING = Query(
    "active_clustering",
    "The active clustering and its production loop settings",
    query("console", "active_clustering"),
)
POOL = Query(
    "pool",
    "The pool: endpoints, prices and health over the last 24 hours",
    query("console", "pool"),
)
PROFILES = Query(
    "profiles",
    "Cluster x model profiles of the active clustering",
    query("console", "profiles"),
)
CLUSTER_SIZES = Query(
    "cluster_sizes",
    "Calibration queries per cluster",
    query("console", "cluster_sizes"),
)
CLUSTER_RANKS = Query(
    "cluster_ranks",
    "The cluster's models, best first",
    query("console", "cluster_ranks"),
)
CLUSTER_EXAMPLES = Query(
    "cluster_examples",
    "Calibration queries nearest the centroid",
    query("console", "cluster_examples"),
)
CLUSTER_NEIGHBOURS = Query(
    "cluster_neighbours",
    "Nearest clusters",
    query("console", "cluster_neighbours"),
)
CLUSTER_TRAFFIC_DRIFT = Query(
    "cluster_traffic_drift",
    "Its traffic against its calibration share, last 7 days",
    query("console", "cluster_traffic_drift"),
)
CLUSTER_OUTCOME_DRIFT = Query(
    "cluster_outcome_drift",
    "Its feedback against the calibration interval, last 7 days",
    query("console", "cluster_outcome_drift"),
)
REQUESTS = Query(
    "requests",
    "Recent requests",
    query("console", "requests"),
)
FILTER_CHOICES = Query(
    "filter_choices",
    "What the request list can be filtered by",
    query("console", "filter_choices"),
)
REQUEST = Query(
    "request",
    "The request as the route log holds it",
    query("console", "request"),
)
REQUEST_CANDIDATES = Query(
    "request_candidates",
    "Its candidates' profiles in its cluster (as they stand now)",
    query("console", "request_candidates"),
)
CLUSTERING = Query(
    "clustering",
    "The clustering that routed it",
    query("console", "clustering"),
)
REQUEST_FEEDBACK = Query(
    "request_feedback",
    "Feedback on it",
    query("console", "request_feedback"),
)
KEY_SPEND = Query(
    "key_spend",
    "Spend per key and UTC day",
    query("console", "key_spend"),
)
MODEL_SPEND = Query(
    "model_spend",
    "Spend per model and UTC day (current prices)",
    query("console", "model_spend"),
)
TRAFFIC_DRIFT = Query(
    "traffic_drift",
    "Traffic per cluster against calibration, last 7 days",
    query("console", "traffic_drift"),
)
OOD_DAILY = Query(
    "ood_daily",
    "Out-of-distribution requests per day",
    query("console", "ood_daily"),
)
OUTCOME_DRIFT = Query(
    "outcome_drift",
    "Feedback against the calibration interval, last 7 days",
    query("console", "outcome_drift"),
)
SHADOW_VIEWS = Query(
    "shadow_views",
    "Shadow routing's views in the store",
    query("console", "shadow_views"),
)
