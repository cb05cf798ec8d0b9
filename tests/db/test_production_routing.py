"""The served score adds production evidence (the update rule, avengers.production_evidence) at
the clustering's weight; weight 0 routes exactly as the static router, on both routing paths;
the decision explains the pooling."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest

from avengers_store import AvengersClient, routing
from avengers_store.production import update_rule
from avengers_store.production.settings import configure
from avengers_store.routing import RoutingMethod
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model

NEAR_0 = np.array([1.0, 0.05, 0.0, 0.0], dtype=np.float32)
# The nearest cluster's means only: score = (S + w x decayed sum) / (n + w x decayed n).
NEAREST = RoutingMethod("nearest", neighbours=1, temperature=0.1, shrinkage=0.0, dataset_prior=0)
# The same rule through route_many_general (a dataset prior sends it there).
GENERAL = RoutingMethod("general", neighbours=1, temperature=0.1, shrinkage=0.0, dataset_prior=1)


@pytest.fixture(scope="module")
def store(db_url) -> tuple[str, int]:
    with connections.connect(db_url) as conn:
        cid = add_clustering(
            conn, np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32), embedder="pool-4"
        )
        for name in ("alpha", "bravo"):
            ensure_model(conn, name)
        # Cluster 0: alpha 2 of 2, bravo 1 of 2.
        add_profiles(conn, cid, {"alpha": [[1, 1], [0, 0]], "bravo": [[1, 0], [1, 1]]})
        activate(conn, cid)
        conn.commit()
    return db_url, cid


def feed(url: str, cid: int, model: str, score: float, times: int) -> None:
    with psycopg.connect(url) as conn:
        for _ in range(times):
            route = uuid.uuid4()
            conn.execute(
                "INSERT INTO avengers.route_log (route_id, query_hash, clustering_id, cluster, "
                "models, strategy, answer_model) VALUES (%s, 'h', %s, 0, %s, 'self-consistency', "
                "%s)",
                (route, cid, [model], model),
            )
            conn.execute(
                "SELECT avengers.record_feedback(%s, %s, %s, 'test')", (route, score, model)
            )
        conn.execute("CALL avengers.refresh_production()")


def scores(url: str, method: RoutingMethod) -> dict[str, float]:
    with connections.connect(url) as conn:
        decision = routing.route_vector(conn, NEAR_0, 2, method=method)
    return {c.model: c.score for c in decision.candidates}


def expected(url: str, weight: float) -> dict[str, float]:
    """Cluster 0's scores by the update rule's Python reference, from the served inputs."""
    with connections.connect(url) as conn:
        rows = conn.execute(
            """SELECT cp.cluster, cp.model, cp.n, cp.score_sum, coalesce(pp.decayed_n, 0),
                      coalesce(pp.decayed_sum, 0)
               FROM avengers.cluster_profiles cp
               LEFT JOIN avengers.production_profiles pp
                 ON pp.cluster = cp.cluster AND pp.model_id = cp.model_id
               ORDER BY cp.cluster, cp.model"""
        ).fetchall()
    names = sorted({r[1] for r in rows})
    x = np.array([[r[0], names.index(r[1]), *r[2:]] for r in rows], dtype=float)
    ev = update_rule.evidence(x[:, 0].astype(int), x[:, 1].astype(int), x[:, 2], x[:, 3],
                              x[:, 4], x[:, 5], np.zeros(len(x), bool))  # fmt: skip
    mean = (x[:, 3] + weight * ev.delta_sum) / (x[:, 2] + weight * ev.delta_n)
    return {
        names[int(m)]: float(v) for c, m, v in zip(x[:, 0], x[:, 1], mean, strict=True) if c == 0
    }


def test_feedback_moves_the_served_score_and_weight_zero_restores_it(store):
    url, cid = store
    static = scores(url, NEAREST)
    assert static == pytest.approx({"alpha": 1.0, "bravo": 0.5}, abs=1e-6)
    general_static = scores(url, GENERAL)
    feed(url, cid, "bravo", 1.0, 3)
    feed(url, cid, "alpha", 0.0, 3)
    pooled = scores(url, NEAREST)
    assert pooled == pytest.approx(expected(url, 1.0), abs=1e-6)
    # Three rows each are too few to call a change of either model: the cluster's shared change
    # (shrunk toward 0) moves both alike, and calibration's order stands.
    assert list(pooled) == ["alpha", "bravo"] and pooled != static
    assert pooled["alpha"] - pooled["bravo"] == pytest.approx(0.5, abs=1e-6)
    # route_many_general (dataset_prior) still pools the raw decayed sums.
    general = scores(url, GENERAL)
    assert list(general) == ["bravo", "alpha"]
    assert list(general_static) == ["alpha", "bravo"]
    configure(production_weight=0.0, url=url)
    try:
        assert scores(url, NEAREST) == static
        assert scores(url, GENERAL) == general_static
    finally:
        configure(production_weight=1.0, url=url)
    half = configure(production_weight=0.5, url=url)
    try:
        assert half.production_weight == 0.5
        assert scores(url, NEAREST) == pytest.approx(expected(url, 0.5), abs=1e-6)
    finally:
        configure(production_weight=1.0, url=url)


def test_the_decision_shows_both_kinds_of_evidence(store):
    url, _ = store
    with AvengersClient(url) as client:
        decision = client.route(NEAR_0, 2, method=NEAREST)
    bravo = next(c for c in decision.candidates if c.model == "bravo")
    assert (bravo.n, bravo.mean_score) == (2, 0.5)  # calibration, as stored
    assert bravo.production_n == 3 and bravo.production_mean == pytest.approx(1.0)
    assert bravo.evidence == pytest.approx(2 + 3 + 1, abs=1e-4)
    assert decision.production_weight == 1.0
    text = decision.explain()
    assert "pool production outcomes at weight 1 (half-life 14 days)" in text
    assert "production 1.000 over 3 feedback rows" in text
