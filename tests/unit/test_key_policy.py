"""A key's policy as a value: checked when made (an InputError naming the field), changed field by
field (routing options by their own names, None removes), and refused with the 429 OpenAI's
SDKs understand."""

from __future__ import annotations

import pytest

from avengers_store.errors import InputError
from avengers_store.gateway.keys import Admission, KeyPolicy
from avengers_store.gateway.state import refusal


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"spend_limit_day": -1.0}, "spend_limit_day"),
        ({"spend_limit_month": float("inf")}, "spend_limit_month"),
        ({"max_samples": 0}, "max_samples"),
        ({"requests_per_minute": 2.5}, "requests_per_minute"),
        ({"models": "alpha"}, "models"),
        ({"models": ()}, "models"),
        ({"routing": {"tradeoff": 2.0}}, "tradeoff"),
        ({"routing": {"top_n": 3}}, "top_n"),
        ({"routing": {"models": ["alpha"]}}, "models"),
    ],
)
def test_a_bad_policy_names_its_field(fields, location):
    with pytest.raises(InputError) as caught:
        KeyPolicy(**fields)
    assert caught.value.location == location


def test_changes_set_and_remove_fields_and_routing_options():
    policy = KeyPolicy(spend_limit_day=5.0, routing={"tradeoff": 0.5, "max_cost": 0.01})
    changed = policy.changed(
        {"spend_limit_day": None, "max_samples": 4, "tradeoff": None, "method": "paper",
         "models": ["b", "a", "b"]}
    )  # fmt: skip
    assert changed.spend_limit_day is None and changed.max_samples == 4
    assert changed.routing == {"max_cost": 0.01, "method": "paper"}
    assert changed.models == ("b", "a")  # duplicates dropped, order kept
    assert policy.routing == {"tradeoff": 0.5, "max_cost": 0.01}  # the original is unchanged
    with pytest.raises(InputError) as caught:
        policy.changed({"spend_limit_week": 3})
    assert caught.value.location == "spend_limit_week"


def test_refusals_are_openai_429s():
    spent = refusal(Admission(1, "team", KeyPolicy(), "month", 10.5, 10.0, 3600))
    assert (spent.status, spent.code, spent.type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert spent.headers == {"Retry-After": "3600", "x-should-retry": "false"}
    assert "10.5 of its 10 limit for this month" in spent.message
    paced = refusal(Admission(1, "team", KeyPolicy(), "rate", 60, 60, 12))
    assert (paced.code, paced.headers) == ("rate_limit_exceeded", {"Retry-After": "12"})
