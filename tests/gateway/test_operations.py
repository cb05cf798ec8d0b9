"""The rest of the gateway: /v1/route, /v1/models, /ready, /metrics, pass-through to a pool
model, conversation affinity, and graceful shutdown on SIGTERM (a real ``avengers serve``
process) with every route-log row written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import psycopg

from avengers_store.calibration.embedders import get_embedder
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import ARITHMETIC, LITERATURE, free_port, log_rows, set_endpoints

SETTINGS = GatewaySettings(policy={"method": "paper"}, upstream_retries=0, auth=False)


def test_route_models_ready_and_metrics(store, endpoints, scripted_server):
    scripted_server.answers("a", "42")
    set_endpoints(store, alpha=(scripted_server.base_url, "a"))
    vector = get_embedder("all-MiniLM-L6-v2").embed([LITERATURE])[0].tolist()
    with gateway_server(SETTINGS, database_url=store) as gw:
        by_text = httpx.post(gw.base_url + "/v1/route", json={"input": ARITHMETIC, "top_n": 2})
        by_vector = httpx.post(gw.base_url + "/v1/route", json={"vector": vector, "top_n": 3})
        by_chat = httpx.post(
            gw.base_url + "/v1/route",
            json={"messages": [{"role": "user", "content": LITERATURE}], "method": "avengers"},
        )
        bad = httpx.post(gw.base_url + "/v1/route", json={"vector": [1.0, 2.0]})
        models = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x").models.list()
        ready = httpx.get(gw.base_url + "/ready")
        openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x").chat.completions.create(
            model="avengers", messages=[{"role": "user", "content": ARITHMETIC}]
        )
        metrics = httpx.get(gw.base_url + "/metrics").text
    decision = by_text.json()
    assert decision["cluster"] == 0 and [c["model"] for c in decision["candidates"]] == [
        "alpha",
        "bravo",
    ]
    assert decision["candidates"][0]["mean_score"] == 1.0 and decision["candidates"][0]["n"] == 3
    assert by_text.headers["x-avengers-route-id"] == decision["route_id"]
    assert by_vector.json()["cluster"] == 1 and len(by_vector.json()["candidates"]) == 3
    assert by_chat.json()["cluster"] == 1
    assert bad.status_code == 400 and "dimension" in bad.json()["error"]["message"]
    assert [m.id for m in models.data] == ["avengers", "alpha"]
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert 'avengers_gateway_requests_total{path="/v1/route",status="200"} 3.0' in metrics
    for stage in ("embed", "route", "upstream", "vote"):
        assert f'avengers_gateway_stage_seconds_count{{stage="{stage}"}}' in metrics
    assert 'avengers_gateway_samples_total{model="alpha"} 1.0' in metrics
    assert 'avengers_gateway_tokens_total{kind="completion",model="alpha"} 5.0' in metrics
    assert "avengers_gateway_vote_share_count 1.0" in metrics
    rows = log_rows(store, [decision["route_id"]])
    assert rows[decision["route_id"]][:3] == ("route", [], 0)


def test_a_pool_model_passes_straight_through(store, endpoints, scripted_server):
    scripted_server.answers("served-b", "passed through")
    set_endpoints(store, bravo=(scripted_server.base_url, "served-b"))
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x")
        raw = client.chat.completions.with_raw_response.create(
            model="bravo", messages=[{"role": "user", "content": ARITHMETIC}], seed=7, top_p=0.5
        )
        chunks = list(
            client.chat.completions.create(
                model="bravo", messages=[{"role": "user", "content": ARITHMETIC}], stream=True
            )
        )
    completion = raw.parse()
    assert completion.model == "bravo" and completion.choices[0].message.content == "passed through"
    assert raw.headers["x-avengers-strategy"] == "passthrough"
    sent = scripted_server.requests_for("served-b")[0]["body"]
    assert sent["seed"] == 7 and sent["top_p"] == 0.5  # the body as the caller wrote it
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "passed through"
    )
    rows = log_rows(store, [raw.headers["x-avengers-route-id"]])
    assert rows[raw.headers["x-avengers-route-id"]][:2] == ("passthrough", ["bravo"])


def test_a_conversation_stays_on_its_first_model(store, endpoints, scripted_server):
    scripted_server.answers("a", "from alpha")
    scripted_server.answers("b", "from bravo")
    set_endpoints(
        store, alpha=(scripted_server.base_url, "a"), bravo=(scripted_server.base_url, "b")
    )
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x")

        def ask(question: str, **kw) -> str:
            return client.chat.completions.create(
                model="avengers", messages=[{"role": "user", "content": question}], **kw
            ).model

        first = ask(ARITHMETIC, user="conversation-1")
        later = ask(LITERATURE, user="conversation-1")
        by_header = ask(ARITHMETIC, extra_headers={"x-session-id": "conversation-2"})
        header_later = ask(LITERATURE, extra_headers={"x-session-id": "conversation-2"})
        fresh = ask(LITERATURE)
    assert (first, later) == ("alpha", "alpha")
    assert (by_header, header_later) == ("alpha", "alpha")
    assert fresh == "bravo"  # without a session the literature question goes to bravo
    with psycopg.connect(store) as conn:
        stored = [r[0] for r in conn.execute("SELECT session_hash FROM avengers.gateway_sessions")]
    assert len(stored) == 2 and "conversation-1" not in stored


def test_sigterm_finishes_requests_in_flight_and_writes_their_rows(
    store, endpoints, scripted_server
):
    scripted_server.script("slow", {"delay": 1.5, "texts": ["finished"]})
    set_endpoints(store, alpha=(scripted_server.base_url, "slow"))
    port = free_port()
    env = {**os.environ, "AVENGERS_DATABASE_URL": store}
    process = subprocess.Popen(
        [sys.executable, "-m", "avengers_store.cli.main", "serve", "--no-auth", "--port",
         str(port), "--method", "paper", "--grace", "20"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, process.stdout.read()
            time.sleep(0.2)
        results: list[httpx.Response] = []
        body = {"model": "avengers", "messages": [{"role": "user", "content": ARITHMETIC}]}
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
                )
            )
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        while len(scripted_server.requests_for("slow")) < 3:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        code = process.wait(timeout=30)
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert [r.status_code for r in results] == [200, 200, 200], output
    assert all(r.json()["choices"][0]["message"]["content"] == "finished" for r in results)
    # uvicorn re-raises the signal once shut down, so the exit status is SIGTERM's.
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output
    route_ids = [r.headers["x-avengers-route-id"] for r in results]
    assert len(log_rows(store, route_ids)) == 3
