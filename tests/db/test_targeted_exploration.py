"""Targeted exploration inside avengers.decide equals its Python reference
(production.exploration_rule) decision for decision: the same candidate first, the same
explored flag and every candidate's propensity, on random queries, seeds, shares, overlaps,
production weights and ceilings, in clusters that moved and clusters that did not; the
propensities are the frequencies of the draws; the policy field and the clustering's setting
both reach it."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avengers_store import routing
from avengers_store.errors import InputError
from avengers_store.production import exploration_rule as rule
from avengers_store.production.settings import configure, loop_settings
from avengers_store.routing import Policy
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model, unit

DIM = 6
CLUSTERS = 5
MODELS = ("m0", "m1", "m2", "m3", "m4", "m5")
T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def store(db_url) -> str:
    """Five clusters, six models with random calibration means on 4 to 60 outcomes (so some
    candidates are close on thin evidence, others far apart), and feedback that makes m0 fail
    in cluster 0 where calibration had it at its best: cluster 0 moved."""
    rng = np.random.default_rng(7)
    with connections.connect(db_url) as conn:
        cid = add_clustering(conn, unit(rng.normal(size=(CLUSTERS, DIM))).astype(np.float32))
        ids = {name: ensure_model(conn, name) for name in MODELS}
        sizes = rng.integers(4, 60, size=CLUSTERS)
        scores = {}
        for name in MODELS:
            means = rng.uniform(0.2, 0.8, size=CLUSTERS)
            scores[name] = [
                (rng.random(int(n)) < p).astype(float).tolist()
                for n, p in zip(sizes, means, strict=True)
            ]
        scores["m0"][0] = [1.0] * int(sizes[0])
        scores["m1"][0] = [1.0] * (int(sizes[0]) - 1) + [0.0]
        add_profiles(conn, cid, scores)
        activate(conn, cid)
        # m0 fails 40 times in cluster 0, m1 scores as calibrated there.
        for i in range(80):
            name = "m0" if i % 2 == 0 else "m1"
            route = uuid.uuid4()
            at = T0 + timedelta(seconds=i)
            conn.execute(
                "INSERT INTO avengers.route_log (route_id, at, query_hash, clustering_id, "
                "cluster, models, strategy, answer_model) "
                "VALUES (%s, %s, 'h', %s, 0, %s, 'replay', %s)",
                (route, at, cid, [name], name),
            )
            conn.execute(
                "INSERT INTO avengers.feedback (route_id, model_id, score, at) "
                "VALUES (%s, %s, %s, %s)",
                (route, ids[name], 0.0 if name == "m0" else 1.0, at),
            )
        conn.execute("CALL avengers.refresh_production()")
        conn.commit()
    return db_url


def moved_clusters(conn) -> set[int]:
    rows = conn.execute("SELECT cluster FROM avengers.production_evidence WHERE cluster_moved")
    return {r[0] for r in rows}


def test_feedback_moved_a_cluster(store):
    with connections.connect(store) as conn:
        assert moved_clusters(conn) == {0}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    direction=st.lists(st.floats(-1, 1), min_size=DIM, max_size=DIM),
    seed=st.integers(0, 2**62),
    share=st.sampled_from([0.0, 0.02, 0.3, 0.9, 1.0]) | st.floats(0, 1),
    overlap=st.sampled_from([0.0, 0.2, 0.5]) | st.floats(0, 0.99),
    weight=st.sampled_from([0.0, 1.0]),
    paper=st.booleans(),
    ceiling=st.sampled_from([None, 1e-9, 1.0]),
)
def test_sql_equals_the_python_reference(
    store, direction, seed, share, overlap, weight, paper, ceiling
):
    vector = np.asarray(direction, dtype=np.float32)
    if not np.linalg.norm(vector) > 1e-3:
        vector = np.eye(DIM, dtype=np.float32)[0]
    method = routing.PAPER if paper else routing.AVENGERS
    base = Policy(method=method, top_n=len(MODELS), production_weight=weight, max_cost=ceiling)
    with connections.connect(store) as conn:
        plain = routing.decide(conn, [vector], base.replace(exploration="off"))[0]
        explored = routing.decide(
            conn,
            [vector],
            base.replace(
                exploration="targeted", exploration_share=share, exploration_overlap=overlap
            ),
            seeds=[seed],
        )[0]
        moved = plain.cluster in moved_clusters(conn)
    # The reference sees the candidates within the ceiling in the plain order.
    within = [c for c in plain.candidates if not c.over_budget]
    assert [c.model for c in explored.candidates] != [] and plain.cluster == explored.cluster
    if not within:  # nothing fits: the cheapest alone, nothing to explore
        assert explored.candidates[0].model == plain.candidates[0].model
        assert explored.candidates[0].propensity == 1.0
        return
    means = [c.score for c in within]
    counts = [c.evidence for c in within]
    u = rule.hash_uniform(seed, "targeted")
    choice = rule.choose(means, counts, u, share, overlap, moved)
    expected = rule.propensities(means, counts, share, overlap, moved)
    assert explored.candidates[0].model == within[choice.index].model
    assert bool(explored.explored) == choice.explored
    assert explored.exploration == "targeted"
    got = {c.model: c.propensity for c in explored.candidates}
    assert got == pytest.approx({c.model: p for c, p in zip(within, expected, strict=True)})
    # The rest keep the plain order.
    rest = [c.model for c in within if c.model != within[choice.index].model]
    assert [c.model for c in explored.candidates[1:]] == rest


def test_propensities_are_the_frequencies_of_the_draws(store):
    trials = 3000
    policy = Policy(top_n=len(MODELS), exploration="targeted", exploration_share=0.3,
                    exploration_overlap=0.05)  # fmt: skip
    with connections.connect(store) as conn:
        centroid = conn.execute(
            "SELECT centroid FROM avengers.routing_centroids WHERE cluster = 0"
        ).fetchone()[0]
        vector = np.asarray(centroid.to_list(), dtype=np.float32)
        decisions = routing.decide(conn, np.tile(vector, (trials, 1)), policy, seeds=range(trials))
    first = Counter(d.candidates[0].model for d in decisions)
    propensity = {c.model: c.propensity for c in decisions[0].candidates}
    assert sum(propensity.values()) == pytest.approx(1.0)
    # Cluster 0 moved: every candidate is plausible.
    assert sorted(propensity.values()) == pytest.approx([0.06] * 5 + [0.7])
    for model, p in propensity.items():
        assert first[model] / trials == pytest.approx(p, abs=4 * (p * (1 - p) / trials) ** 0.5)
    # Every decision records the same propensities, and exploration where it put another first.
    leader = max(propensity, key=propensity.get)
    for d in decisions:
        assert {c.model: c.propensity for c in d.candidates} == propensity
        assert d.explored == (d.candidates[0].model != leader)


def test_the_draw_and_the_gap_are_pythons(store):
    with connections.connect(store) as conn:
        for seed in (0, 1, 42, 2**62):
            sql = conn.execute("SELECT avengers.hash_uniform(%s, 'targeted')", (seed,)).fetchone()
            assert sql[0] == rule.hash_uniform(seed, "targeted")
        grid = [1e-12, 1e-6, 0.001, 0.02, 0.0749, 0.075, 0.2, 0.425, 0.5, 0.77, 0.925, 0.99]
        for p in grid + np.random.default_rng(3).uniform(0, 1, 200).tolist():
            sql = conn.execute("SELECT avengers.normal_quantile(%s)", (p,)).fetchone()[0]
            assert sql == pytest.approx(NormalDist().inv_cdf(p), rel=1e-15, abs=1e-300)
        assert conn.execute("SELECT avengers.plausibility_gap(0)").fetchone()[0] == float("inf")
        assert conn.execute("SELECT avengers.plausibility_gap(0.2)").fetchone()[0] == (
            rule.plausibility_gap(0.2)
        )


def test_the_clustering_setting_applies_unless_the_policy_sets_one(store):
    with connections.connect(store) as conn:
        before = loop_settings(conn=conn)
        configure(exploration="targeted", exploration_share=1.0, exploration_overlap=0.0,
                  conn=conn)  # fmt: skip
        vector = np.eye(DIM, dtype=np.float32)[1]
        d = routing.decide(conn, [vector], Policy(top_n=len(MODELS)), seeds=[5])[0]
        # Share 1 at overlap 0: every decision explores, each rival with 1 / (candidates - 1).
        assert d.exploration == "targeted" and d.explored
        assert d.candidates[0].propensity == pytest.approx(1 / (len(d.candidates) - 1))
        off = routing.decide(conn, [vector], Policy(top_n=1, exploration="off"), seeds=[5])[0]
        assert off.exploration is None and off.candidates[0].propensity == 1.0
        assert loop_settings(conn=conn).exploration_overlap == 0.0
        conn.rollback()
        assert loop_settings(conn=conn) == before


@pytest.mark.parametrize(
    ("changes", "location"),
    [
        ({"exploration_overlap": 1.0}, "exploration_overlap"),
        ({"exploration_overlap": -0.1}, "exploration_overlap"),
        ({"exploration": "greedy"}, "exploration"),
    ],
)
def test_bad_settings_name_their_field(store, changes, location):
    with pytest.raises(InputError) as caught:
        Policy(**changes)
    assert caught.value.location == location
    with connections.connect(store) as conn, pytest.raises(InputError) as caught:
        configure(conn=conn, **changes)
    assert caught.value.location == location
