"""OOD policies on decisions: flag keeps the ranking, best-overall swaps in the calibration-wide
ranking, widen marks the decision for Model-Switch; in-distribution decisions are untouched."""

from __future__ import annotations

from datetime import timedelta

import pytest

from avengers_store.errors import InputError
from avengers_store.routing import ood
from avengers_store.routing.decisions import Candidate, RouteDecision


def decision(cluster: int, novelty: float | None) -> RouteDecision:
    candidates = (
        Candidate("near-best", 1, 0.9, 10, 0.6, 0.98, None, None, score=0.8),
        Candidate("near-second", 2, 0.7, 10, 0.4, 0.9, None, None, score=0.6),
    )
    return RouteDecision(
        3, cluster, 0.5, candidates, novelty=novelty,
        ood=None if novelty is None else novelty > 1,
    )  # fmt: skip


RANKED = {
    1: (Candidate("overall-best", 1, 0.5, 4, 0.2, 0.8, None, None, score=0.66),),
}


@pytest.mark.parametrize("policy", ood.POLICIES)
def test_in_distribution_decisions_are_untouched(policy):
    inside = [decision(0, 0.7), decision(2, None)]
    assert ood.apply(inside, policy, RANKED) == inside
    assert ood.lookups(inside, policy) == []


def test_each_policy_on_an_ood_decision():
    out = decision(1, 1.8)
    flagged = ood.apply([out], "flag")[0]
    assert flagged.candidates == out.candidates and flagged.ood_policy == "flag"
    widened = ood.apply([out], "widen")[0]
    assert widened.candidates == out.candidates and widened.ood_policy == "widen"
    assert ood.lookups([out, decision(1, 3.0), decision(0, 0.2)], "best-overall") == [1]
    best = ood.apply([out], "best-overall", RANKED)[0]
    assert [c.model for c in best.candidates] == ["overall-best"]
    assert (best.ood_policy, best.cluster, best.novelty) == ("best-overall", 1, 1.8)


def test_policy_names_are_checked():
    assert ood.ood_policy(None) == "flag"
    with pytest.raises(InputError) as caught:
        ood.ood_policy("ignore")
    assert caught.value.location == "ood_policy"


def test_explanation_names_novelty_policy_and_production():
    d = RouteDecision(
        3, 1, 0.5,
        (Candidate("m", 1, 0.9, 10, 0.6, 0.98, None, None, score=0.8, production_n=4,
                   production_mean=0.25),),
        novelty=1.8, ood=True, ood_policy="best-overall", production_weight=0.5,
        half_life=timedelta(days=14),
    )  # fmt: skip
    text = d.explain()
    assert "novelty 1.80: out of distribution; policy best-overall" in text
    assert "weight 0.5 (half-life 14 days" in text
    assert "production 0.250 over 4 feedback rows" in text
    assert d.to_dict()["half_life"] == 14 * 86400.0
