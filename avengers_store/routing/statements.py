"""Routing statements: one SQL call (``avengers.route_pooled`` / ``avengers.route`` /
``avengers.route_many``) per decision or batch, its rows turned into ``RouteDecision``s.

The rule lives in ``sql/040_routing_functions.sql``: the nearest centroids of the active
clustering by Euclidean distance of the L2-normalised query (the rule K-means assigned with), then
the top-n active models by a score pooled over them (ties: overall calibration score, then name).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import psycopg

from avengers_store.errors import InputError, StoreStateError
from avengers_store.routing.adapters import (
    VectorBatch,
    aensure_vector_types,
    as_query_vector,
    ensure_vector_types,
    query_matrix,
    query_vector,
)
from avengers_store.routing.decisions import Candidate, RouteDecision
from avengers_store.routing.methods import RoutingMethod, routing_method
from avengers_store.routing.tradeoffs import PLAIN, CostPolicy, prompt_lengths
from avengers_store.store import driver_errors

NO_ACTIVE_CLUSTERING = (
    "no clustering is active, so nothing can be routed: build one with `avengers recluster` "
    "(or activate a ready one: CALL avengers.activate_clustering(id))."
)


# The columns of avengers.route_row, in its order: what every routing statement selects (all of
# them, so the planner needs no projection over route_pooled's inlined body) and
# decisions_from_rows reads.
ROUTE_COLUMNS = (
    "ord, clustering_id, cluster, distance, rank, model_id, model, mean_score, n, wilson_low, "
    "wilson_high, overall_score, endpoint, served_name, api_key_env, score, expected_cost, "
    "over_budget, utility"
)
ROUTE_MANY_SQL = (
    f"SELECT {ROUTE_COLUMNS}\nFROM avengers.route_many(%b::vector[], %s, %s, %s, %s, %s, %s, "
    "%s::float8, %s::float8, %s::integer[], %s)"
)


def route_vectors(
    conn: psycopg.Connection,
    vectors: Sequence[Any],
    top_n: int = 1,
    *,
    require_endpoint: bool = False,
    method: str | RoutingMethod | None = None,
    policy: CostPolicy = PLAIN,
    prompt_chars: Sequence[int | None] | None = None,
) -> list[RouteDecision]:
    """Route many vectors in one statement (one snapshot of the store); decisions in input order.
    ``method``: a RoutingMethod or preset name (default ``AVENGERS``); ``policy``: the
    quality-cost trade-off (``tradeoffs.CostPolicy``); ``prompt_chars``: each query's length in
    characters, for its expected cost (None: the calibration texts' mean)."""
    params = batch_params(vectors, top_n, require_endpoint, method, policy, prompt_chars)
    if params is None:
        return []
    ensure_vector_types(conn)
    with driver_errors.translated("query vectors"):
        rows = conn.execute(ROUTE_MANY_SQL, params, binary=True).fetchall()
    return decisions_from_rows(rows, len(vectors), policy)


async def aroute_vectors(
    conn: psycopg.AsyncConnection,
    vectors: Sequence[Any],
    top_n: int = 1,
    *,
    require_endpoint: bool = False,
    method: str | RoutingMethod | None = None,
    policy: CostPolicy = PLAIN,
    prompt_chars: Sequence[int | None] | None = None,
) -> list[RouteDecision]:
    """``route_vectors`` on an async connection: the same statement and decisions."""
    params = batch_params(vectors, top_n, require_endpoint, method, policy, prompt_chars)
    if params is None:
        return []
    await aensure_vector_types(conn)
    with driver_errors.translated("query vectors"):
        cursor = await conn.execute(ROUTE_MANY_SQL, params, binary=True)
        rows = await cursor.fetchall()
    return decisions_from_rows(rows, len(vectors), policy)


def batch_params(
    vectors: Sequence[Any],
    top_n: int,
    require_endpoint: bool,
    method: str | RoutingMethod | None,
    policy: CostPolicy = PLAIN,
    prompt_chars: Sequence[int | None] | None = None,
) -> tuple[Any, ...] | None:
    """The checked parameters of ``ROUTE_MANY_SQL`` (None: no vectors)."""
    chosen = routing_method(method)
    if top_n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}", location="top_n")
    chars = prompt_lengths(prompt_chars, len(vectors)) if policy.costed else None
    if len(vectors) == 0:
        return None
    matrix = query_matrix(vectors)
    if matrix is not None:
        queries: Any = VectorBatch(matrix)
    else:
        queries = [
            as_query_vector(v, location=f"query vector {i + 1}") for i, v in enumerate(vectors)
        ]
    return (
        queries,
        top_n,
        require_endpoint,
        *chosen.sql_args(),
        policy.tradeoff,
        policy.max_cost,
        chars,
        policy.completions,
    )


