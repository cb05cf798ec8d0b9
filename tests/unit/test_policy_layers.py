"""How the served policy, the server's own fields and the gateway's fill (a trade-off of 1, so
answers carry expected costs) layer: the fill only sets what no layer names."""

from __future__ import annotations

from avengers_store.client import AvengersClient
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.routing.policy import Policy


def gateway_policy(own: dict, served: Policy) -> Policy:
    settings = GatewaySettings(auth=False, policy=own)
    client = AvengersClient(
        "postgresql://unused/none",
        policy_changes=settings.policy_changes,
        policy_fill={"tradeoff": 1.0},
    )
    return client._with_changes(served)


def test_the_fill_prices_plain_routes_when_no_layer_sets_a_tradeoff():
    assert gateway_policy({}, Policy()).tradeoff == 1.0


def test_the_served_tradeoff_stands_under_a_server_without_one():
    assert gateway_policy({}, Policy(tradeoff=0.5)).tradeoff == 0.5


def test_the_server_policy_overrides_the_served_one():
    assert gateway_policy({"tradeoff": 0.25}, Policy(tradeoff=0.5)).tradeoff == 0.25
    assert gateway_policy({"top_n": 2}, Policy(top_n=3)).top_n == 2


def test_an_explicit_none_turns_pricing_off():
    assert gateway_policy({"tradeoff": None}, Policy()).tradeoff is None
    assert gateway_policy({"tradeoff": None}, Policy(tradeoff=0.5)).tradeoff is None
