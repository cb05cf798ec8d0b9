"""Out-of-distribution queries: what a decision the store calls out of distribution gets.

Every decision carries ``novelty``: the query's Mahalanobis distance to its clustering's
calibration Gaussian over the threshold measured on held-out calibration queries
(``routing.novelty``; a version stored without that model: the distance to the nearest centroid
over that cluster's ``ood_distance``, ``avengers.cluster_distances``). ``ood`` is novelty > 1.
The policy, per request or per client:

``flag``
    Route as usual; the decision, the route log and the gateway's headers say so (default).
``best-overall``
    The models with the best calibration mean over every dataset (``model_priors.prior_score``,
    each dataset counting once) instead of the cluster's ranking: the nearest cluster says
    little about a query far from all of them.
``widen``
    Route as usual, and answer with Model-Switch over the top-n: when the first model's samples
    do not agree, the next one joins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import psycopg

from avengers_store.errors import InputError
from avengers_store.routing.decisions import Candidate, RouteDecision
from avengers_store.store import driver_errors

POLICIES = ("flag", "best-overall", "widen")
DEFAULT_POLICY = "flag"

# Per cluster asked for: the top_n eligible models by dataset-balanced calibration mean (ties:
# the store's tie-break order), with their profile entry and production feedback in that cluster.
BEST_OVERALL_SQL = """
SELECT c.cluster, r.model_id, r.name, r.prior_score, r.overall_score, r.endpoint, r.served_name,
       r.api_key_env, e.mean_score, e.n, e.wilson_low, e.wilson_high, coalesce(pp.n, 0),
       pp.decayed_mean
FROM unnest(%s::integer[]) AS c(cluster)
CROSS JOIN LATERAL (
  SELECT mp.model_id, m.name, mp.prior_score, mp.overall_score, mp.tie_rank, m.endpoint,
         coalesce(m.served_name, m.name) AS served_name, m.api_key_env
  FROM avengers.model_priors mp
  JOIN avengers.models m ON m.id = mp.model_id
  WHERE avengers.model_eligible(m.active, m.endpoint, %s)
  ORDER BY mp.prior_score DESC, mp.tie_rank
  LIMIT %s) AS r
LEFT JOIN LATERAL avengers.profile_entry(c.cluster, r.model_id) AS e ON true
LEFT JOIN avengers.production_profiles pp ON pp.cluster = c.cluster AND pp.model_id = r.model_id
ORDER BY c.cluster, r.prior_score DESC, r.tie_rank
"""


def ood_policy(value: str | None) -> str:
    """A checked policy name (None: the default, ``flag``)."""
    if value is None:
        return DEFAULT_POLICY
    if value not in POLICIES:
        raise InputError(
            f"unknown OOD policy {value!r}; choose one of {', '.join(POLICIES)}",
            location="ood_policy",
        )
    return value


def lookups(decisions: Sequence[RouteDecision], policy: str) -> list[int]:
    """The clusters whose best-overall ranking the policy needs (none unless best-overall)."""
    if policy != "best-overall":
        return []
    return sorted({d.cluster for d in decisions if d.ood})


def best_overall_params(
    clusters: Sequence[int], top_n: int, require_endpoint: bool
) -> tuple[Any, ...]:
    return (list(clusters), require_endpoint, top_n)


def rankings(rows: Sequence[Sequence[Any]]) -> dict[int, tuple[Candidate, ...]]:
    """``BEST_OVERALL_SQL`` rows as candidates per cluster, ranked."""
    out: dict[int, list[Candidate]] = {}
    for (cluster, model_id, name, prior, overall, endpoint, served, key_env, mean, n, lo, hi,
         production_n, production_mean) in rows:  # fmt: skip
        found = out.setdefault(cluster, [])
        found.append(
            Candidate(
                name,
                len(found) + 1,
                mean,
                n,
                lo,
                hi,
                endpoint,
                served,
                overall,
                model_id,
                key_env,
                prior,
                production_n=production_n,
                production_mean=production_mean,
            )  # fmt: skip
        )
    return {cluster: tuple(found) for cluster, found in out.items()}


def apply(
    decisions: Sequence[RouteDecision],
    policy: str,
    ranked: dict[int, tuple[Candidate, ...]] | None = None,
) -> list[RouteDecision]:
    """The decisions with the policy applied to the out-of-distribution ones (``ranked``: what
    ``BEST_OVERALL_SQL`` gave for their clusters, under best-overall)."""
    out = []
    for d in decisions:
        if not d.ood:
            out.append(d)
            continue
        candidates = d.candidates
        if policy == "best-overall":
            candidates = (ranked or {}).get(d.cluster, ())
        out.append(dataclasses.replace(d, candidates=candidates, ood_policy=policy))
    return out


def apply_policy(
    conn: psycopg.Connection,
    decisions: Sequence[RouteDecision],
    policy: str,
    top_n: int,
    *,
    require_endpoint: bool = False,
) -> list[RouteDecision]:
    """``apply`` with the best-overall rankings read in one statement when needed."""
    clusters = lookups(decisions, policy)
    ranked = None
    if clusters:
        with driver_errors.translated():
            rows = conn.execute(
                BEST_OVERALL_SQL, best_overall_params(clusters, top_n, require_endpoint)
            ).fetchall()
        ranked = rankings(rows)
    return apply(decisions, policy, ranked)


async def aapply_policy(
    conn: psycopg.AsyncConnection,
    decisions: Sequence[RouteDecision],
    policy: str,
    top_n: int,
    *,
    require_endpoint: bool = False,
) -> list[RouteDecision]:
    """``apply_policy`` on an async connection."""
    clusters = lookups(decisions, policy)
    ranked = None
    if clusters:
        with driver_errors.translated():
            cursor = await conn.execute(
                BEST_OVERALL_SQL, best_overall_params(clusters, top_n, require_endpoint)
            )
            rows = await cursor.fetchall()
        ranked = rankings(rows)
    return apply(decisions, policy, ranked)
