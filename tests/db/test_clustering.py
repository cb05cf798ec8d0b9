"""Re-clustering against a real PostgreSQL on small synthetic vectors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from avengers_store.calibration import clusterings, fit, reclustering
from avengers_store.calibration.reclustering import recluster
from avengers_store.errors import AvengersError, InputError, NotFound, StoreStateError
from avengers_store.store import connections
from avengers_store.testing import seed_store, throwaway_database


@pytest.fixture(scope="module")
def seeded(db_url):
    with connections.connect(db_url) as c:
        syn = seed_store(c)
        c.commit()
    return syn


def _profile_rows(c):
    return c.execute(
        "SELECT clustering_id, cluster, model, n, mean_score, rank FROM avengers.cluster_profiles "
        "ORDER BY cluster, model"
    ).fetchall()


def test_recluster_writes_an_active_version(conn, seeded):
    result = recluster(k=4, seed=1, conn=conn)
    assert result.status == "active" and result.k == 4 and result.algorithm == "kmeans"
    n_cal = sum(1 for d in ("alpha", "beta") for _ in seeded.query_ids[d]) * 0.7
    assert result.n_queries == round(n_cal)
    assert result.params["n_init"] == fit.KMEANS_N_INIT
    assert result.params["datasets"] == {"alpha": 42, "beta": 42}
    sizes = conn.execute(
        "SELECT size FROM avengers.centroids WHERE clustering_id = %s ORDER BY cluster",
        (result.id,),
    ).fetchall()
    assert [s[0] for s in sizes] == sorted((s[0] for s in sizes), reverse=True)
    assert sum(s[0] for s in sizes) == result.n_queries
    # OOD and test queries are never clustered.
    leaked = conn.execute(
        """SELECT count(*) FROM avengers.assignments a JOIN avengers.queries q ON q.id = a.query_id
           JOIN avengers.datasets d ON d.id = q.dataset_id
           WHERE a.clustering_id = %s AND (d.is_ood OR q.split <> 'calibration')""",
        (result.id,),
    ).fetchone()[0]
    assert leaked == 0
    # Each blob is one cluster and its best model ranks first there.
    winners = conn.execute(
        """SELECT a.cluster, min(p.model) FILTER (WHERE p.rank = 1)
           FROM avengers.assignments a JOIN avengers.cluster_profiles p USING (cluster)
           WHERE a.clustering_id = %s GROUP BY a.cluster""",
        (result.id,),
    ).fetchall()
    blob_of_cluster = {}
    for qid, cl in conn.execute(
        "SELECT query_id, cluster FROM avengers.assignments WHERE clustering_id = %s", (result.id,)
    ).fetchall():
        blob_of_cluster.setdefault(cl, set()).add(seeded.blob_of[qid])
    assert all(len(b) == 1 for b in blob_of_cluster.values())
    for cl, winner in winners:
        (blob,) = blob_of_cluster[cl]
        assert winner == seeded.best_model[blob]


@pytest.mark.parametrize("algorithm", fit.ALGORITHMS)
def test_assignments_are_nearest_stored_centroid(conn, seeded, algorithm):
    result = recluster(k=6, algorithm=algorithm, seed=3, conn=conn)
    assert result.algorithm == algorithm and 1 <= result.k <= 6
    mismatched = conn.execute(
        """SELECT count(*) FROM avengers.assignments a
           JOIN avengers.query_embeddings e ON e.query_id = a.query_id
           CROSS JOIN LATERAL (
               SELECT c.cluster, c.centroid <-> e.embedding AS d FROM avengers.centroids c
               WHERE c.clustering_id = a.clustering_id ORDER BY c.centroid <-> e.embedding LIMIT 1
           ) nearest
           WHERE a.clustering_id = %s
             AND (nearest.cluster <> a.cluster OR abs(nearest.d - a.distance) > 1e-4)""",
        (result.id,),
    ).fetchone()[0]
    assert mismatched == 0
    # Centroids are member means of the algorithm's clusters; here (well-separated blobs) they
    # are also the means of the final members.
    rows = conn.execute(
        "SELECT cluster, centroid FROM avengers.centroids WHERE clustering_id = %s",
        (result.id,),
    ).fetchall()
    members = conn.execute(
        "SELECT cluster, query_id FROM avengers.assignments WHERE clustering_id = %s",
        (result.id,),
    ).fetchall()
    for cl, centroid in rows:
        centroid = reclustering._as_array(centroid)
        ids = [q for c, q in members if c == cl]
        mean = np.mean([seeded.vectors[q] for q in ids], axis=0)
        if algorithm in ("kmeans", "minibatch-kmeans"):
            assert np.allclose(centroid, mean, atol=1e-5)
        assert len(ids) > 0


def test_partition_reassigns_and_drops_empty_clusters():
    vectors = np.array([[0.0, 1.0], [0.0, 0.9], [1.0, 0.0], [0.9, 0.0], [0.6, 0.5]], np.float32)
    # Label 2 owns only a point that is closer to the mean of label 0: it empties and goes away.
    labels = np.array([0, 0, 1, 1, 2])
    part = fit.partition(vectors, np.array([0, 0, 1, 1, 1]))
    assert part.labels.tolist() == [1, 1, 0, 0, 0]  # renumbered: largest first
    part = fit.partition(vectors[:4], labels[:4])
    assert len(part.centroids) == 2 and part.sizes.tolist() == [2, 2]


def test_failure_after_centroids_keeps_previous_version(db_url, seeded, monkeypatch):
    before = recluster(k=4, seed=1, url=db_url)
    with connections.connect(db_url) as c:
        profiles_before = _profile_rows(c)
        count_before = c.execute("SELECT count(*) FROM avengers.clusterings").fetchone()[0]

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while writing assignments")

    monkeypatch.setattr(clusterings, "_write_assignments", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        recluster(k=3, seed=2, url=db_url)
    with connections.connect(db_url) as c:
        assert clusterings.active_clustering(conn=c).id == before.id
        assert _profile_rows(c) == profiles_before
        assert c.execute("SELECT count(*) FROM avengers.clusterings").fetchone()[0] == count_before


def test_fit_failure_keeps_previous_version(db_url, seeded, monkeypatch):
    before = clusterings.active_clustering(url=db_url) or recluster(k=4, seed=1, url=db_url)

    def bad_fit(*args, **kwargs):
        raise ValueError("singular matrix")

    monkeypatch.setattr(fit, "fit_labels", bad_fit)
    with pytest.raises(AvengersError, match="kmeans fit failed on 84 vectors: singular matrix"):
        recluster(k=4, url=db_url)
    assert clusterings.active_clustering(url=db_url).id == before.id


def test_no_activate_keep_and_rollback(db_url, seeded):
    first = recluster(k=4, seed=1, url=db_url)
    second = recluster(k=5, seed=1, url=db_url, activate=False)
    assert second.status == "ready"
    assert clusterings.active_clustering(url=db_url).id == first.id
    third = recluster(k=3, seed=1, url=db_url, keep=1)
    kept = {c.id: c.status for c in clusterings.list_clusterings(url=db_url)}
    assert kept == {third.id: "active", second.id: "ready"}
    # Roll back to the previous version, from the library (same procedure as psql).
    back = clusterings.activate_clustering(second.id, url=db_url)
    assert back.status == "active"
    with connections.connect(db_url) as c:
        served = {r[0] for r in c.execute("SELECT clustering_id FROM avengers.cluster_profiles")}
    assert served == {second.id}
    with pytest.raises(StoreStateError, match="active"):
        clusterings.remove_clustering(second.id, url=db_url)
    clusterings.remove_clustering(third.id, url=db_url)
    with pytest.raises(NotFound):
        clusterings.activate_clustering(third.id, url=db_url)


def test_clear_errors(conn, seeded):
    with pytest.raises(InputError, match="larger than the number of calibration queries"):
        recluster(k=500, conn=conn)
    with pytest.raises(InputError, match="unknown algorithm"):
        recluster(k=4, algorithm="dbscan", conn=conn)


def test_errors_on_missing_embeddings_and_outcomes(empty_store_url):
    with connections.connect(empty_store_url) as c:
        with pytest.raises(StoreStateError, match="no embedding space"):
            recluster(k=2, conn=c)
        c.rollback()
        seed_store(c, embed=False)
        from avengers_store.calibration import embedding_spaces

        space = embedding_spaces.get_or_create_space(c, "synthetic-16", 16, {})
        embedding_spaces.activate_space(c, space.id)
        with pytest.raises(StoreStateError, match="no embeddings"):
            recluster(k=2, conn=c)
        c.rollback()
        seed_store(c)
        c.execute("DELETE FROM avengers.outcomes")
        with pytest.raises(StoreStateError, match="no outcomes"):
            recluster(k=2, conn=c)
        c.rollback()


@pytest.fixture(scope="module")
def empty_store_url(pg_admin_url, template_db):
    with throwaway_database(pg_admin_url, template=template_db) as url:
        yield url


def test_cli_recluster_list_activate_remove(cli_env, seeded):
    import json

    from avengers_store.cli.testing import run_cli, run_cli_error

    first = json.loads(run_cli("recluster", "--k", "4", "--json").stdout)
    assert first["status"] == "active" and first["k"] == 4
    text = run_cli("recluster", "--k", "3", "--seed", "7").stdout
    assert f"now active (was {first['id']})" in text
    assert f"avengers clusterings activate {first['id']}" in text
    second_id = clusterings.active_clustering(url=cli_env).id
    listed = json.loads(run_cli("clusterings", "list", "--json").stdout)
    assert [c["id"] for c in listed][:2] == [second_id, first["id"]]
    assert "requested_k" in listed[0]["params"]
    assert [c["stratify"] for c in listed][:2] == ["dataset", "dataset"]
    text = run_cli("clusterings", "list").stdout
    assert "stratify" in text.splitlines()[0] and "dataset" in text
    rolled_back = run_cli("clusterings", "activate", str(first["id"])).stdout
    assert f"is active (was {second_id})" in rolled_back
    assert "(already was)" in run_cli("clusterings", "activate", str(first["id"])).stdout
    assert clusterings.active_clustering(url=cli_env).id == first["id"]
    assert isinstance(
        run_cli_error("clusterings", "remove", str(first["id"]), "--yes"), StoreStateError
    )
    run_cli("clusterings", "remove", str(second_id), "--yes")
    assert isinstance(run_cli_error("clusterings", "activate", "9999"), NotFound)
    with pytest.raises(InputError) as err:
        recluster(k=0, url=cli_env)
    assert err.value.location == "k"
    too_few = run_cli_error("recluster", "--k", "0")
    assert too_few.location == "--k" and str(too_few) == "--k: k must be at least 1, got 0"
    too_many = run_cli_error("recluster", "--k", "1000")
    assert isinstance(too_many, InputError) and too_many.location == "--k"
    assert "choose a smaller k" in str(too_many)
    ready = run_cli("recluster", "--k", "2", "--no-activate").stdout
    assert "stored as ready" in ready


def test_large_inputs_fit_kmeans_as_minibatch(conn, seeded, monkeypatch):
    # alpha and beta have 42 calibration queries each: above 30 per dataset, 84 in all.
    monkeypatch.setattr(fit, "MINIBATCH_THRESHOLD", 30)
    result = recluster(k=4, conn=conn)
    assert result.algorithm == "kmeans"
    assert result.params["fit"] == "minibatch-kmeans (more than 30 vectors) in alpha, beta"
    assert result.params["k_per_dataset"] == {"alpha": 2, "beta": 2}
    assert "batch_size" in result.params and result.k == 4
    whole = recluster(k=4, stratify="none", conn=conn)
    assert whole.params["fit"] == "minibatch-kmeans (more than 30 vectors)"
    assert whole.params["stratify"] == "none" and "k_per_dataset" not in whole.params
    # Only b above the threshold: each dataset's own fit parameters are kept.
    monkeypatch.setattr(fit, "MINIBATCH_THRESHOLD", 41)
    mixed = fit.fit_stratified(
        np.zeros((83, 2)) + np.arange(83)[:, None], np.array(["a"] * 41 + ["b"] * 42), 4,
        "kmeans", seed=0,
    )[1]  # fmt: skip
    assert mixed["fit"] == "minibatch-kmeans (more than 41 vectors) in b"
    assert mixed["fit_per_dataset"]["a"]["n_init"] == fit.KMEANS_N_INIT
    assert "batch_size" in mixed["fit_per_dataset"]["b"]


def test_concurrent_reader_sees_the_old_version_until_commit(db_url, seeded, monkeypatch):
    old = recluster(k=4, seed=1, url=db_url)
    seen = {}
    real_write = clusterings._write_assignments

    # Called in the switch transaction, once the new version's centroids are written.
    def observe(c, clustering_id, *args):
        real_write(c, clustering_id, *args)
        with connections.connect(db_url) as reader:
            seen["active"] = reader.execute(
                "SELECT id FROM avengers.clusterings WHERE status = 'active'"
            ).fetchone()[0]
            seen["profiles"] = {
                r[0] for r in reader.execute("SELECT clustering_id FROM avengers.cluster_profiles")
            }
            seen["centroids"] = reader.execute(
                "SELECT count(*) FROM avengers.centroids WHERE clustering_id = %s",
                (clustering_id,),
            ).fetchone()[0]

    monkeypatch.setattr(clusterings, "_write_assignments", observe)
    new = recluster(k=3, seed=2, url=db_url)
    assert seen == {"active": old.id, "profiles": {old.id}, "centroids": 0}
    with connections.connect(db_url) as reader:
        served = {
            r[0] for r in reader.execute("SELECT clustering_id FROM avengers.cluster_profiles")
        }
    assert served == {new.id}


def _waiting_on_clusterings(c) -> int:
    """Backends waiting for a lock on avengers.clusterings."""
    return c.execute(
        "SELECT count(*) FROM pg_locks WHERE relation = 'avengers.clusterings'::regclass "
        "AND NOT granted"
    ).fetchone()[0]


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_racing_reclusters_each_report_the_version_they_replaced(db_url, seeded):
    original = recluster(k=4, seed=1, url=db_url)
    results: list = []
    errors: list = []

    def run(seed: int) -> None:
        try:
            results.append(recluster(k=3, seed=seed, url=db_url))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with connections.connect(db_url) as blocker:
        # An activation in progress elsewhere: both re-clusters fit, then queue behind it.
        blocker.execute("LOCK TABLE avengers.clusterings IN SHARE ROW EXCLUSIVE MODE")
        threads = [threading.Thread(target=run, args=(seed,)) for seed in (2, 3)]
        for t in threads:
            t.start()
        with connections.connect(db_url, autocommit=True) as watcher:
            _wait_for(lambda: _waiting_on_clusterings(watcher) == 2)
        blocker.rollback()
    for t in threads:
        t.join(timeout=120)
    assert errors == []  # in particular no deadlock between the two
    # The one that switched first replaced the original, the other replaced it (activated_at is
    # each transaction's start, so it cannot tell the order).
    served = clusterings.active_clustering(url=db_url).id
    second = next(r for r in results if r.id == served)
    first = next(r for r in results if r.id != served)
    assert (first.replaced, second.replaced) == (original.id, first.id)


def test_racing_recluster_commands_print_the_version_they_replaced(db_url, seeded):
    original = recluster(k=4, seed=1, url=db_url)
    env = {**os.environ, "AVENGERS_DATABASE_URL": db_url}
    command = [sys.executable, "-m", "avengers_store.cli.main", "recluster", "--k", "3"]
    with connections.connect(db_url) as blocker:
        blocker.execute("LOCK TABLE avengers.clusterings IN SHARE ROW EXCLUSIVE MODE")
        procs = [
            subprocess.Popen(
                [*command, "--seed", str(seed)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (2, 3)
        ]
        with connections.connect(db_url, autocommit=True) as watcher:
            _wait_for(lambda: _waiting_on_clusterings(watcher) == 2)
        blocker.rollback()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reported = {}
    for out, _ in outputs:
        made = int(re.search(r"^clustering (\d+):", out, re.M).group(1))
        reported[made] = int(re.search(r"now active \(was (\d+)\)", out).group(1))
    second = clusterings.active_clustering(url=db_url).id
    first = next(i for i in reported if i != second)
    assert reported == {first: original.id, second: first}
