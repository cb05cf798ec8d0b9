"""Clustering stratified by dataset: k split by dataset size, one fit per dataset, and what it is
for — a small dataset that shares a region with a large one keeps a cluster of its own."""

from __future__ import annotations

import numpy as np
import pytest
from avengers_store.cli.testing import run_cli

from avengers_store import routing
from avengers_store.calibration import embedding_spaces, fit, reclustering
from avengers_store.calibration.query_vectors import store_vectors
from avengers_store.errors import InputError
from avengers_store.store import connections
from avengers_store.testing import add_dataset, add_models, add_outcomes, unit

DIM = 8
E0, E1 = np.eye(DIM)[0], np.eye(DIM)[1]


def test_stratum_sizes_split_k_by_size():
    sizes = {"mmlu": 2000, "cmmlu": 2000, "arc": 820, "gsm8k": 1000, "humaneval": 115}
    assert fit.stratum_sizes(sizes, 64) == {
        "arc": 9,
        "cmmlu": 22,
        "gsm8k": 11,
        "humaneval": 1,
        "mmlu": 21,
    }  # fmt: skip (equal remainders: name order decides)
    # Largest remainder; every dataset gets one while k allows, none more than its queries.
    assert fit.stratum_sizes({"x": 3, "y": 3}, 5) == {"x": 3, "y": 2}
    assert fit.stratum_sizes({"a": 5, "b": 1, "c": 1}, 7) == {"a": 5, "b": 1, "c": 1}
    assert fit.stratum_sizes({"a": 90, "b": 1}, 4) == {"a": 3, "b": 1}
    # More datasets than clusters: the smallest shares give way.
    assert fit.stratum_sizes({"a": 5, "b": 1, "c": 1}, 2) == {"a": 1, "b": 0, "c": 1}
    assert sum(fit.stratum_sizes({"a": 7, "b": 11, "c": 13}, 17).values()) == 17


def test_fit_stratified_fits_each_group_on_its_own():
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(60, DIM))).astype(np.float32)
    groups = np.array(["big"] * 45 + ["small"] * 15, dtype=object)
    labels, params = fit.fit_stratified(vectors, groups, 4, "kmeans", seed=1)
    assert params["k_per_dataset"] == {"big": 3, "small": 1}
    assert set(labels[:45]) == {0, 1, 2} and set(labels[45:]) == {3}
    # A group given no cluster keeps -1; partition() places it at its nearest centroid.
    labels, params = fit.fit_stratified(vectors, groups, 1, "kmeans", seed=1)
    assert params["k_per_dataset"] == {"big": 1, "small": 0} and set(labels[45:]) == {-1}
    part = fit.partition(vectors, labels)
    assert len(part.centroids) == 1 and part.sizes.tolist() == [60]
    assert np.allclose(part.centroids[0], vectors[:45].mean(axis=0), atol=1e-6)


@pytest.fixture(scope="module")
def overlapping(db_url) -> tuple[str, np.ndarray]:
    """Dataset ``big`` (40 calibration queries spread widely around e0, model ``m1`` right on
    all) and ``small`` (8 queries packed at e0 + 0.15 e1, only ``m2`` right). Plain K-means with
    k = 2 splits big's wide spread and leaves small inside one half."""
    rng = np.random.default_rng(3)
    with connections.connect(db_url) as c:
        ids = add_models(c, ["m1", "m2"])
        spread = np.zeros((40, DIM))
        spread[:, 2:] = 0.35 * rng.normal(size=(40, DIM - 2))
        big = unit(E0 + spread)
        small = unit(E0 + 0.15 * E1 + 0.01 * rng.normal(size=(8, DIM)))
        qids, vectors, outcomes = [], [], []
        for name, vecs, right in (("big", big, "m1"), ("small", small, "m2")):
            texts = [f"{name} question {i}" for i in range(len(vecs))]
            got = add_dataset(c, name, texts, ["calibration"] * len(vecs))
            qids += got
            vectors.append(vecs)
            outcomes += [(q, ids[m], float(m == right)) for q in got for m in ("m1", "m2")]
        add_outcomes(c, outcomes)
        space = embedding_spaces.get_or_create_space(c, "overlap-8", DIM, {})
        embedding_spaces.activate_space(c, space.id)
        store_vectors(c, space.id, qids, np.vstack(vectors).astype(np.float32))
        c.commit()
    return db_url, big


def _route(conn, vector) -> str:
    (decision,) = routing.decide(conn, [vector], routing.Policy(method=routing.PAPER))
    return decision.candidates[0].model


def test_a_small_dataset_keeps_its_own_cluster(overlapping, conn):
    _, big = overlapping
    probe_small = unit(np.atleast_2d(E0 + 0.15 * E1))[0]
    whole = reclustering.recluster(k=2, seed=0, stratify="none", conn=conn)
    assert whole.params["stratify"] == "none"
    # One fit over everything: small's queries sit in a cluster big dominates.
    assert _route(conn, probe_small) == "m1"
    strat = reclustering.recluster(k=2, seed=0, conn=conn)
    assert strat.params["stratify"] == "dataset"
    assert strat.params["k_per_dataset"] == {"big": 1, "small": 1}
    assert _route(conn, probe_small) == "m2"
    # After the nearest-centroid reassignment small's queries still share one cluster, where m2
    # leads; most of big's queries route to m1.
    (row,) = conn.execute(
        """SELECT array_agg(DISTINCT a.cluster) FROM avengers.assignments a
           JOIN avengers.queries q ON q.id = a.query_id
           JOIN avengers.datasets d ON d.id = q.dataset_id AND d.name = 'small'
           WHERE a.clustering_id = %s""",
        (strat.id,),
    ).fetchone()
    assert len(row) == 1
    assert sum(_route(conn, v) == "m1" for v in big) >= 35


def test_cli_and_library_refuse_an_unknown_stratify(overlapping, cli_env):
    with pytest.raises(InputError, match="^stratify: unknown stratify 'model'") as err:
        reclustering.recluster(k=2, stratify="model", url=cli_env)
    assert err.value.location == "stratify"
    out = run_cli("recluster", "--k", "2", "--stratify", "none").stdout
    assert "stratify=none" in out
