"""The console's queries, one per panel, each a plain SELECT over the store's named views and
functions (sql/080_console.sql, the drift views, key_spend, cluster_ranks): a page runs it with
bound parameters and prints it with the values in place, for an analyst to run in psql."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row


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
    shown = psycopg.AsyncClientCursor(conn).mogrify(query.sql.strip(), params or None)
    return Result(query, rows, shown)


TRAFFIC = Query(
    "traffic",
    "Requests, answers, errors, fallbacks, OOD share and spend per bucket",
    "SELECT * FROM avengers.traffic_series(now() - %(window)s::interval, %(bucket)s::interval)",
)
ACTIVE_CLUSTERING = Query(
    "active_clustering",
    "The active clustering and its production loop settings",
    """
SELECT id, algorithm, k, n_queries, activated_at, production_weight, half_life, exploration,
       exploration_share, ood_quantile, change_threshold
FROM avengers.active_clustering""",
)
POOL = Query(
    "pool",
    "The pool: endpoints, prices and health over the last 24 hours",
    "SELECT * FROM avengers.pool_health ORDER BY active DESC, model",
)
PROFILES = Query(
    "profiles",
    "Cluster x model profiles of the active clustering",
    """
SELECT cluster, model, active, mean_score, n, wilson_low, wilson_high, production_n,
       production_decayed_mean, pooled_mean
FROM avengers.cluster_ranks
ORDER BY cluster, model""",
)
CLUSTER_SIZES = Query(
    "cluster_sizes",
    "Calibration queries per cluster",
    """
SELECT c.cluster, c.size
FROM avengers.centroids c JOIN avengers.active_clustering k ON k.id = c.clustering_id
ORDER BY c.cluster""",
)
CLUSTER_RANKS = Query(
    "cluster_ranks",
    "The cluster's models, best first",
    """
SELECT rank, model, active, mean_score, n, wilson_low, wilson_high, production_n,
       production_decayed_mean, pooled_mean
FROM avengers.cluster_ranks
WHERE cluster = %(cluster)s
ORDER BY rank""",
)
CLUSTER_EXAMPLES = Query(
    "cluster_examples",
    "Calibration queries nearest the centroid",
    "SELECT * FROM avengers.cluster_examples(%(cluster)s, 8)",
)
CLUSTER_NEIGHBOURS = Query(
    "cluster_neighbours",
    "Nearest clusters",
    "SELECT * FROM avengers.cluster_neighbours(%(cluster)s, 5)",
)
CLUSTER_TRAFFIC_DRIFT = Query(
    "cluster_traffic_drift",
    "Its traffic against its calibration share, last 7 days",
    "SELECT * FROM avengers.traffic_drift WHERE cluster = %(cluster)s",
)
CLUSTER_OUTCOME_DRIFT = Query(
    "cluster_outcome_drift",
    "Its feedback against the calibration interval, last 7 days",
    "SELECT * FROM avengers.outcome_drift WHERE cluster = %(cluster)s ORDER BY model",
)
REQUESTS = Query(
    "requests",
    "Recent requests",
    """
SELECT route_id, at, key_name, cluster, ood, novelty, strategy, answer_model, candidates,
       vote_share, samples, latency_ms, cost, error, fallbacks, feedback_n, feedback_mean
FROM avengers.request_log
WHERE (%(cluster)s::integer IS NULL OR cluster = %(cluster)s)
  AND (%(model)s::text IS NULL OR answer_model = %(model)s OR %(model)s = ANY (models))
  AND (%(key)s::text IS NULL OR key_name = %(key)s)
  AND (%(ood)s::boolean IS NULL OR ood = %(ood)s)
  AND (%(strategy)s::text IS NULL OR strategy = %(strategy)s)
ORDER BY at DESC
LIMIT %(limit)s""",
)
FILTER_CHOICES = Query(
    "filter_choices",
    "What the request list can be filtered by",
    """
SELECT (SELECT array_agg(cluster ORDER BY cluster) FROM avengers.centroids c
          JOIN avengers.active_clustering k ON k.id = c.clustering_id) AS clusters,
       (SELECT array_agg(name ORDER BY name) FROM avengers.models) AS models,
       (SELECT array_agg(DISTINCT name) FROM avengers.api_keys) AS keys,
       (SELECT array_agg(DISTINCT strategy) FROM avengers.route_log
          WHERE at >= now() - interval '30 days') AS strategies""",
)
REQUEST = Query(
    "request",
    "The request as the route log holds it",
    "SELECT * FROM avengers.request_log WHERE route_id = %(route_id)s",
)
REQUEST_CANDIDATES = Query(
    "request_candidates",
    "Its candidates' profiles in its cluster (as they stand now)",
    """
SELECT r.model, r.mean_score, r.n, r.wilson_low, r.wilson_high, r.production_n,
       r.production_decayed_mean, r.pooled_mean, m.endpoint, m.served_name
FROM avengers.cluster_ranks r JOIN avengers.models m ON m.name = r.model
WHERE r.clustering_id = %(clustering_id)s AND r.cluster = %(cluster)s
  AND r.model = ANY (%(models)s)""",
)
CLUSTERING = Query(
    "clustering",
    "The clustering that routed it",
    "SELECT id, status, production_weight FROM avengers.clusterings WHERE id = %(clustering_id)s",
)
REQUEST_FEEDBACK = Query(
    "request_feedback",
    "Feedback on it",
    "SELECT * FROM avengers.request_feedback(%(route_id)s)",
)
KEY_SPEND = Query(
    "key_spend",
    "Spend per key and UTC day",
    """
SELECT period_start AS day, key_name, requests, tokens_in, tokens_out, cost, spend_limit
FROM avengers.key_spend
WHERE period = 'day' AND period_start >= current_date - %(days)s
ORDER BY day, key_name""",
)
MODEL_SPEND = Query(
    "model_spend",
    "Spend per model and UTC day (current prices)",
    """
SELECT day, model, requests, samples, tokens_in, tokens_out, cost
FROM avengers.model_spend_daily
WHERE day >= current_date - %(days)s
ORDER BY day, model""",
)
TRAFFIC_DRIFT = Query(
    "traffic_drift",
    "Traffic per cluster against calibration, last 7 days",
    "SELECT * FROM avengers.traffic_drift ORDER BY cluster",
)
OOD_DAILY = Query(
    "ood_daily",
    "Out-of-distribution requests per day",
    """
SELECT day, clustering_id, routed, ood, ood_rate, mean_distance, mean_novelty
FROM avengers.ood_daily
WHERE day >= now() - interval '30 days'
ORDER BY day, clustering_id""",
)
OUTCOME_DRIFT = Query(
    "outcome_drift",
    "Feedback against the calibration interval, last 7 days",
    "SELECT * FROM avengers.outcome_drift ORDER BY outside DESC, cluster, model",
)
SHADOW_VIEWS = Query(
    "shadow_views",
    "Shadow routing's views in the store",
    """
SELECT c.relname AS name, obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'avengers' AND left(c.relname, 6) = 'shadow' AND c.relkind IN ('v', 'm')
ORDER BY c.relname""",
)
