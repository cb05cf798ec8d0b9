"""Keys with policies, enforced by the gateway before any model is called: a spend limit (what
the route log's usage costs at the models' prices), the models a key may use, requests per
minute, a samples ceiling and default routing options, changed without a restart; the spend in
``avengers.key_spend`` and ``avengers keys usage``; the access log and feedback counters."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import httpx
import openai
import psycopg
import pytest
from avengers_store.cli.testing import run_cli

from avengers_store.gateway import keys
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import ARITHMETIC, LITERATURE, log_rows
from avengers_store.testing import set_endpoints as point

SETTINGS = GatewaySettings(policy={"method": "paper"}, upstream_retries=0)
# Per 1M tokens: a scripted answer (10 prompt tokens, 5 completion tokens) costs 0.02 on alpha.
PRICE_IN, PRICE_OUT = 1000.0, 2000.0
ONE_ANSWER = (10 * PRICE_IN + 5 * PRICE_OUT) / 1e6


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def priced(store, endpoints, scripted_server):
    """Every model on the recording server, at the same prices; the store's keys removed after."""
    point(store, alpha=scripted_server.base_url, bravo=scripted_server.base_url,
          charlie=scripted_server.base_url)  # fmt: skip
    for name in ("alpha", "bravo", "charlie"):
        scripted_server.answers(name, f"{name} says \\boxed{{42}}")
    with psycopg.connect(store) as conn:
        conn.execute(
            "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s",
            (PRICE_IN, PRICE_OUT),
        )
    yield scripted_server
    with psycopg.connect(store) as conn:
        conn.execute("UPDATE avengers.models SET cost_in_per_m = NULL, cost_out_per_m = NULL")
        conn.execute("UPDATE avengers.api_keys SET revoked_at = now() WHERE revoked_at IS NULL")


def chat(gw, key: str, **body) -> httpx.Response:
    body = {"model": "avengers", "messages": user(ARITHMETIC), **body}
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_spend_limit_admits_until_spent_then_refuses_before_any_model_call(
    store, priced, monkeypatch
):
    _, key = keys.create_key("team-a", keys.KeyPolicy(spend_limit_day=2.5 * ONE_ANSWER), url=store)
    with gateway_server(SETTINGS, database_url=store) as gw:
        answered = [chat(gw, key) for _ in range(3)]
        seen = len(priced.requests)
        day_left = 86400 - datetime.now(UTC).timestamp() % 86400
        refused = chat(gw, key)
        sdk = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=2)
        with pytest.raises(openai.RateLimitError) as by_sdk:
            sdk.chat.completions.create(model="avengers", messages=user(ARITHMETIC))
        unseen = len(priced.requests) - seen
        metrics = httpx.get(gw.base_url + "/metrics").text
        monkeypatch.setenv("AVENGERS_DATABASE_URL", store)
        raised = run_cli("keys", "set", "team-a", "--spend-limit-day", "1")
        again = chat(gw, key)  # the new limit applies at once: no restart
    assert [r.status_code for r in answered] == [200, 200, 200]
    # Admitted while the day's spend (0, 0.02, 0.04) was under 0.05; the third crossed it.
    assert refused.status_code == 429 and unseen == 0
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert "0.06 of its 0.05 limit for today" in error["message"]
    assert day_left - 30 < int(refused.headers["retry-after"]) <= day_left + 1
    assert refused.headers["x-should-retry"] == "false"
    # The SDK does not retry a spent quota: one more refusal, not three.
    assert by_sdk.value.code == "insufficient_quota"
    assert 'avengers_gateway_key_refusals_total{reason="day"} 2.0' in metrics
    assert "spend_limit_day=1.0" in raised.output and again.status_code == 200

    spend = run_cli("keys", "usage", "team-a", "--period", "day", "--json")
    (today,) = json.loads(spend.output)
    assert today["key"] == "team-a" and today["requests"] == 4
    assert today["cost"] == pytest.approx(4 * ONE_ANSWER)
    assert (today["tokens_in"], today["tokens_out"]) == (40, 20)
    assert today["spend_limit"] == 1.0
    table = run_cli("keys", "usage").output
    assert "team-a" in table and "month" in table
    with psycopg.connect(store) as conn:
        periods = conn.execute(
            "SELECT period, requests, cost FROM avengers.key_spend WHERE key_name = 'team-a' "
            "ORDER BY period"
        ).fetchall()
        costs = conn.execute(
            "SELECT cost FROM avengers.route_log WHERE route_id = %s",
            (answered[0].headers["x-avengers-route-id"],),
        ).fetchone()
    assert [(p, n) for p, n, _ in periods] == [("day", 4), ("month", 4)]
    assert costs[0] == pytest.approx(ONE_ANSWER)


