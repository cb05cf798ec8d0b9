"""Production traffic in the next re-cluster: logged vectors of a kind calibration never had get
a cluster of their own (no calibration member), and feedback on them counts there."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from avengers_store.calibration.reclustering import recluster
from avengers_store.store import connections
from avengers_store.testing import seed_store, unit


@pytest.fixture(scope="module")
def store(db_url):
    with connections.connect(db_url) as conn:
        syn = seed_store(conn, n_blobs=4, per_blob=30)
        conn.commit()
    first = recluster(4, stratify="none", url=db_url)
    # 40 answered requests far from every calibration blob, vectors logged, all scored.
    rng = np.random.default_rng(9)
    away = unit(-syn.blobs.sum(axis=0, keepdims=True) + 0.01 * rng.normal(size=(1, syn.dim)))[0]
    points = unit(away + 0.05 * rng.normal(size=(40, syn.dim)))
    with connections.connect(db_url) as conn:
        model = conn.execute("SELECT id FROM avengers.models WHERE name = 'model-6'").fetchone()[0]
        for p in points:
            route = uuid.uuid4()
            conn.execute(
                "INSERT INTO avengers.route_log (route_id, query_hash, clustering_id, cluster, "
                "models, strategy, answer_model) VALUES (%s, 'h', %s, 0, ARRAY['model-6'], 'x', "
                "'model-6')",
                (route, first.id),
            )
            conn.execute(
                "INSERT INTO avengers.route_vectors (route_id, space_id, embedding) "
                "VALUES (%s, %s, %s)",
                (route, syn.space_id, p),
            )
            conn.execute(
                "INSERT INTO avengers.feedback (route_id, model_id, score) VALUES (%s, %s, 1)",
                (route, model),
            )
        conn.commit()
    return db_url, first, away


def test_production_traffic_gets_its_own_cluster_and_its_feedback(store):
    url, first, away = store
    plain = recluster(5, stratify="none", seed=3, url=url)
    with_traffic = recluster(5, stratify="none", seed=3, with_production=True, url=url)
    assert with_traffic.params["production_vectors"] == 40
    assert "production_vectors" not in plain.params
    with connections.connect(url) as conn:
        sizes = dict(
            conn.execute(
                "SELECT cluster, size FROM avengers.centroids WHERE clustering_id = %s",
                (with_traffic.id,),
            ).fetchall()
        )
        empty = [c for c, size in sizes.items() if size == 0]
        assert len(empty) == 1  # the production-only cluster
        plain_empty = conn.execute(
            "SELECT count(*) FROM avengers.centroids WHERE clustering_id = %s AND size = 0",
            (plain.id,),
        ).fetchone()[0]
        assert plain_empty == 0
        centroid = conn.execute(
            "SELECT centroid FROM avengers.centroids WHERE clustering_id = %s AND cluster = %s",
            (with_traffic.id, empty[0]),
        ).fetchone()[0]
        assigned = conn.execute(
            "SELECT count(*) FROM avengers.assignments WHERE clustering_id = %s",
            (with_traffic.id,),
        ).fetchone()[0]
        counted = conn.execute(
            "SELECT cluster, n, mean_score FROM avengers.production_profiles"
        ).fetchall()
        calibration = conn.execute(
            "SELECT n_queries FROM avengers.clusterings WHERE id = %s", (with_traffic.id,)
        ).fetchone()[0]
    assert float(np.dot(centroid.to_numpy(), away)) > 0.9
    assert assigned == calibration  # only calibration queries are assigned
    # The feedback of the first version's routes counts in the new version through the vectors.
    assert counted == [(empty[0], 40, 1.0)]
