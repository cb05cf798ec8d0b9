"""Decisions carry novelty and ood against the clustering's own novelty model; each OOD
policy does what it says; exploration is recorded on the decision; the CLI shows it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from avengers_store.cli.testing import run_cli

from avengers_store import AvengersClient
from avengers_store.calibration.reclustering import recluster
from avengers_store.errors import InputError
from avengers_store.production.settings import configure
from avengers_store.store import connections
from avengers_store.testing import seed_store, unit


@pytest.fixture(scope="module")
def store(db_url):
    with connections.connect(db_url) as conn:
        syn = seed_store(conn)
        conn.commit()
    recluster(4, url=db_url)
    return db_url, syn


def inside(syn) -> np.ndarray:
    """A calibration query's own vector: as typical as the calibration gets."""
    qid = syn.query_ids["alpha"][0]
    return syn.vectors[qid]


def outside(syn) -> np.ndarray:
    """Opposite to every blob's mean direction: far from all centroids."""
    return unit(-syn.blobs.sum(axis=0, keepdims=True))[0]


def mahalanobis_over_threshold(url: str, vector: np.ndarray) -> float:
    """The documented rule, from the stored rows: sqrt((v - mean)' P (v - mean)) / threshold,
    P the inverse of the covariance the axes and variances spell out."""
    with connections.connect(url) as conn:
        mean, threshold = conn.execute(
            "SELECT p.mean::real[], p.threshold FROM avengers.novelty_profiles p "
            "JOIN avengers.active_clustering k ON k.id = p.clustering_id"
        ).fetchone()
        rows = conn.execute(
            "SELECT x.direction::real[], x.variance FROM avengers.novelty_axes x "
            "JOIN avengers.active_clustering k ON k.id = x.clustering_id ORDER BY x.axis"
        ).fetchall()
    axes = np.array([r[0] for r in rows], dtype=np.float64)
    cov = axes.T @ np.diag([r[1] for r in rows]) @ axes
    v = np.asarray(vector, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    return float(np.sqrt(v @ np.linalg.solve(cov, v))) / threshold


def test_novelty_is_the_mahalanobis_distance_over_the_held_out_threshold(store):
    url, syn = store
    with AvengersClient(url) as client:
        near = client.route(inside(syn), 3)
        far = client.route(outside(syn), 3)
    assert near.novelty == pytest.approx(mahalanobis_over_threshold(url, inside(syn)), rel=1e-4)
    assert far.novelty == pytest.approx(mahalanobis_over_threshold(url, outside(syn)), rel=1e-4)
    assert (near.ood, far.ood) == (False, True)
    assert near.ood_policy is None and far.ood_policy == "flag"
    assert near.production_weight == 1.0
    assert "out of distribution; policy flag" in far.explain()


def test_best_overall_ranks_by_the_calibration_wide_mean(store):
    url, syn = store
    with connections.connect(url) as conn:
        ranking = [
            r[0]
            for r in conn.execute(
                "SELECT m.name FROM avengers.model_priors mp "
                "JOIN avengers.models m ON m.id = mp.model_id "
                "ORDER BY mp.prior_score DESC, mp.tie_rank LIMIT 3"
            ).fetchall()
        ]
    with AvengersClient(url, ood_policy="best-overall") as client:
        far = client.route(outside(syn), 3)
        flagged = client.route(outside(syn), 3, ood_policy="flag")
        near = client.route(inside(syn), 3)
        near_flag = client.route(inside(syn), 3, ood_policy="flag")
    assert [c.model for c in far.candidates] == ranking
    assert far.ood_policy == "best-overall"
    assert flagged.ood_policy == "flag"
    # In distribution, the policy changes nothing.
    assert near.candidates == near_flag.candidates and near.ood_policy is None


def test_widen_marks_the_decision_for_model_switch(store):
    url, syn = store
    with AvengersClient(url) as client:
        far = client.route(outside(syn), 2, ood_policy="widen")
    assert far.ood and far.ood_policy == "widen" and len(far.candidates) == 2


def test_unknown_policy_is_named(store):
    url, syn = store
    with pytest.raises(InputError) as err:
        AvengersClient(url, ood_policy="ignore")
    assert err.value.location == "ood_policy"
    with AvengersClient(url) as client, pytest.raises(InputError):
        client.route(inside(syn), ood_policy="sometimes")


def test_exploration_is_recorded_on_each_decision(store):
    url, syn = store
    configure(exploration="epsilon", exploration_share=1.0, url=url)
    try:
        with AvengersClient(url, seed=3) as client:
            decisions = [client.route(inside(syn), 1) for _ in range(40)]
            batch = client.route_many(np.stack([inside(syn)] * 40), 2)
    finally:
        configure(exploration="off", url=url)
    assert all(d.exploration == "epsilon" and len(d.candidates) == 1 for d in decisions)
    # Every request explores (share 1), among 8 candidates: the first model changes often.
    explored = [d.explored for d in decisions]
    assert 0 < sum(explored) < len(explored)
    assert len({d.model for d in decisions}) > 2
    assert all(len(d.candidates) == 2 and d.explored is not None for d in batch)
    with AvengersClient(url) as client:
        off = client.route(inside(syn), 1)
    assert off.exploration is None and off.explored is None


def test_route_json_shows_ood(store, cli_env, tmp_path):
    url, syn = store
    lines = tmp_path / "q.jsonl"
    lines.write_text(
        "\n".join(json.dumps({"vector": v.tolist()}) for v in (inside(syn), outside(syn))) + "\n"
    )
    out = run_cli("route", "--file", str(lines), "--top-n", "2").output
    near, far = (json.loads(line) for line in out.splitlines())
    assert (near["ood"], far["ood"]) == (False, True)
    assert far["novelty"] > 1 > near["novelty"]
    best = run_cli("route", "--file", str(lines), "--ood-policy", "best-overall").output
    assert json.loads(best.splitlines()[1])["ood_policy"] == "best-overall"


def test_evaluate_measures_the_detector_on_replay(store):
    from avengers_store.evaluation.replay import evaluate

    url, _ = store
    result = evaluate(4, seeds=(1, 2), url=url, progress=False)
    ood = result.ood
    assert ood is not None and ood.ood_datasets == ("gamma",)
    assert 0.0 <= ood.auroc.mean <= 1.0 and len(ood.auroc.values) == 2
    # flag answers with the routed model: the replay's own figures.
    assert ood.policies["flag"].id_macro.mean == pytest.approx(result.id_macro)
    assert ood.policies["flag"].ood_macro.mean == pytest.approx(result.ood_macro)
    # widen's upper bound (best of the top 3 on flagged queries) never scores below flag.
    assert ood.policies["widen"].ood_macro.mean >= ood.policies["flag"].ood_macro.mean


def test_a_setting_change_applies_to_the_next_decision(store):
    url, syn = store
    with AvengersClient(url) as client:
        assert client.route(inside(syn)).exploration is None
        configure(exploration="epsilon", url=url)
        try:
            # The decision reads the clustering's settings in its own statement: no cache.
            assert client.route(inside(syn)).exploration == "epsilon"
        finally:
            configure(exploration="off", url=url)
        assert client.route(inside(syn)).exploration is None
    with pytest.raises(TypeError):
        AvengersClient(url, loop_ttl=60)


PRICES = {"model-0": 0.1, "model-1": 0.2, "model-2": 0.9, "model-3": 0.9, "model-4": 0.9,
          "model-5": 0.9, "model-6": 0.9}  # fmt: skip


def test_best_overall_keeps_the_ceiling_and_prices_every_candidate(store):
    """The named case: a prompt injection routed with --top-n 3 --max-cost --ood-policy
    best-overall gets candidates priced and within the ceiling, ranked by their prior."""
    url, syn = store
    with connections.connect(url) as conn:
        for name, price in PRICES.items():
            conn.execute(
                "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s "
                "WHERE name = %s",
                (price, price, name),
            )
        priors = dict(
            conn.execute(
                "SELECT m.name, mp.prior_score FROM avengers.model_priors mp "
                "JOIN avengers.models m ON m.id = mp.model_id"
            ).fetchall()
        )
        with AvengersClient(url) as client:
            everything = client.route(outside(syn), 7, conn=conn, tradeoff=1.0,
                                      ood_policy="best-overall")  # fmt: skip
            costs = sorted(c.expected_cost for c in everything.candidates)
            ceiling = costs[2]  # room for three, not for the rest
            far = client.route(outside(syn), 3, conn=conn, max_cost=ceiling,
                               ood_policy="best-overall")  # fmt: skip
            flagged = client.route(outside(syn), 3, conn=conn, max_cost=ceiling)
            broke = client.route(outside(syn), 3, conn=conn, max_cost=0.0,
                                 ood_policy="best-overall")  # fmt: skip
        conn.rollback()
    assert everything.ood and everything.ood_policy == "best-overall"
    # Ranked by the prior alone, every model priced.
    assert [c.model for c in everything.candidates] == sorted(priors, key=lambda m: -priors[m])
    assert all(c.score == pytest.approx(priors[c.model]) for c in everything.candidates)
    assert far.ood_policy == "best-overall" and not far.over_budget
    assert all(c.expected_cost is not None and c.expected_cost <= ceiling
               for c in far.candidates)  # fmt: skip
    fitting = [c.model for c in everything.candidates if c.expected_cost <= ceiling]
    assert [c.model for c in far.candidates] == fitting[:3]
    # flag keeps the ceiling too (its ranking is the neighbourhood's).
    assert all(c.expected_cost <= ceiling for c in flagged.candidates)
    # Nothing fits: the cheapest alone, flagged over budget.
    assert broke.over_budget and len(broke.candidates) == 1
    assert broke.model == min(everything.candidates, key=lambda c: c.expected_cost).model
