"""What a routing decision learns from the loop, read after the routing statement: the query's
novelty against its cluster's calibration distances (``avengers.cluster_distances``), the
clustering's loop settings (production weight, half-life, exploration) and each candidate's
production feedback in the nearest cluster (``avengers.production_profiles``). One statement per
decision or batch (``LOOP_SQL``), or one per clustering and ``LoopCache`` period for a client
(``LOOP_ALL_SQL``); then the OOD policy (``routing.ood``) and exploration
(``routing.exploration``) are applied to the annotated decisions (``finish``).

Novelty: the query's Mahalanobis distance to the clustering's calibration Gaussian over its
held-out threshold (``routing.novelty``), so 1 is the clustering's ``ood_quantile`` of held-out
calibration queries; ``ood`` is novelty > 1. A version stored without a novelty model falls
back to distance / ood_distance of the nearest cluster; one without distance statistics either
leaves both None.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from avengers_store.errors import InputError
from avengers_store.routing import exploration as explore_mod
from avengers_store.routing import novelty as novelty_mod
from avengers_store.routing import ood
from avengers_store.routing.decisions import RouteDecision
from avengers_store.store import driver_errors

# Per cluster asked for, in the decisions' clustering: its OOD distance, the clustering's loop
# settings, the production feedback of every model there (count, decayed count and mean), and
# the clustering's novelty threshold (routing.novelty; NULL for a version without one).
LOOP_SQL = """
SELECT c.cluster, d.ood_distance, k.production_weight, k.half_life, k.exploration,
       k.exploration_share, pp.models, pp.ns, pp.decayed_ns, pp.means, nv.threshold
FROM avengers.clusterings k
CROSS JOIN unnest(%s::integer[]) AS c(cluster)
LEFT JOIN avengers.cluster_distances d ON d.clustering_id = k.id AND d.cluster = c.cluster
LEFT JOIN avengers.novelty_profiles nv ON nv.clustering_id = k.id
LEFT JOIN LATERAL (
  SELECT array_agg(p.model_id) AS models, array_agg(p.n) AS ns,
         array_agg(p.decayed_n) AS decayed_ns, array_agg(p.decayed_mean) AS means
  FROM avengers.production_profiles p
  WHERE p.clustering_id = k.id AND p.cluster = c.cluster) AS pp ON true
WHERE k.id = %s
"""

# The same for every cluster of a clustering: what a client caches for a short while.
LOOP_ALL_SQL = """
SELECT c.cluster, d.ood_distance, k.production_weight, k.half_life, k.exploration,
       k.exploration_share, pp.models, pp.ns, pp.decayed_ns, pp.means, nv.threshold
FROM avengers.clusterings k
JOIN avengers.centroids c ON c.clustering_id = k.id
LEFT JOIN avengers.cluster_distances d ON d.clustering_id = k.id AND d.cluster = c.cluster
LEFT JOIN avengers.novelty_profiles nv ON nv.clustering_id = k.id
LEFT JOIN LATERAL (
  SELECT array_agg(p.model_id) AS models, array_agg(p.n) AS ns,
         array_agg(p.decayed_n) AS decayed_ns, array_agg(p.decayed_mean) AS means
  FROM avengers.production_profiles p
  WHERE p.clustering_id = k.id AND p.cluster = c.cluster) AS pp ON true
WHERE k.id = %s
"""


class LoopCache:
    """One clustering's ``LOOP_ALL_SQL`` rows, kept ``ttl`` seconds: a client's routes then
    cost one statement, and a decision's loop data is at most ``ttl`` old (0: read with every
    decision). Cleared by the client's own feedback."""

    def __init__(self, ttl: float) -> None:
        if not ttl >= 0:
            raise InputError(f"loop_ttl must be >= 0, got {ttl}", location="loop_ttl")
        self.ttl = float(ttl)
        self._entry: tuple[int, float, list[Any]] | None = None
        self._lock = threading.Lock()

    def get(self, clustering_id: int) -> list[Any] | None:
        with self._lock:
            entry = self._entry
        if entry is None or entry[0] != clustering_id:
            return None
        return entry[2] if time.monotonic() - entry[1] < self.ttl else None

    def put(self, clustering_id: int, rows: list[Any]) -> None:
        with self._lock:
            self._entry = (clustering_id, time.monotonic(), rows)

    def clear(self) -> None:
        with self._lock:
            self._entry = None