ROUTE_SQL = (
    f"SELECT {ROUTE_COLUMNS}\nFROM avengers.route(%b::vector, {{top_n}}, {{require_endpoint}}, "
    "{neighbours}, {temperature}::float8, {shrinkage}::float8, {dataset_prior}::float8{costs})"
)
ROUTE_POOLED_SQL = (
    f"SELECT {ROUTE_COLUMNS}\nFROM avengers.route_pooled(%b::vector, {{top_n}}, "
    "{require_endpoint}, {neighbours}, {temperature}::float8, {shrinkage}::float8{costs})"
)
# A cost-aware route's arguments: the policy as literals (one statement per policy, like the
# method's numbers), the query's length bound, as it changes with every query.
COST_ARGS = ", {tradeoff}::float8, {max_cost}::float8, %s::integer, {completions}"


@lru_cache(maxsize=256)
def _route_sql(
    template: str,
    top_n: int,
    require_endpoint: bool,
    neighbours: int,
    temperature: float,
    shrinkage: float,
    dataset_prior: float,
    policy: CostPolicy,
) -> str:
    costs = ""
    if policy.costed:
        costs = COST_ARGS.format(
            tradeoff=_float_literal(policy.tradeoff),
            max_cost=_float_literal(policy.max_cost),
            completions=int(policy.completions),
        )
    return template.format(
        top_n=int(top_n),
        require_endpoint="true" if require_endpoint else "false",
        neighbours=int(neighbours),
        temperature=_float_literal(temperature),
        shrinkage=_float_literal(shrinkage),
        dataset_prior=_float_literal(dataset_prior),
        costs=costs,
    )


def _float_literal(value: float | None) -> str:
    return "NULL" if value is None else "'" + repr(float(value)) + "'"


def route_sql(
    top_n: int,
    require_endpoint: bool,
    method: RoutingMethod,
    *,
    pooled: bool = False,
    policy: CostPolicy = PLAIN,
) -> str:
    """The ``avengers.route`` (or, with ``pooled``, ``avengers.route_pooled``) statement for one
    method, top_n, require_endpoint and cost policy, the vector its first parameter (and, with
    a trade-off or ceiling, the query's length its second): settings written as literals are
    cheaper than bound parameters (bench/README.md), and each distinct text is one prepared
    statement on the connection."""
    template = ROUTE_POOLED_SQL if pooled else ROUTE_SQL
    return _route_sql(template, top_n, bool(require_endpoint), *method.sql_args(), policy)


def route_vector(
    conn: psycopg.Connection,
    vector: Any,
    top_n: int = 1,
    *,
    require_endpoint: bool = False,
    method: str | RoutingMethod | None = None,
    policy: CostPolicy = PLAIN,
    prompt_chars: int | None = None,
) -> RouteDecision:
    """Route one vector: its nearest cluster and the top_n active models by routing score, in
    one round trip: ``avengers.route_pooled`` (the served path, a prepared statement), or
    ``avengers.route`` when the method has a dataset-mixture prior, the connection does not
    prepare statements, or route_pooled returned nothing (a clustering it does not serve, or
    none active). Same decisions as ``route_many``. ``policy`` and ``prompt_chars`` as in
    ``route_vectors``."""
    query, pooled, general, params = single_statements(
        vector,
        top_n,
        require_endpoint,
        method,
        conn.prepare_threshold is not None,
        policy,
        prompt_chars,
    )
    ensure_vector_types(conn)
    rows: list[Any] = []
    try:  # not driver_errors.translated(): a generator context manager is slower here
        if pooled is not None:
            rows = conn.execute(pooled, params, prepare=True, binary=True).fetchall()
        if not rows:
            rows = conn.execute(general, params, binary=True).fetchall()
    except psycopg.Error as exc:
        driver_errors.reraise(exc, location="query vector")
    return decisions_from_rows(rows, 1, policy)[0]


