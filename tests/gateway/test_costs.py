"""The trade-off through the gateway: request body fields ``tradeoff`` and ``max_cost``, the
expected cost in the headers and the body, the server's defaults, and bad values as 400s."""

from __future__ import annotations

import httpx
import openai
import psycopg
import pytest

from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import ARITHMETIC, set_endpoints

SETTINGS = GatewaySettings(policy={"method": "paper"}, upstream_retries=0, auth=False)
PRICES = {"alpha": (3.0, 3.0), "bravo": (1.0, 1.0), "charlie": (0.1, 0.1)}


@pytest.fixture
def priced(store, endpoints):
    with psycopg.connect(store) as conn:
        for name, (cin, cout) in PRICES.items():
            conn.execute(
                "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s "
                "WHERE name = %s",
                (cin, cout, name),
            )
    yield
    with psycopg.connect(store) as conn:
        conn.execute("UPDATE avengers.models SET cost_in_per_m = NULL, cost_out_per_m = NULL")


def cost(name: str, text: str, completions: int = 1) -> float:
    cin, cout = PRICES[name]
    return (cin * len(text) / 4 + completions * cout * 256) / 1e6


def test_route_and_chat_take_a_tradeoff_and_name_the_expected_cost(store, priced, scripted_server):
    for served in ("a", "b", "c"):
        scripted_server.answers(served, "42")
    set_endpoints(
        store,
        alpha=(scripted_server.base_url, "a"),
        bravo=(scripted_server.base_url, "b"),
        charlie=(scripted_server.base_url, "c"),
    )
    with gateway_server(SETTINGS, database_url=store) as gw:
        plain = httpx.post(gw.base_url + "/v1/route", json={"input": ARITHMETIC, "top_n": 3})
        cheap = httpx.post(
            gw.base_url + "/v1/route", json={"input": ARITHMETIC, "top_n": 3, "tradeoff": 0.0}
        )
        capped = httpx.post(
            gw.base_url + "/v1/route", json={"input": ARITHMETIC, "top_n": 3, "max_cost": 0}
        )
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x")
        raw = client.chat.completions.with_raw_response.create(
            model="avengers",
            messages=[{"role": "user", "content": ARITHMETIC}],
            extra_body={"tradeoff": 0.0, "samples": 2},
        )
        bad = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": "avengers", "messages": [{"role": "user", "content": "hi"}],
                  "tradeoff": 1.5},
        )  # fmt: skip
    # Without a trade-off the gateway still prices the plain decision (alpha = 1).
    body = plain.json()
    assert [c["model"] for c in body["candidates"]] == ["alpha", "bravo", "charlie"]
    assert body["candidates"][0]["expected_cost"] == pytest.approx(cost("alpha", ARITHMETIC))
    assert float(plain.headers["x-avengers-expected-cost"]) == pytest.approx(
        cost("alpha", ARITHMETIC), rel=1e-5
    )
    assert plain.headers["x-avengers-over-budget"] == "false"
    assert cheap.json()["candidates"][0]["model"] == "charlie"
    assert capped.json()["over_budget"] is True
    assert [c["model"] for c in capped.json()["candidates"]] == ["charlie"]
    assert capped.headers["x-avengers-over-budget"] == "true"
    completion = raw.parse()
    assert completion.model == "charlie"
    assert float(raw.headers["x-avengers-expected-cost"]) == pytest.approx(
        cost("charlie", ARITHMETIC, 2), rel=1e-5
    )
    assert completion.avengers["expected_cost"] == pytest.approx(cost("charlie", ARITHMETIC, 2))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tradeoff"


def test_server_defaults_apply_when_the_request_sets_none(store, priced):
    with gateway_server(
        SETTINGS, database_url=store, policy={"method": "paper", "tradeoff": 0.0}
    ) as gw:
        default = httpx.post(gw.base_url + "/v1/route", json={"input": ARITHMETIC})
        own = httpx.post(gw.base_url + "/v1/route", json={"input": ARITHMETIC, "tradeoff": 1})
    assert default.json()["candidates"][0]["model"] == "charlie"
    assert default.json()["tradeoff"] == 0.0
    assert own.json()["candidates"][0]["model"] == "alpha"
