"""avengers.decide / avengers.decide_many against a real PostgreSQL + pgvector: nearest centroid
equals numpy's exact argmin (an exact scan at every k), ranks, tie-breaks, active models only."""

from __future__ import annotations

import numpy as np
import pytest

from avengers_store import routing
from avengers_store.errors import InputError, StoreStateError
from avengers_store.routing import Policy
from avengers_store.testing import (
    activate,
    add_clustering,
    add_profiles,
    ensure_model,
    exact_argmin,
    mean_centroids,
    unit_rows,
)

DIM = 384


def decide(conn, vectors, **policy):
    return routing.decide(conn, vectors, Policy(**policy))


def decide_one(conn, vector, **policy):
    return routing.decide(conn, [vector], Policy(**policy))[0]


def _agreement(conn, queries: np.ndarray, centroids: np.ndarray) -> None:
    truth = exact_argmin(queries, centroids)
    batch = decide(conn, queries)
    assert [d.cluster for d in batch] == truth.tolist()
    singles = [decide_one(conn, q).cluster for q in queries]
    assert singles == truth.tolist()
    # The reported distance is the exact Euclidean distance to the chosen centroid.
    d = np.linalg.norm(queries[:5] - centroids[truth[:5]], axis=1)
    np.testing.assert_allclose([x.distance for x in batch[:5]], d, rtol=1e-5)


@pytest.mark.parametrize("k", [64, 2048])
def test_exact_scan_equals_numpy_argmin(conn, k):
    rng = np.random.default_rng(k)
    centroids = mean_centroids(rng, k, DIM)
    cid = add_clustering(conn, centroids)
    activate(conn, cid)
    _agreement(conn, unit_rows(rng, 1000, DIM), centroids)


def test_random_centroids_at_k_2048_route_exactly(conn):
    # Random points are the hard case for a graph index; the exact scan has no miss to measure.
    rng = np.random.default_rng(7)
    centroids = unit_rows(rng, 2048, DIM)
    cid = add_clustering(conn, centroids)
    activate(conn, cid)
    queries = unit_rows(rng, 300, DIM)
    truth = exact_argmin(queries, centroids)
    assert [d.cluster for d in decide(conn, queries)] == truth.tolist()
    d = decide_one(conn, queries[0])
    assert d.distance == pytest.approx(float(np.linalg.norm(queries[0] - centroids[d.cluster])))
    # No index over the centroids: routing reads them by a scan.
    indexes = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'avengers' "
        "AND tablename IN ('centroids', 'routing_centroids') AND indexdef ILIKE '%%hnsw%%'"
    ).fetchall()
    assert indexes == []


def test_decide_many_keeps_input_order_and_clustering(conn):
    rng = np.random.default_rng(3)
    centroids = mean_centroids(rng, 8, 16)
    cid = add_clustering(conn, centroids)
    activate(conn, cid)
    queries = unit_rows(rng, 50, 16)
    decisions = decide(conn, list(queries))
    assert {d.clustering_id for d in decisions} == {cid}
    assert [d.cluster for d in decisions] == exact_argmin(queries, centroids).tolist()
    # Not normalised on the way in: SQL normalises, so scale does not change the decision.
    assert decide_one(conn, queries[0] * 7.5).cluster == decisions[0].cluster


def test_equidistant_centroids_go_to_the_lower_cluster(conn):
    c = np.zeros((3, 4), dtype=np.float32)
    c[0] = [0, 1, 0, 0]
    c[1] = [1, 0, 0, 0]
    c[2] = [1, 0, 0, 0]  # duplicate of cluster 1
    cid = add_clustering(conn, c)
    activate(conn, cid)
    assert decide_one(conn, [1, 0, 0, 0]).cluster == 1
    assert decide_one(conn, [1, 1, 0, 0]).cluster == 0
    assert [d.cluster for d in decide(conn, [[1, 0, 0, 0], [1, 1, 0, 0]])] == [1, 0]


def _two_cluster_store(conn):
    c = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32)
    cid = add_clustering(conn, c)
    for name in ("alpha", "bravo", "charlie", "delta", "echo"):
        ensure_model(conn, name, endpoint=f"http://127.0.0.1:1/{name}/v1")
    # Cluster 0: alpha = bravo = charlie = 0.5; echo 1.0 (but inactive later); delta 0.0.
    # Overall (both clusters): bravo 0.75 > alpha = charlie 0.5 -> bravo, then alpha, charlie.
    add_profiles(
        conn,
        cid,
        {
            "alpha": [[1, 0], [1, 0]],
            "bravo": [[1, 0], [1, 1]],
            "charlie": [[0, 1], [0, 1]],
            "delta": [[0, 0], [0, 0]],
            "echo": [[1, 1], [1, 1]],
        },
    )
    activate(conn, cid)
    return cid


