"""Production outcomes in SQL: the triggers' incremental decayed sums against a recount from the
feedback table, replacement and removal, half-life changes, routes counted in the active
version through their logged vectors, and the calibration distance statistics."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from avengers_store.store import connections
from avengers_store.testing import (
    activate,
    add_clustering,
    add_profiles,
    ensure_model,
    unit,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
SPACE = "production-space-3"


@pytest.fixture
def store(db_url):
    """A clustering of 2 clusters (active), two models, and a helper to log routes."""
    conn = connections.connect(db_url)
    try:
        cid = add_clustering(conn, np.eye(2, 3, dtype=np.float32), embedder=SPACE)
        for name in ("alpha", "bravo"):
            ensure_model(conn, name)
        add_profiles(conn, cid, {"alpha": [[1, 0], [0, 0]], "bravo": [[0, 0], [1, 1]]})
        activate(conn, cid)
        yield conn, cid
    finally:
        conn.rollback()
        conn.close()


def log_route(conn, clustering: int, cluster: int, models=("alpha",), vector=None) -> uuid.UUID:
    route = uuid.uuid4()
    conn.execute(
        "INSERT INTO avengers.route_log (route_id, query_hash, clustering_id, cluster, models, "
        "strategy, answer_model) VALUES (%s, 'h', %s, %s, %s, 'self-consistency', %s)",
        (route, clustering, cluster, list(models), models[0]),
    )
    if vector is not None:
        conn.execute(
            "INSERT INTO avengers.route_vectors (route_id, space_id, embedding) "
            "SELECT %s, space_id, %s FROM avengers.clusterings WHERE id = %s",
            (route, np.asarray(vector, dtype=np.float32), clustering),
        )
    return route


def record(conn, route, score, *, at, source="user", model=None) -> None:
    conn.execute(
        "SELECT * FROM avengers.record_feedback(%s, %s, %s, %s, %s)",
        (route, score, model, source, at),
    )


def stats(conn, clustering: int) -> dict[tuple[int, str], tuple]:
    rows = conn.execute(
        "SELECT p.cluster, m.name, p.n, p.score_sum, p.decayed_n, p.decayed_sum, p.as_of "
        "FROM avengers.production_stats p JOIN avengers.models m ON m.id = p.model_id "
        "WHERE p.clustering_id = %s",
        (clustering,),
    ).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def expected(rows: list[tuple[float, datetime]], half_life: timedelta) -> tuple:
    """(n, sum, decayed n, decayed sum, as_of) of (score, at) rows, by the definition."""
    as_of = max(at for _, at in rows)
    w = [0.5 ** ((as_of - at) / half_life) for _, at in rows]
    return (
        len(rows),
        sum(s for s, _ in rows),
        sum(w),
        sum(s * x for (s, _), x in zip(rows, w, strict=True)),
        as_of,
    )


def assert_cells(found: dict, wanted: dict) -> None:
    assert set(found) == set(wanted)
    for key, want in wanted.items():
        n, total, dn, ds, as_of = found[key]
        assert (n, as_of) == (want[0], want[4])
        assert total == pytest.approx(want[1])
        assert dn == pytest.approx(want[2], rel=1e-12)
        assert ds == pytest.approx(want[3], rel=1e-12, abs=1e-12)


def test_incremental_sums_match_the_definition_and_a_recount(store):
    conn, cid = store
    half_life = timedelta(days=14)
    # Out of order on purpose: a late row must be rescaled, an early one discounted.
    plan = [(0, 1.0, 3), (0, 0.0, 10), (0, 1.0, 1), (1, 1.0, 20), (0, 1.0, 30), (1, 0.0, 25)]
    rows: dict[int, list] = {0: [], 1: []}
    for cluster, score, day in plan:
        at = T0 + timedelta(days=day)
        record(conn, log_route(conn, cid, cluster), score, at=at)
        rows[cluster].append((score, at))
    want = {(c, "alpha"): expected(r, half_life) for c, r in rows.items()}
    assert_cells(stats(conn, cid), want)
    conn.execute("CALL avengers.rebuild_production(%s)", (cid,))
    assert_cells(stats(conn, cid), want)


def test_replacing_and_deleting_feedback_uncounts_it(store):
    conn, cid = store
    first = log_route(conn, cid, 0)
    second = log_route(conn, cid, 0)
    record(conn, first, 1.0, at=T0)
    record(conn, second, 1.0, at=T0 + timedelta(days=7))
    record(conn, first, 0.0, at=T0 + timedelta(days=3))  # the same source: replaces
    want = expected(
        [(0.0, T0 + timedelta(days=3)), (1.0, T0 + timedelta(days=7))], timedelta(days=14)
    )
    assert_cells(stats(conn, cid), {(0, "alpha"): want})
    conn.execute("DELETE FROM avengers.feedback WHERE route_id = %s", (second,))
    n, total, dn, ds, _ = stats(conn, cid)[(0, "alpha")]
    assert (n, total, ds) == (1, 0.0, 0.0)
    assert dn == pytest.approx(0.5 ** (4 / 14))  # the kept row, decayed to the cell's as_of
    conn.execute("DELETE FROM avengers.feedback WHERE route_id = %s", (first,))
    assert stats(conn, cid) == {}


def test_changing_the_half_life_recounts_and_weight_zero_changes_no_count(store):
    conn, cid = store
    rows = [(1.0, T0), (0.0, T0 + timedelta(days=2))]
    for score, at in rows:
        record(conn, log_route(conn, cid, 1), score, at=at)
    conn.execute("UPDATE avengers.clusterings SET half_life = '1 day' WHERE id = %s", (cid,))
    assert_cells(stats(conn, cid), {(1, "alpha"): expected(rows, timedelta(days=1))})
    conn.execute("UPDATE avengers.clusterings SET production_weight = 0 WHERE id = %s", (cid,))
    assert stats(conn, cid)[(1, "alpha")][0] == 2


def test_served_profiles_decay_every_cell_to_one_time(store):
    conn, cid = store
    record(conn, log_route(conn, cid, 0), 1.0, at=T0)
    record(conn, log_route(conn, cid, 1), 1.0, at=T0 + timedelta(days=14))
    conn.execute("CALL avengers.refresh_production()")
    served = dict(
        conn.execute(
            "SELECT cluster, decayed_n FROM avengers.production_profiles WHERE model = 'alpha'"
        ).fetchall()
    )
    # Both decay to the later of now() and the newest row: cluster 0 is 14 days older.
    assert served[0] / served[1] == pytest.approx(0.5)


def test_feedback_counts_in_the_active_version_through_the_logged_vector(store, db_url):
    conn, old = store
    here = unit(np.array([[0.2, 1.0, 0.1]]))[0]  # nearest to cluster 1 of both versions
    with_vector = log_route(conn, old, 1, vector=here)
    without = log_route(conn, old, 1)
    record(conn, with_vector, 1.0, at=T0)
    record(conn, without, 0.0, at=T0)
    # A new version of the same space, clusters in another order: the vector lands in its 0.
    new = add_clustering(conn, np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32), embedder=SPACE)
    add_profiles(conn, new, {"alpha": [[1], [1]], "bravo": [[0], [0]]}, dataset="second")
    conn.execute("UPDATE avengers.clusterings SET half_life = '1 day' WHERE id = %s", (new,))
    activate(conn, new)
    assert set(stats(conn, new)) == {(0, "alpha")}
    assert stats(conn, new)[(0, "alpha")][:2] == (1, 1.0)
    assert stats(conn, old)[(1, "alpha")][:2] == (2, 1.0)
    # While the new version serves, feedback on old routes with vectors counts in both.
    later = log_route(conn, old, 1, vector=here)
    record(conn, later, 0.0, at=T0 + timedelta(days=1))
    assert_cells(
        {k: v for k, v in stats(conn, new).items()},
        {(0, "alpha"): expected([(1.0, T0), (0.0, T0 + timedelta(days=1))], timedelta(days=1))},
    )
    assert stats(conn, old)[(1, "alpha")][:2] == (3, 1.0)


def test_distance_profile_is_the_documented_rule(store):
    conn, _ = store
    rng = np.random.default_rng(3)
    centroids = unit(rng.normal(size=(3, 8)))
    cid = add_clustering(conn, centroids, embedder="distance-space-8")
    ds = conn.execute(
        "INSERT INTO avengers.datasets (name) VALUES ('distances') RETURNING id"
    ).fetchone()[0]
    # Cluster 0: 40 queries, cluster 1: 20, cluster 2: 3 (below 5: the clustering's median).
    sizes = [40, 20, 3]
    distances: dict[int, list[float]] = {}
    for cluster, size in enumerate(sizes):
        distances[cluster] = list(rng.uniform(0.1, 0.5 + 0.3 * cluster, size))
        for j, d in enumerate(distances[cluster]):
            qid = conn.execute(
                "INSERT INTO avengers.queries (dataset_id, text, split, content_hash) "
                "VALUES (%s, %s, 'calibration', md5(%s) || md5(%s)) RETURNING id",
                (ds, f"q{cluster}-{j}", f"q{cluster}-{j}", "x"),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO avengers.assignments VALUES (%s, %s, %s, %s)", (cid, qid, cluster, d)
            )
    conn.execute("CALL avengers.store_distance_profile(%s)", (cid,))
    got = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT cluster, n, median, scale, ood_distance FROM avengers.cluster_distances "
            "WHERE clustering_id = %s",
            (cid,),
        )
    }
    stored = {
        c: np.float32(np.array(v, dtype=np.float32)).astype(np.float64)
        for c, v in distances.items()
    }
    everything = np.concatenate(list(stored.values()))
    scale = {
        c: float(np.median(v)) if len(v) >= 5 else float(np.median(everything))
        for c, v in stored.items()
    }
    ratios = np.concatenate([stored[c] / scale[c] for c in stored])
    threshold = float(np.quantile(ratios, 0.99))
    for cluster in range(3):
        n, median, s, ood = got[cluster]
        assert n == sizes[cluster]
        assert median == pytest.approx(float(np.median(stored[cluster])), rel=1e-9)
        assert s == pytest.approx(scale[cluster], rel=1e-9)
        assert ood == pytest.approx(scale[cluster] * threshold, rel=1e-9)
    conn.execute("UPDATE avengers.clusterings SET ood_quantile = 0.5 WHERE id = %s", (cid,))
    half = conn.execute(
        "SELECT ood_distance / scale FROM avengers.cluster_distances "
        "WHERE clustering_id = %s AND cluster = 0",
        (cid,),
    ).fetchone()[0]
    assert half == pytest.approx(float(np.quantile(ratios, 0.5)), rel=1e-9)
