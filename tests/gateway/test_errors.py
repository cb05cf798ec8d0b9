"""Errors the OpenAI way, as the openai SDK sees them: 401 without a valid key, 400 for bad
input, 429 past the in-flight limit, 502 / 504 when every candidate endpoint failed / timed out,
503 when the store is not ready."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import openai
import pytest

from avengers_store.gateway import keys
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import ARITHMETIC, LITERATURE, log_rows, set_endpoints

SETTINGS = GatewaySettings(policy={"method": "paper"}, upstream_retries=0)
QUESTION = [{"role": "user", "content": LITERATURE}]


def sdk(gw, key: str = "unused", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, **kw)


def test_auth_no_key_revoked_key_and_a_live_one(store, endpoints, scripted_server):
    scripted_server.answers("b", "Shakespeare")
    set_endpoints(store, bravo=(scripted_server.base_url, "b"))
    record, key = keys.create_key("gateway-test", url=store)
    assert keys.key_hash(key) not in str(record) and key.startswith("avk-")
    with gateway_server(SETTINGS, database_url=store) as gw:
        no_key = httpx.post(gw.base_url + "/v1/chat/completions", json={})
        with pytest.raises(openai.AuthenticationError) as wrong:
            sdk(gw, "avk-not-a-key").chat.completions.create(model="avengers", messages=QUESTION)
        raw = sdk(gw, key).chat.completions.with_raw_response.create(
            model="avengers", messages=QUESTION
        )
        keys.revoke_key("gateway-test", url=store)
        with pytest.raises(openai.AuthenticationError) as revoked:
            sdk(gw, key).chat.completions.create(model="avengers", messages=QUESTION)
        open_paths = [httpx.get(gw.base_url + p).status_code for p in ("/health", "/metrics")]
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "invalid_api_key"
    assert "avengers keys create" in no_key.json()["error"]["message"]
    assert wrong.value.status_code == 401 and revoked.value.status_code == 401
    assert "revoked" in revoked.value.message
    assert raw.parse().choices[0].message.content == "Shakespeare"
    assert open_paths == [200, 200]
    (listed,) = [k for k in keys.list_keys(url=store) if k.id == record.id]
    assert listed.last_used_at is not None and listed.revoked_at is not None
    row = log_rows(store, [raw.headers["x-avengers-route-id"]])
    assert row[raw.headers["x-avengers-route-id"]][4] == record.id  # the key is logged by id


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "gpt-9", "messages": QUESTION}, "model", "model_not_found"),
        (
            {"model": "avengers", "messages": [{"role": "system", "content": "hi"}]},
            "messages",
            None,
        ),
        ({"model": "avengers", "messages": QUESTION, "samples": 65}, "samples", None),
        ({"model": "avengers", "messages": QUESTION, "strategy": "best"}, "strategy", None),
        ({"model": "avengers", "messages": []}, "messages", None),
        ({"model": "avengers", "messages": QUESTION, "x": "y" * 2_000}, None, "body_too_large"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(store, endpoints, body, param, code):
    with gateway_server(SETTINGS, database_url=store, auth=False, max_body_bytes=1_000) as gw:
        response = httpx.post(gw.base_url + "/v1/chat/completions", json=body)
        standard = {k: v for k, v in body.items() if k in ("model", "messages")}
        extra = {k: v for k, v in body.items() if k not in standard}
        with pytest.raises(openai.BadRequestError) as caught:
            sdk(gw).chat.completions.create(**standard, extra_body=extra)
    assert response.status_code == 400 and caught.value.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and (code is None or error["code"] == code)


def test_the_33rd_request_in_flight_gets_429(store, endpoints, scripted_server):
    # The upstream holds every request until all 32 are in flight, however slow the machine.
    gate = threading.Event()
    scripted_server.script("b", {"gate": gate, "texts": ["Shakespeare"]})
    set_endpoints(store, bravo=(scripted_server.base_url, "b"))
    with gateway_server(SETTINGS, database_url=store, auth=False, max_in_flight=32) as gw:
        body = {"model": "avengers", "messages": QUESTION}
        with (
            httpx.Client(limits=httpx.Limits(max_connections=64), timeout=60) as http,
            concurrent.futures.ThreadPoolExecutor(32) as pool,
        ):
            post = lambda: http.post(gw.base_url + "/v1/chat/completions", json=body)  # noqa: E731
            held = [pool.submit(post) for _ in range(32)]
            deadline = time.monotonic() + 60
            while len(scripted_server.requests_for("b")) < 32 and time.monotonic() < deadline:
                time.sleep(0.05)
            refused = post()
            gate.set()
            answered = [f.result() for f in held]
    assert [r.status_code for r in answered] == [200] * 32
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_all_candidates_down_502_and_timed_out_504(
    store, endpoints, scripted_server, closed_port_url
):
    set_endpoints(store, bravo=(closed_port_url, "down"), alpha=(closed_port_url, "down"))
    with gateway_server(SETTINGS, database_url=store, auth=False) as gw:
        with pytest.raises(openai.APIStatusError) as down:
            sdk(gw).chat.completions.create(model="avengers", messages=QUESTION)
        scripted_server.script("slow", {"delay": 1.5, "texts": ["late"]})
        set_endpoints(store, bravo=(scripted_server.base_url, "slow"), alpha=None)
        with (
            gateway_server(
                SETTINGS, database_url=store, auth=False, upstream_timeout_s=0.3
            ) as slow_gw,
            pytest.raises(openai.APIStatusError) as slow,
        ):
            sdk(slow_gw).chat.completions.create(model="avengers", messages=QUESTION)
    assert down.value.status_code == 502
    assert "[bravo]" in down.value.message and "[alpha]" in down.value.message
    assert down.value.body["code"] == "upstream_failed"
    assert slow.value.status_code == 504 and "timed out" in slow.value.message


def test_not_ready_is_503(store, endpoints):
    with gateway_server(SETTINGS, database_url=store, auth=False) as gw:
        not_ready = httpx.get(gw.base_url + "/ready")
        answer = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": "avengers", "messages": [{"role": "user", "content": ARITHMETIC}]},
        )
    assert not_ready.status_code == 503
    assert "no active model has an endpoint" in not_ready.json()["error"]["message"]
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "not_ready"