def test_a_key_limited_to_two_models(store, priced):
    _, key = keys.create_key("two-models", keys.KeyPolicy(models=("alpha", "bravo")), url=store)
    with gateway_server(SETTINGS, database_url=store) as gw:
        third = chat(gw, key, model="charlie")
        named = chat(gw, key, model="bravo")
        routed_outside = chat(gw, key, models=["charlie"])
        routed = chat(gw, key, messages=user(LITERATURE), top_n=3)
        listed = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key).models.list()
    assert third.status_code == 400
    assert (third.json()["error"]["param"], third.json()["error"]["code"]) == (
        "model",
        "model_not_allowed",
    )
    assert named.status_code == 200 and named.json()["model"] == "bravo"
    assert routed_outside.status_code == 400
    assert routed_outside.json()["error"]["param"] == "models"
    assert routed.headers["x-avengers-candidates"] == "bravo,alpha"  # never charlie
    assert [m.id for m in listed.data] == ["avengers", "alpha", "bravo"]
    assert priced.requests_for("charlie") == []
    with pytest.raises(Exception, match="no model named 'delta'"):
        keys.set_policy("two-models", {"models": ["alpha", "delta"]}, url=store)


def test_requests_per_minute_samples_ceiling_and_default_routing_options(store, priced):
    _, key = keys.create_key(
        "paced",
        keys.KeyPolicy(requests_per_minute=3, max_samples=2, routing={"tradeoff": 0.0}),
        url=store,
    )
    with gateway_server(SETTINGS, database_url=store) as gw:
        if 60 - datetime.now(UTC).second < 5:  # the four requests within one minute's window
            time.sleep(61 - datetime.now(UTC).second)
        too_many = chat(gw, key, samples=3)  # admitted (counted), then refused for its samples
        defaulted = chat(gw, key)
        overridden = chat(gw, key, tradeoff=1.0)
        limited = chat(gw, key)
        keys.set_policy("paced", {"requests_per_minute": None}, url=store)
        freed = chat(gw, key)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "samples"
    assert defaulted.status_code == 200 and overridden.status_code == 200
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "x-should-retry" not in limited.headers  # worth retrying after the minute
    assert freed.status_code == 200
    rows = log_rows(store, [r.headers["x-avengers-route-id"] for r in (defaulted, overridden)])
    policies = [
        rows[r.headers["x-avengers-route-id"]][5]["policy"] for r in (defaulted, overridden)
    ]
    assert [p["tradeoff"] for p in policies] == [0.0, 1.0]  # the key's default, then the request's


def test_access_log_lines_and_feedback_counters(store, priced, caplog):
    record, key = keys.create_key("logged", url=store)
    caplog.set_level(logging.INFO, logger="avengers.gateway.access")
    with gateway_server(SETTINGS, database_url=store) as gw:
        answered = chat(gw, key)
        route_id = answered.headers["x-avengers-route-id"]
        fed = httpx.post(
            gw.base_url + "/v1/feedback",
            json={"route_id": route_id, "score": 0.75, "source": "grader"},
            headers={"Authorization": f"Bearer {key}"},
        )
        chat(gw, "avk-not-a-key")
        metrics = httpx.get(gw.base_url + "/metrics").text
    assert fed.status_code == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    answered_line = next(line for line in lines if line.get("route_id") == route_id and
                         line["path"] == "/v1/chat/completions")  # fmt: skip
    assert answered_line["key"] == "logged" and answered_line["status"] == 200
    assert answered_line["model"] == "alpha" and answered_line["latency_ms"] > 0
    assert (answered_line["tokens_in"], answered_line["tokens_out"]) == (10, 5)
    unauthorized = [line for line in lines if line["status"] == 401]
    assert unauthorized and unauthorized[0]["error"] == "invalid_api_key"
    assert any(line["path"] == "/v1/feedback" and line["status"] == 200 for line in lines)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert key not in text and ARITHMETIC not in text and "avk-not-a-key" not in text
    assert 'avengers_gateway_feedback_total{replaced="false",source="grader"} 1.0' in metrics
    assert "avengers_gateway_feedback_score_count 1.0" in metrics
