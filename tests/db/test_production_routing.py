"""The decision's score pools production outcomes at the policy's weight (the clustering's unless
the policy sets one), in the single and the batch decision alike; weight 0 routes exactly as the
static router; the decision explains the pooling."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest

from avengers_store import AvengersClient, routing
from avengers_store.production.settings import configure
from avengers_store.routing import Policy, RoutingMethod
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model

NEAR_0 = np.array([1.0, 0.05, 0.0, 0.0], dtype=np.float32)
# The nearest cluster's means only: score = (S + w x decayed sum) / (n + w x decayed n).
NEAREST = RoutingMethod("nearest", neighbours=1, temperature=0.1, shrinkage=0.0)


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


def scores(url: str, weight: float | None = None) -> dict[str, float]:
    """The models' scores near cluster 0, in order, checked equal in the single and the batch
    decision."""
    policy = Policy(method=NEAREST, top_n=2, production_weight=weight)
    with connections.connect(url) as conn:
        (single,) = routing.decide(conn, [NEAR_0], policy)
        batch = routing.decide(conn, np.stack([NEAR_0, NEAR_0]), policy)
    assert batch == [single, single]
    return {c.model: c.score for c in single.candidates}


def test_feedback_moves_the_served_score_and_weight_zero_restores_it(store):
    url, cid = store
    static = scores(url)
    assert static == pytest.approx({"alpha": 1.0, "bravo": 0.5}, abs=1e-6)
    assert list(static) == ["alpha", "bravo"]
    feed(url, cid, "bravo", 1.0, 3)
    feed(url, cid, "alpha", 0.0, 3)
    pooled = scores(url)
    # Fresh feedback decays by a hair only (half-life 14 days).
    assert pooled["bravo"] == pytest.approx(4 / 5, abs=1e-5)
    assert pooled["alpha"] == pytest.approx(2 / 5, abs=1e-5)
    assert list(pooled) == ["bravo", "alpha"]
    # Weight 0, from the policy or the clustering's setting: the static router exactly.
    assert scores(url, 0.0) == static and list(scores(url, 0.0)) == list(static)
    configure(production_weight=0.0, url=url)
    try:
        assert scores(url) == static
        # (configure refreshes production: the decay moves by a hair.)
        assert scores(url, 1.0) == pytest.approx(pooled, abs=1e-6)
    finally:
        configure(production_weight=1.0, url=url)
    assert scores(url, 0.5)["bravo"] == pytest.approx(2.5 / 3.5, abs=1e-5)
    half = configure(production_weight=0.5, url=url)
    try:
        assert half.production_weight == 0.5
        assert scores(url)["bravo"] == pytest.approx(2.5 / 3.5, abs=1e-5)
    finally:
        configure(production_weight=1.0, url=url)


def test_the_decision_shows_both_kinds_of_evidence(store):
    url, _ = store
    with AvengersClient(url) as client:
        decision = client.route(NEAR_0, 2, method=NEAREST)
    bravo = next(c for c in decision.candidates if c.model == "bravo")
    assert (bravo.n, bravo.mean_score) == (2, 0.5)  # calibration, as stored
    assert bravo.production_n == 3 and bravo.production_mean == pytest.approx(1.0)
    # The score's denominator: 2 calibration + 3 production outcomes (+ shrinkage 0).
    assert bravo.evidence == pytest.approx(2 + 3, abs=1e-4)
    assert decision.production_weight == 1.0
    text = decision.explain()
    assert "scores pool production outcomes at weight 1" in text
    assert "production 1.000 over 3 feedback rows" in text
    with AvengersClient(url) as client:
        static = client.route(NEAR_0, 2, method=NEAREST, production_weight=0)
    assert static.production_weight == 0.0
    assert [c.model for c in static.candidates] == ["alpha", "bravo"]
    assert static.candidates[1].evidence == pytest.approx(2, abs=1e-6)
    assert "calibration outcomes only (production weight 0)" in static.explain()
