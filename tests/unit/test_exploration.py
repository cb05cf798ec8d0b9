"""Exploration over returned candidates: Thompson draws from Beta posteriors, epsilon's share,
ranks renumbered, the first-model change recorded."""

from __future__ import annotations

import numpy as np
import pytest

from avengers_store.errors import InputError
from avengers_store.routing.decisions import Candidate, RouteDecision
from avengers_store.routing.exploration import OFF, Exploration, explore, pool_size


def decision(*scored: tuple[str, float, int]) -> RouteDecision:
    candidates = tuple(
        Candidate(name, i + 1, score, n, None, None, None, None, score=score)
        for i, (name, score, n) in enumerate(scored)
    )
    return RouteDecision(1, 0, 0.1, candidates)


def firsts(d: RouteDecision, exploration: Exploration | None, trials: int = 2000) -> dict[str, int]:
    rng = np.random.default_rng(0)
    out: dict[str, int] = {}
    for _ in range(trials):
        first = explore(d, rng, 1, exploration).model
        out[first] = out.get(first, 0) + 1
    return out


def test_off_keeps_the_order_and_records_nothing():
    d = decision(("a", 0.8, 50), ("b", 0.7, 50), ("c", 0.1, 50))
    out = explore(d, np.random.default_rng(0), 2, OFF)
    assert [c.model for c in out.candidates] == ["a", "b"]
    assert (out.exploration, out.explored) == (None, None)
    assert pool_size(2, OFF) == 2 and pool_size(2, Exploration("thompson")) == 8


def test_thompson_explores_where_evidence_is_thin():
    thin = firsts(decision(("a", 0.6, 4), ("b", 0.5, 4)), Exploration("thompson"))
    thick = firsts(decision(("a", 0.6, 400), ("b", 0.5, 400)), Exploration("thompson"))
    far = firsts(decision(("a", 0.9, 60), ("b", 0.2, 60)), Exploration("thompson"))
    assert 400 < thin["b"] < 1000  # close scores, little evidence: often
    assert thick.get("b", 0) < 20  # the same scores on much evidence: almost never
    assert far.get("b", 0) == 0


def test_epsilon_sends_its_share_to_a_uniform_candidate():
    d = decision(("a", 0.9, 50), ("b", 0.5, 50), ("c", 0.1, 50), ("d", 0.1, 50))
    counts = firsts(d, Exploration("epsilon", 0.4), trials=4000)
    # 0.6 stays with a; 0.4 is spread over all four (a included).
    assert counts["a"] / 4000 == pytest.approx(0.6 + 0.1, abs=0.03)
    for other in "bcd":
        assert counts[other] / 4000 == pytest.approx(0.1, abs=0.02)
    assert firsts(d, Exploration("epsilon", 0.0)) == {"a": 2000}


def test_explored_decisions_are_renumbered_and_flagged():
    d = decision(("a", 0.5, 1), ("b", 0.5, 1), ("c", 0.5, 1))
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(50):
        out = explore(d, rng, 2, Exploration("thompson"))
        assert [c.rank for c in out.candidates] == [1, 2]
        assert out.exploration == "thompson"
        assert out.explored == (out.model != "a")
        seen.add(out.model)
    assert seen == {"a", "b", "c"}


def test_unknown_policy_and_share_are_refused():
    with pytest.raises(InputError, match="unknown exploration"):
        Exploration("greedy")
    with pytest.raises(InputError, match="share"):
        Exploration("epsilon", 2.0)


def test_the_decision_carries_its_clustering_policy():
    import dataclasses

    d = dataclasses.replace(
        decision(("a", 0.9, 50), ("b", 0.5, 50)), exploration="epsilon", exploration_share=1.0
    )
    counts = firsts(d, None, trials=400)
    assert 150 < counts["b"] < 250  # every request explores; half of them land on b
    plain = decision(("a", 0.9, 50), ("b", 0.5, 50))
    assert explore(plain, np.random.default_rng(0), 1).explored is None
