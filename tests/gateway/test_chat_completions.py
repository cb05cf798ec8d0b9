"""/v1/chat/completions through the official openai SDK (sync and async, streamed and not),
in front of the real SmolLM2 server, and the scripted server where exact votes or faults
matter."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import httpx
import openai
import pytest

from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import ARITHMETIC, LITERATURE, log_rows, set_endpoints

pytestmark = pytest.mark.llm
SETTINGS = GatewaySettings(
    auth=False, policy={"method": "paper"}, upstream_retries=0, keepalive_s=0.2
)


def wait_for_rows(url: str, route_ids: list[str], timeout: float = 10.0) -> dict[str, tuple]:
    deadline = time.monotonic() + timeout
    while True:
        rows = log_rows(url, route_ids)
        if len(rows) == len(route_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_sdk_answers_and_headers_name_cluster_and_model(store, endpoints, smol_server):
    set_endpoints(store, alpha=(smol_server.base_url, "smol"), bravo=(smol_server.base_url, "smol"))
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="avengers", messages=[{"role": "user", "content": LITERATURE}], max_tokens=6
        )
        completion = raw.parse()
        other = client.chat.completions.create(
            model="avengers",
            messages=[{"role": "user", "content": ARITHMETIC}],
            max_tokens=6,
            extra_body={"samples": 2, "task_type": "math"},
        )
    assert completion.object == "chat.completion"
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.model == "bravo" and completion.usage.completion_tokens > 0
    assert raw.headers["x-avengers-cluster"] == "1"
    assert raw.headers["x-avengers-models"] == "bravo"
    assert raw.headers["x-avengers-candidates"].split(",")[:2] == ["bravo", "alpha"]
    assert raw.headers["x-avengers-fallbacks"] == "none"
    assert 0.0 <= float(raw.headers["x-avengers-vote-share"]) <= 1.0
    assert other.model == "alpha" and other.avengers["samples"] == 2  # usage sums both samples
    assert (
        other.usage.prompt_tokens == 2 * completion.usage.prompt_tokens
        or other.usage.prompt_tokens > 0
    )
    route_id = raw.headers["x-avengers-route-id"]
    rows = wait_for_rows(store, [route_id, other.avengers["route_id"]])
    strategy, models, cluster, _, key, meta = rows[route_id]
    assert (strategy, models, cluster, key) == ("self-consistency", ["bravo"], 1, None)
    assert meta["gateway"] is True and meta["usage"][0]["samples"] == 1


def test_stream_relays_tokens_then_done(store, endpoints, smol_server):
    set_endpoints(store, bravo=(smol_server.base_url, "smol"))
    body = {
        "model": "avengers",
        "messages": [{"role": "user", "content": LITERATURE}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        chunks = list(
            client.chat.completions.create(
                model="avengers",
                messages=[{"role": "user", "content": LITERATURE}],
                max_tokens=6,
                stream=True,
            )
        )
        with httpx.stream("POST", gw.base_url + "/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line]
            headers = response.headers
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert {c.model for c in chunks} == {"bravo"}
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' in lines[-2] and headers["x-avengers-models"] == "bravo"
    assert headers["content-type"].startswith("text/event-stream")


def test_async_sdk_voted_stream_sends_keepalives_then_the_winner(store, endpoints, scripted_server):
    scripted_server.script(
        "a", {"delay": 0.5, "texts": ["It is \\boxed{42}", "\\boxed{41}", "So \\boxed{42}"]}
    )
    set_endpoints(store, alpha=(scripted_server.base_url, "a"))
    body = {
        "model": "avengers",
        "messages": [{"role": "user", "content": ARITHMETIC}],
        "stream": True,
        "samples": 3,
        "task_type": "math",
    }
    with gateway_server(SETTINGS, database_url=store) as gw:

        async def go():
            client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="unused")
            stream = await client.chat.completions.create(
                model="avengers",
                messages=[{"role": "user", "content": ARITHMETIC}],
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"samples": 3, "task_type": "math"},
            )
            chunks = [c async for c in stream]
            plain = await client.chat.completions.create(
                model="avengers",
                messages=[{"role": "user", "content": ARITHMETIC}],
                extra_body={"samples": 3, "task_type": "math"},
            )
            await client.close()
            return chunks, plain

        chunks, plain = asyncio.run(go())
        with httpx.stream("POST", gw.base_url + "/v1/chat/completions", json=body) as response:
            raw = response.read().decode()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "It is \\boxed{42}"
    assert chunks[-1].usage.completion_tokens == 15  # three samples of five tokens
    assert plain.choices[0].message.content == "It is \\boxed{42}"
    assert plain.avengers["votes"] == {"42": 2, "41": 1}
    assert raw.startswith(": keep-alive") and raw.rstrip().endswith("data: [DONE]")


def test_fallback_is_named_in_the_headers(store, endpoints, scripted_server, closed_port_url):
    scripted_server.answers("b", "Shakespeare")
    set_endpoints(store, bravo=(closed_port_url, "down"), alpha=(scripted_server.base_url, "b"))
    with gateway_server(SETTINGS, database_url=store) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="avengers", messages=[{"role": "user", "content": LITERATURE}]
        )
        streamed = client.chat.completions.with_raw_response.create(
            model="avengers", messages=[{"role": "user", "content": LITERATURE}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    assert raw.headers["x-avengers-fallbacks"] == "bravo"
    assert raw.headers["x-avengers-models"] == "alpha"
    assert raw.parse().choices[0].message.content == "Shakespeare"
    assert streamed.headers["x-avengers-fallbacks"] == "bravo" and text == "Shakespeare"


def test_32_concurrent_requests_all_answered_and_logged(store, endpoints, smol_server):
    set_endpoints(store, alpha=(smol_server.base_url, "smol"), bravo=(smol_server.base_url, "smol"))
    with gateway_server(SETTINGS, database_url=store, max_in_flight=32) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)

        def ask(i: int) -> str:
            question = ARITHMETIC if i % 2 else LITERATURE
            raw = client.chat.completions.with_raw_response.create(
                model="avengers",
                messages=[{"role": "user", "content": f"{question} (#{i})"}],
                max_tokens=2,
            )
            raw.parse()
            return raw.headers["x-avengers-route-id"]

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            route_ids = list(pool.map(ask, range(32)))
    # The gateway has stopped: its shutdown wrote every queued row.
    rows = log_rows(store, route_ids)
    assert len(set(route_ids)) == 32 and len(rows) == 32
    assert all(r[0] == "self-consistency" and "error" not in r[5] for r in rows.values())
