"""Exploration inside avengers.decide: thompson draws from the candidates' posteriors, epsilon
puts a uniformly drawn candidate first with its share, the rest keep the plain order, the draws
come from the seed (the single decision equals the batch one), a ceiling and a pinned model are
kept, and the decision records whether it explored and each candidate's chance of going first."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from avengers_store import routing
from avengers_store.errors import InputError
from avengers_store.production.settings import configure
from avengers_store.routing import Policy
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model

TRIALS = 2000
# Cluster 0: little evidence (5 outcomes), close scores; cluster 1: the same scores on 200
# outcomes; cluster 2: far apart on 20.
THIN, THICK, FAR = (np.eye(4, dtype=np.float32)[i] for i in range(3))
MODELS = ("a", "b", "c", "d")


def outcomes(hits: int, n: int) -> list[float]:
    return [1.0] * hits + [0.0] * (n - hits)


@pytest.fixture(scope="module")
def store(db_url) -> str:
    with connections.connect(db_url) as conn:
        cid = add_clustering(conn, np.eye(4, dtype=np.float32)[:3])
        for name in MODELS:
            ensure_model(conn, name)
        # d is the most expensive (a ceiling leaves it out).
        conn.execute("UPDATE avengers.models SET cost_out_per_m = 50 WHERE name = 'd'")
        add_profiles(
            conn,
            cid,
            {
                "a": [outcomes(3, 5), outcomes(120, 200), outcomes(19, 20)],
                "b": [outcomes(2, 5), outcomes(80, 200), outcomes(2, 20)],
                "c": [outcomes(1, 5), outcomes(10, 200), outcomes(1, 20)],
                "d": [outcomes(1, 5), outcomes(10, 200), outcomes(0, 20)],
            },
        )
        activate(conn, cid)
        conn.commit()
    return db_url


def decide_trials(url: str, vector: np.ndarray, policy: Policy, trials: int = TRIALS):
    """``trials`` decisions of one vector, seeds 0 to trials - 1, in one statement."""
    with connections.connect(url) as conn:
        return routing.decide(conn, np.tile(vector, (trials, 1)), policy, seeds=range(trials))


def firsts(decisions) -> Counter:
    return Counter(d.model for d in decisions)


# The paper's rule: score = the nearest cluster's mean, evidence = its outcome count.
PAPER = Policy(method=routing.PAPER)


def test_off_keeps_the_plain_order_and_records_nothing(store):
    plain = decide_trials(store, THIN, PAPER.replace(top_n=4, exploration="off"), trials=3)
    for d in plain:
        assert [c.model for c in d.candidates] == ["a", "b", "c", "d"]
        assert (d.exploration, d.explored) == (None, None)
        assert [c.propensity for c in d.candidates] == [1.0, 0.0, 0.0, 0.0]


def test_thompson_explores_where_evidence_is_thin(store):
    pair = PAPER.replace(models=("a", "b"), exploration="thompson")
    thin = firsts(decide_trials(store, THIN, pair))
    thick = firsts(decide_trials(store, THICK, pair))
    far = firsts(decide_trials(store, FAR, pair))
    assert 300 < thin["b"] < 1000  # close scores, little evidence: often
    assert thick["b"] < 20  # the same scores on much evidence: almost never
    assert far["b"] == 0
    (one,) = decide_trials(store, THIN, pair, trials=1)
    assert one.exploration == "thompson" and one.propensity is None


def test_epsilon_sends_its_share_to_a_uniform_candidate(store):
    decisions = decide_trials(store, THIN, PAPER.replace(top_n=4, exploration="epsilon",
                                                        exploration_share=0.4))  # fmt: skip
    counts = firsts(decisions)
    # 0.6 stays with a; 0.4 is spread over all four (a included).
    assert counts["a"] / TRIALS == pytest.approx(0.6 + 0.1, abs=0.03)
    for other in "bcd":
        assert counts[other] / TRIALS == pytest.approx(0.1, abs=0.025)
    for d in decisions:
        # Exploring, the candidates are asked in the order of their draws (so the first is
        # drawn uniformly); otherwise in the plain order.
        assert sorted(c.model for c in d.candidates) == sorted(MODELS)
        assert [c.rank for c in d.candidates] == [1, 2, 3, 4]
        assert d.explored == (d.model != "a")
        # Each candidate's exact chance of going first: 1 - share + share / 4 for the plain
        # best, share / 4 for the others.
        chances = {c.model: c.propensity for c in d.candidates}
        assert chances == pytest.approx({"a": 0.7, "b": 0.1, "c": 0.1, "d": 0.1})
        assert d.propensity == chances[d.model]
    never = decide_trials(store, THIN, PAPER.replace(exploration="epsilon", exploration_share=0))
    assert firsts(never) == {"a": TRIALS} and not any(d.explored for d in never)


def test_exploration_chooses_beyond_the_top_n_and_within_the_ceiling(store):
    one = decide_trials(store, THIN, PAPER.replace(exploration="epsilon", exploration_share=1.0))
    assert set(firsts(one)) == set(MODELS) and all(len(d.candidates) == 1 for d in one)
    # d's expected cost is over the ceiling: never drawn, the share spread over the three others.
    capped = decide_trials(store, THIN, PAPER.replace(top_n=4, exploration="epsilon",
                                                      exploration_share=1.0, max_cost=1e-3))  # fmt: skip
    counts = firsts(capped)
    assert set(counts) == {"a", "b", "c"}
    for d in capped:
        assert all(c.expected_cost <= 1e-3 and not c.over_budget for c in d.candidates)
        assert {c.model: c.propensity for c in d.candidates} == pytest.approx(
            {m: 1 / 3 for m in "abc"}
        )
    thompson = decide_trials(store, THIN, PAPER.replace(exploration="thompson", max_cost=1e-3))
    assert "d" not in firsts(thompson)


def test_draws_come_from_the_seed(store):
    policy = PAPER.replace(top_n=3, exploration="epsilon", exploration_share=0.5)
    batch = decide_trials(store, THIN, policy, trials=40)
    assert 5 < sum(d.explored for d in batch) < 35
    with connections.connect(store) as conn:
        for seed, expected in enumerate(batch):
            assert routing.decide(conn, [THIN], policy, seeds=[seed]) == [expected]
        again = routing.decide(conn, np.tile(THIN, (40, 1)), policy, seeds=range(40))
    assert again == batch


def test_a_pinned_model_goes_first_when_it_is_a_candidate(store):
    policy = PAPER.replace(top_n=2, exploration="epsilon", exploration_share=1.0)
    with connections.connect(store) as conn:
        (pinned,) = routing.decide(conn, [THIN], policy, seeds=[1], pinned=["c"])
        assert [c.model for c in pinned.candidates] == ["c", "a"]
        # A conversation keeps its model: a pin turns exploration off for its request.
        assert pinned.exploration is None and pinned.explored is None
        assert pinned.propensity == 1.0
        # A pin the ceiling leaves out is not a candidate: the plain order decides.
        capped = policy.replace(max_cost=1e-3)
        decisions = routing.decide(
            conn, np.tile(THIN, (30, 1)), capped, seeds=range(30), pinned=["d"] * 30
        )
    assert firsts(decisions) == {"a": 30}


def test_the_clustering_setting_applies_unless_the_policy_sets_one(store):
    configure(exploration="epsilon", exploration_share=1.0, url=store)
    try:
        explored = decide_trials(store, THIN, PAPER, trials=400)
        overridden = decide_trials(store, THIN, PAPER.replace(exploration="off"), trials=5)
    finally:
        configure(exploration="off", exploration_share=0.05, url=store)
    assert all(d.exploration == "epsilon" for d in explored)
    assert 60 < firsts(explored)["b"] < 140  # every request explores, a quarter lands on b
    assert all(d.exploration is None and d.model == "a" for d in overridden)
    (plain,) = decide_trials(store, THIN, PAPER, trials=1)
    assert plain.exploration is None and plain.explored is None


def test_unknown_policy_and_share_are_refused():
    with pytest.raises(InputError, match="unknown exploration") as err:
        Policy(exploration="greedy")
    assert err.value.location == "exploration"
    with pytest.raises(InputError, match="exploration_share") as err:
        Policy(exploration="epsilon", exploration_share=2.0)
    assert err.value.location == "exploration_share"
