"""The routing policy's OOD and production fields, checked where a Policy is made, and a decision
that explains its novelty, the OOD policy applied and its production evidence. (What each OOD
policy does to a decision is in avengers.decide: tests/db/test_ood.py.)"""

from __future__ import annotations

import pytest

from avengers_store.errors import InputError
from avengers_store.routing import OOD_POLICIES, Policy
from avengers_store.routing.decisions import Candidate, RouteDecision


def test_policy_names_are_checked():
    assert Policy().ood_policy == "flag" and OOD_POLICIES == ("flag", "best-overall", "widen")
    for name in OOD_POLICIES:
        assert Policy(ood_policy=name).ood_policy == name
    with pytest.raises(InputError) as caught:
        Policy(ood_policy="ignore")
    assert caught.value.location == "ood_policy"
    with pytest.raises(InputError) as caught:
        Policy().replace(ood_policy="sometimes")
    assert caught.value.location == "ood_policy"
    with pytest.raises(InputError) as caught:
        Policy(production_weight=float("inf"))
    assert caught.value.location == "production_weight"
    with pytest.raises(InputError) as caught:
        Policy().replace(latency=3)
    assert caught.value.location == "latency"


def test_a_policy_round_trips_through_its_dict():
    policy = Policy(method="paper", top_n=3, models=["a", "b"], tradeoff=0.4, max_cost=1e-3,
                    ood_policy="widen", exploration="epsilon", exploration_share=0.2,
                    production_weight=0.5)  # fmt: skip
    assert policy.models == ("a", "b")
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_dict({}) == Policy()
    with pytest.raises(InputError) as caught:
        Policy.from_dict({"top_n": 2, "speed": 1})
    assert caught.value.location == "speed"


def test_explanation_names_novelty_policy_and_production():
    d = RouteDecision(
        3, 1, 0.5,
        (Candidate("m", 1, 0.9, 10, 0.6, 0.98, None, None, score=0.8, production_n=4,
                   production_mean=0.25),),
        Policy(ood_policy="best-overall"), novelty=1.8, ood=True, ood_policy="best-overall",
        production_weight=0.5,
    )  # fmt: skip
    text = d.explain()
    assert "novelty 1.80: out of distribution; policy best-overall" in text
    assert "scores pool production outcomes at weight 0.5" in text
    assert "production 0.250 over 4 feedback rows" in text
    assert d.to_dict()["policy"]["ood_policy"] == "best-overall"
    inside = RouteDecision(3, 1, 0.5, d.candidates, novelty=0.4, ood=False, production_weight=0)
    assert "novelty 0.40: in distribution" in inside.explain()
    assert "calibration outcomes only (production weight 0)" in inside.explain()
