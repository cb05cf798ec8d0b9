"""Latency-aware routing: each model's measured latency near a query (the route log's usage,
pooled like the scores), ``max_latency_ms`` as a ceiling and ``latency_weight`` in the
trade-off, composing with the cost rules in the one decision (``avengers.decide``)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from avengers_store import routing
from avengers_store.answering import route_log
from avengers_store.routing import Policy
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model

# Cluster 0: alpha is best (0.9), bravo good (0.7), charlie poor (0.3); one cluster far away.
SCORES = {
    "alpha": [[1] * 9 + [0], [0] * 10],
    "bravo": [[1] * 7 + [0] * 3, [0] * 10],
    "charlie": [[1] * 3 + [0] * 7, [1] * 10],
}
# Milliseconds per model request the route log measured for each model near cluster 0.
LATENCY = {"alpha": 900.0, "bravo": 120.0, "charlie": 40.0}
QUERY = np.array([1.0, 0.05, 0.0, 0.0], dtype=np.float32)


@pytest.fixture(scope="module")
def store(db_url):
    from avengers_store.store import connections

    with connections.connect(db_url) as conn:
        cid = add_clustering(conn, np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
        for name in SCORES:
            ensure_model(conn, name)
        add_profiles(conn, cid, SCORES)
        activate(conn, cid)
        # A query farther than 0.5 from both centroids is out of distribution.
        conn.execute(
            "UPDATE avengers.cluster_distances SET scale = 0.25, ood_distance = 0.5 "
            "WHERE clustering_id = %s",
            (cid,),
        )
        # Requests answered in cluster 0, as a client logs them: a model's wall time in usage.
        rows = []
        for name, ms in LATENCY.items():
            for _ in range(4):
                rows.append(
                    {
                        "route_id": str(uuid.uuid4()), "query_hash": "h", "clustering_id": cid,
                        "cluster": 0, "distance": 0.1, "models": [name], "strategy": "direct",
                        "samples": 1, "latency_ms": ms, "answer_model": name,
                        "metadata": {"usage": [{"model": name, "samples": 1, "tokens_out": 50,
                                                "latency_ms": ms, "requests": 1}]},
                    }
                )  # fmt: skip
        route_log.write(conn, rows)
        conn.execute("CALL avengers.refresh_profiles()")
        conn.commit()
    return db_url


def _decide(conn, **changes):
    return routing.decide(conn, [QUERY], Policy(top_n=3, **changes))[0]


def test_expected_latency_is_measured_and_shrunk_toward_the_models_mean(store, conn):
    d = _decide(conn, latency_weight=0.0)
    latency = {c.model: c.expected_latency_ms for c in d.candidates}
    # Pooled near cluster 0 (all requests were there), shrunk by one pseudo-request of the mean.
    for name, ms in LATENCY.items():
        assert latency[name] == pytest.approx(ms, rel=1e-3)
    # A plain decision computes none (the latency term costs nothing unless asked).
    assert all(c.expected_latency_ms is None for c in _decide(conn).candidates)


def test_a_latency_ceiling_keeps_to_the_models_under_it(store, conn):
    plain = _decide(conn)
    assert [c.model for c in plain.candidates] == ["alpha", "bravo", "charlie"]
    fast = _decide(conn, max_latency_ms=500)
    assert [c.model for c in fast.candidates] == ["bravo", "charlie"]
    assert not fast.over_budget
    # Nothing fits: one candidate, flagged, never silently dropped.
    none = _decide(conn, max_latency_ms=10)
    assert len(none.candidates) == 1 and none.over_budget


def test_the_latency_weight_trades_quality_for_speed(store, conn):
    by_quality = _decide(conn, latency_weight=0.0)
    assert by_quality.candidates[0].model == "alpha"
    by_speed = _decide(conn, latency_weight=1.0)
    assert [c.model for c in by_speed.candidates] == ["charlie", "bravo", "alpha"]
    # In between, the utility blends both and stays in [0, 1].
    mixed = _decide(conn, latency_weight=0.5)
    assert all(0.0 <= c.utility <= 1.0 for c in mixed.candidates)
    assert mixed.candidates[0].model == "bravo"


def test_latency_composes_with_the_cost_ceiling_and_the_ood_substitution(store, conn):
    # Both ceilings hold at once; a cost ceiling no model fits flags the decision.
    both = _decide(conn, max_latency_ms=500, max_cost=1.0)
    assert {c.model for c in both.candidates} == {"bravo", "charlie"}
    priced_out = _decide(conn, max_latency_ms=500, max_cost=1e-12)
    assert len(priced_out.candidates) == 1 and priced_out.over_budget
    # An out-of-distribution query under best-overall is ranked by priors within the ceiling.
    far = np.array([-1.0, -1.0, 0.0, 0.0], dtype=np.float32)
    d = routing.decide(
        conn, [far], Policy(top_n=3, ood_policy="best-overall", max_latency_ms=500),
    )[0]  # fmt: skip
    assert d.ood and d.ood_policy == "best-overall"
    assert {c.model for c in d.candidates} == {"bravo", "charlie"}
    assert [c.score for c in d.candidates] == sorted([c.score for c in d.candidates], reverse=True)


def test_bad_latency_options_name_the_field(store, conn):
    with pytest.raises(Exception) as caught:
        Policy(latency_weight=2)
    assert "latency_weight" in str(caught.value)
    with pytest.raises(Exception) as caught:
        conn.execute(
            "SELECT * FROM avengers.decide('[1,0,0,0]', avengers.policy(max_latency_ms => -1))"
        )
    assert "max_latency_ms" in str(caught.value)