async def aroute_vector(
    conn: psycopg.AsyncConnection,
    vector: Any,
    top_n: int = 1,
    *,
    require_endpoint: bool = False,
    method: str | RoutingMethod | None = None,
    policy: CostPolicy = PLAIN,
    prompt_chars: int | None = None,
) -> RouteDecision:
    """``route_vector`` on an async connection: the same statements and decision."""
    query, pooled, general, params = single_statements(
        vector,
        top_n,
        require_endpoint,
        method,
        conn.prepare_threshold is not None,
        policy,
        prompt_chars,
    )
    await aensure_vector_types(conn)
    rows: list[Any] = []
    try:
        if pooled is not None:
            cursor = await conn.execute(pooled, params, prepare=True, binary=True)
            rows = await cursor.fetchall()
        if not rows:
            cursor = await conn.execute(general, params, binary=True)
            rows = await cursor.fetchall()
    except psycopg.Error as exc:
        driver_errors.reraise(exc, location="query vector")
    return decisions_from_rows(rows, 1, policy)[0]


def single_statements(
    vector: Any,
    top_n: int,
    require_endpoint: bool,
    method: str | RoutingMethod | None,
    prepares: bool,
    policy: CostPolicy = PLAIN,
    prompt_chars: int | None = None,
) -> tuple[Any, str | None, str, tuple[Any, ...]]:
    """(checked query vector, the ``route_pooled`` statement or None, the ``avengers.route``
    statement, the parameters of both) for one vector."""
    chosen = routing_method(method)
    if top_n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}", location="top_n")
    query = query_vector(vector)
    params: tuple[Any, ...] = (query,)
    if policy.costed:
        params = (query, prompt_lengths([prompt_chars], 1)[0])
    # route_pooled's body is inlined into this statement, which pays off once the statement is
    # prepared, so it is prepared on first use; a connection that prepares nothing
    # (prepare_threshold None, e.g. behind a transaction-mode pooler) would plan the whole body
    # per call and uses avengers.route, which caches its plan, instead.
    pooled = (
        route_sql(top_n, require_endpoint, chosen, pooled=True, policy=policy)
        if not chosen.dataset_prior and prepares
        else None
    )
    return query, pooled, route_sql(top_n, require_endpoint, chosen, policy=policy), params


def decisions_from_rows(
    rows: Sequence[Sequence[Any]], count: int, policy: CostPolicy = PLAIN
) -> list[RouteDecision]:
    """Group ``avengers.route_row`` rows (ROUTE_COLUMNS, from any routing function) into one
    decision per query, ord 1 to ``count``; ``policy`` is what the route asked for."""
    heads: dict[int, tuple[int, int, float]] = {}
    picks: dict[int, list[Candidate]] = {}
    for (ord_, clustering_id, cluster, distance, rank, model_id, model, mean, n, lo, hi,
         overall, endpoint, served, key_env, score, cost, over, utility) in rows:  # fmt: skip
        found = picks.get(ord_)
        if found is None:
            if clustering_id is None:
                raise StoreStateError(NO_ACTIVE_CLUSTERING)
            heads[ord_] = (clustering_id, cluster, distance)
            found = picks[ord_] = []
        if model is not None:
            found.append(Candidate(model, rank, mean, n, lo, hi, endpoint, served, overall,
                                   model_id, key_env, score, cost, over, utility))  # fmt: skip
    if len(heads) != count:
        raise StoreStateError(NO_ACTIVE_CLUSTERING)
    if policy.costed:
        return [
            RouteDecision(*heads[i], tuple(picks[i]), policy.tradeoff, policy.max_cost)
            for i in range(1, count + 1)
        ]
    return [RouteDecision(*heads[i], tuple(picks[i])) for i in range(1, count + 1)]