def test_ties_break_by_overall_score_then_name(conn):
    cid = _two_cluster_store(conn)
    conn.execute("UPDATE avengers.models SET active = false WHERE name = 'echo'")
    conn.execute("CALL avengers.refresh_profiles()")
    decision = decide_one(conn, [1, 0.1, 0, 0], top_n=10, method=routing.PAPER)
    assert decision.clustering_id == cid and decision.cluster == 0
    assert [c.model for c in decision.candidates] == ["bravo", "alpha", "charlie", "delta"]
    assert [c.rank for c in decision.candidates] == [1, 2, 3, 4]
    top = decision.candidates[0]
    assert top.mean_score == 0.5 and top.n == 2 and top.overall_score == 0.75
    assert 0 <= top.wilson_low < 0.5 < top.wilson_high <= 1
    assert top.endpoint == "http://127.0.0.1:1/bravo/v1" and top.served_name == "bravo"
    again = decide_one(conn, [1, 0, 0, 0], top_n=2, method=routing.PAPER)
    assert again.candidates == decision.candidates[:2]
    # The batch form breaks the ties the same way.
    (batch,) = decide(conn, np.array([[1, 0.1, 0, 0]]), top_n=10, method=routing.PAPER)
    assert batch.candidates == decision.candidates
    text = decision.explain()
    assert "cluster 0" in text and "1. bravo" in text
    assert decision.to_dict()["candidates"][0]["model"] == "bravo"


def test_inactive_models_are_never_returned(conn):
    _two_cluster_store(conn)
    decision = decide_one(conn, [1, 0, 0, 0], top_n=10)
    assert decision.model == "echo"
    conn.execute("UPDATE avengers.models SET active = false WHERE name IN ('echo', 'bravo')")
    # Even before the profiles are refreshed, an inactive model is not proposed.
    stale = decide_one(conn, [1, 0, 0, 0], top_n=10, method=routing.PAPER)
    assert [c.model for c in stale.candidates] == ["alpha", "charlie", "delta"]
    conn.execute("CALL avengers.refresh_profiles()")
    fresh = decide(conn, [[1, 0, 0, 0], [0, 1, 0, 0]], top_n=10)
    for d in fresh:
        assert {"echo", "bravo"}.isdisjoint(c.model for c in d.candidates)
        assert [c.rank for c in d.candidates] == list(range(1, len(d.candidates) + 1))


def test_require_endpoint_and_models_filter_the_candidates(conn):
    _two_cluster_store(conn)
    conn.execute("UPDATE avengers.models SET endpoint = NULL WHERE name = 'echo'")
    assert decide_one(conn, [1, 0, 0, 0]).model == "echo"
    callable_ = decide_one(conn, [1, 0, 0, 0], top_n=2, require_endpoint=True, method="paper")
    assert [(c.model, c.rank) for c in callable_.candidates] == [("bravo", 1), ("alpha", 2)]
    chosen = decide_one(conn, [1, 0, 0, 0], top_n=5, models=("delta", "charlie"), method="paper")
    assert [(c.model, c.rank) for c in chosen.candidates] == [("charlie", 1), ("delta", 2)]


def test_only_the_active_clustering_routes(conn):
    first = add_clustering(conn, np.array([[1, 0], [0, 1]], dtype=np.float32))
    second = add_clustering(conn, np.array([[0, 1], [1, 0], [-1, 0]], dtype=np.float32))
    activate(conn, first)
    d = decide_one(conn, [1, 0])
    assert (d.clustering_id, d.cluster) == (first, 0)
    activate(conn, second)
    d = decide_one(conn, [1, 0])
    assert (d.clustering_id, d.cluster, d.candidates) == (second, 1, ())
    # A policy naming a clustering routing does not serve is refused by name.
    with pytest.raises(StoreStateError, match=f"clustering {first} is not one routing serves"):
        decide_one(conn, [1, 0], clustering_id=first)
    assert decide_one(conn, [1, 0], clustering_id=second).cluster == 1


def test_no_active_clustering_is_a_clear_error(conn):
    with pytest.raises(StoreStateError, match="no clustering is active"):
        decide_one(conn, [1.0, 0.0])
    with pytest.raises(StoreStateError, match="no clustering is active"):
        decide(conn, [[1.0, 0.0], [0.0, 1.0]])


def test_bad_vectors_are_input_errors(conn):
    cid = add_clustering(conn, np.eye(4, dtype=np.float32))
    activate(conn, cid)
    with pytest.raises(InputError, match="query vector 2 has 3 dimensions where query vector 1"):
        decide(conn, [[1, 0, 0, 0], [1, 0, 0]])
    with pytest.raises(InputError, match="query vector 1.*4 dimensions"), conn.transaction():
        decide_one(conn, [1, 0, 0])
    with pytest.raises(InputError, match="query vector 1.*4 dimensions"), conn.transaction():
        decide(conn, np.ones((3, 5), dtype=np.float32))
    with pytest.raises(InputError, match="finite and non-zero"):
        decide_one(conn, [0, 0, 0, 0])
    with pytest.raises(InputError, match="finite and non-zero"):
        decide_one(conn, [1, float("nan"), 0, 0])
    with pytest.raises(InputError, match="flat list"):
        decide_one(conn, [[1, 0], [0, 1]])
    with pytest.raises(InputError, match="top_n"):
        decide_one(conn, [1, 0, 0, 0], top_n=0)
    with pytest.raises(InputError) as err:
        decide(conn, [])
    assert err.value.location == "queries"


READERS = ("route", "decide", "decide_many", "decide_query", "candidates", "routing_context",
           "novelty")  # fmt: skip


def test_functions_are_stable(conn):
    # STABLE: every read inside one statement (decide_many over thousands of vectors) uses that
    # statement's snapshot, so a concurrent clustering switch is seen entirely or not at all.
    rows = conn.execute(
        """SELECT p.proname, p.provolatile
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'avengers'
             AND p.proname = ANY (%s)""",
        (list(READERS),),
    ).fetchall()
    assert {r[0] for r in rows} == set(READERS)
    assert all(r[1] == "s" for r in rows)