def cacheable(cache: LoopCache | None, decisions: Sequence[RouteDecision]) -> int | None:
    """The one clustering of the decisions when the cache serves them, else None."""
    if cache is None or cache.ttl <= 0 or not decisions:
        return None
    first = decisions[0].clustering_id
    return first if all(d.clustering_id == first for d in decisions) else None


def cached_rows(
    conn: psycopg.Connection, decisions: Sequence[RouteDecision], cache: LoopCache | None
) -> list[Any]:
    """``loop_rows`` through the client's cache: every cluster of the clustering at once."""
    clustering_id = cacheable(cache, decisions)
    if clustering_id is None:
        return loop_rows(conn, decisions)
    assert cache is not None
    rows = cache.get(clustering_id)
    if rows is None:
        with driver_errors.translated():
            rows = conn.execute(LOOP_ALL_SQL, (clustering_id,)).fetchall()
        cache.put(clustering_id, rows)
    return rows


async def acached_rows(
    conn: psycopg.AsyncConnection, decisions: Sequence[RouteDecision], cache: LoopCache | None
) -> list[Any]:
    """``cached_rows`` on an async connection."""
    clustering_id = cacheable(cache, decisions)
    if clustering_id is None:
        return await aloop_rows(conn, decisions)
    assert cache is not None
    rows = cache.get(clustering_id)
    if rows is None:
        with driver_errors.translated():
            cursor = await conn.execute(LOOP_ALL_SQL, (clustering_id,))
            rows = await cursor.fetchall()
        cache.put(clustering_id, rows)
    return rows


def loop_params(decisions: Sequence[RouteDecision]) -> tuple[list[int], int] | None:
    """The parameters of ``LOOP_SQL`` (None: nothing routed)."""
    if not decisions:
        return None
    return sorted({d.cluster for d in decisions}), decisions[0].clustering_id


def novelty_of(distance: float, ood_distance: float | None) -> float | None:
    """distance / ood_distance; a zero ood_distance makes any positive distance infinitely
    novel (the calibration queries all sat on their centroid)."""
    if ood_distance is None:
        return None
    if ood_distance > 0:
        return float(distance) / float(ood_distance)
    return math.inf if distance > 0 else 0.0


def novelty_ids(decisions: Sequence[RouteDecision], rows: Sequence[Sequence[Any]]) -> list[int]:
    """The clusterings whose novelty model the decisions need (those with a threshold)."""
    if not any(row[-1] is not None for row in rows):
        return []
    return sorted({d.clustering_id for d in decisions})


def novelty_models(
    conn: psycopg.Connection,
    decisions: Sequence[RouteDecision],
    rows: Sequence[Sequence[Any]],
    cache: novelty_mod.NoveltyCache,
) -> dict[int, novelty_mod.NoveltyModel | None]:
    """The decisions' clusterings' novelty models, through the cache."""
    return {cid: cache.model(conn, cid) for cid in novelty_ids(decisions, rows)}


async def anovelty_models(
    conn: psycopg.AsyncConnection,
    decisions: Sequence[RouteDecision],
    rows: Sequence[Sequence[Any]],
    cache: novelty_mod.NoveltyCache,
) -> dict[int, novelty_mod.NoveltyModel | None]:
    """``novelty_models`` on an async connection."""
    return {cid: await cache.amodel(conn, cid) for cid in novelty_ids(decisions, rows)}


def _distances(
    decisions: Sequence[RouteDecision],
    vectors: Any,
    models: dict[int, novelty_mod.NoveltyModel | None] | None,
) -> list[float | None]:
    """Each decision's Mahalanobis distance under its clustering's model (None: no model)."""
    out: list[float | None] = [None] * len(decisions)
    if vectors is None or not models:
        return out
    for cid, model in models.items():
        at = [i for i, d in enumerate(decisions) if d.clustering_id == cid]
        if model is None or not at:
            continue
        found = model.distances(np.array([np.asarray(vectors[i], dtype=np.float64) for i in at]))
        for i, value in zip(at, found.tolist(), strict=True):
            out[i] = value
    return out


def annotate(
    decisions: Sequence[RouteDecision],
    rows: Sequence[Sequence[Any]],
    vectors: Any = None,
    models: dict[int, novelty_mod.NoveltyModel | None] | None = None,
) -> list[RouteDecision]:
    """The decisions with ``LOOP_SQL``'s rows filled in: novelty and ood, the clustering's
    settings, and the candidates' production count, decayed mean and evidence (calibration
    outcomes + weight x decayed production count + the prior's one). ``vectors`` (the routed
    vectors, in order) and ``models`` (``novelty_models``) give novelty by the clustering's
    novelty model; without them, or for a version without one, it is distance / ood_distance."""
    per_cluster: dict[int, tuple[Any, ...]] = {row[0]: tuple(row[1:]) for row in rows}
    distances = _distances(decisions, vectors, models)
    out = []
    for d, mahalanobis in zip(decisions, distances, strict=True):
        found = per_cluster.get(d.cluster)
        if found is None:
            out.append(d)
            continue
        (ood_distance, weight, half_life, policy, share, model_ids, ns, decayed, means,
         threshold) = found  # fmt: skip
        production = {
            m: (n, dn, mean)
            for m, n, dn, mean in zip(
                model_ids or (), ns or (), decayed or (), means or (), strict=True
            )
        }
        candidates = []
        for c in d.candidates:
            n, dn, mean = production.get(c.model_id, (0, 0.0, None))
            candidates.append(
                dataclasses.replace(
                    c,
                    production_n=n,
                    production_mean=mean,
                    evidence=float(c.n or 0) + float(weight) * float(dn or 0.0) + 1.0,
                )
            )
        if mahalanobis is not None and threshold is not None:
            novelty: float | None = novelty_mod.novelty(mahalanobis, threshold)
        else:
            novelty = novelty_of(d.distance, ood_distance)
        out.append(
            dataclasses.replace(
                d,
                candidates=tuple(candidates),
                novelty=novelty,
                ood=None if novelty is None else novelty > 1,
                production_weight=float(weight),
                half_life=half_life,
                exploration=policy if policy != "off" else None,
                exploration_share=float(share) if policy != "off" else None,
            )
        )
    return out


def loop_rows(conn: psycopg.Connection, decisions: Sequence[RouteDecision]) -> list[Any]:
    params = loop_params(decisions)
    if params is None:
        return []
    with driver_errors.translated():
        return conn.execute(LOOP_SQL, params).fetchall()


async def aloop_rows(
    conn: psycopg.AsyncConnection, decisions: Sequence[RouteDecision]
) -> list[Any]:
    params = loop_params(decisions)
    if params is None:
        return []
    with driver_errors.translated():
        cursor = await conn.execute(LOOP_SQL, params)
        return await cursor.fetchall()


def needs_pool(decisions: Sequence[RouteDecision], top_n: int) -> bool:
    """Exploration is on and chooses among more candidates than were asked for."""
    return any(d.exploration is not None for d in decisions) and top_n < explore_mod.POOL


def explore_all(
    decisions: Sequence[RouteDecision], top_n: int, rng: np.random.Generator
) -> list[RouteDecision]:
    """Each decision ranked by its clustering's exploration policy, cut to ``top_n``; decisions
    of a clustering without exploration are only cut."""
    out = []
    for d in decisions:
        if d.exploration is None:
            out.append(dataclasses.replace(d, candidates=d.candidates[:top_n]))
        else:
            out.append(explore_mod.explore(d, rng, top_n))
    return out


def settle(
    conn: psycopg.Connection,
    decisions: Sequence[RouteDecision],
    top_n: int,
    policy: str,
    rng: np.random.Generator,
    *,
    require_endpoint: bool = False,
) -> list[RouteDecision]:
    """Annotated decisions with the OOD policy and exploration applied, cut to ``top_n``."""
    decided = ood.apply_policy(conn, decisions, policy, top_n, require_endpoint=require_endpoint)
    return explore_all(decided, top_n, rng)


async def asettle(
    conn: psycopg.AsyncConnection,
    decisions: Sequence[RouteDecision],
    top_n: int,
    policy: str,
    rng: np.random.Generator,
    *,
    require_endpoint: bool = False,
) -> list[RouteDecision]:
    """``settle`` on an async connection."""
    decided = await ood.aapply_policy(
        conn, decisions, policy, top_n, require_endpoint=require_endpoint
    )
    return explore_all(decided, top_n, rng)
