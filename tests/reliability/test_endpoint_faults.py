"""Model endpoints that fail in every way we know, on real loopback sockets: every ``ask`` returns
from the next model or fails, within its deadline, through the sync client, the async client, the
CLI and the gateway.

The faults (``avengers_store.testing.scripted_server`` steps): a port where nothing listens, a
server that reads the request and never answers, one that answers after a minute, one that sends
its answer a piece at a time, HTTP 500, HTTP 429 asking to come back in two minutes, a body that
is not JSON, a body cut off mid-way, and a key variable that is not set.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import psycopg
import pytest
from avengers_store.cli.testing import run_process

from avengers_store import AvengersClient
from avengers_store.async_client import AsyncAvengersClient
from avengers_store.errors import AllEndpointsFailed
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.store import connections
from avengers_store.testing import (
    RANKED_MODELS,
    add_scripted_store,
    closed_port_url,
    log_rows,
    scripted_server,
)

pytestmark = pytest.mark.timeout(120)

QUESTION = "What is 6 times 7? Answer with a number."
UNSET_KEY = "AVENGERS_RELIABILITY_UNSET_KEY"
TIMEOUT = 1.5  # the deadline of each ask below
SLACK = 0.35  # scheduling on two shared cores, and the route-log write after the deadline
# Faults that answer at once get a longer deadline where only the fallback is asserted: under a
# loaded machine a 429 was seen to miss its 0.47 s share and fail as a timeout instead.
AT_ONCE = ("refused", "http 500", "429 retry-after", "malformed json", "cut mid-body", "unset key")

# fault -> (scripted step, or None for a fault of the model row; a phrase of its error)
FAULTS = {
    "refused": (None, "connection failed"),
    "hung": ({"hang": True}, "timed out"),
    "slow": ({"delay": 60, "texts": ["late"]}, "timed out"),
    "drip": ({"texts": [r"\boxed{42}"], "drip": 0.3}, "timed out"),
    "http 500": ({"status": 500}, "HTTP 500"),
    "429 retry-after": ({"status": 429, "retry_after": 120}, "not waiting"),
    "malformed json": ({"raw": '{"choices": [oops'}, "not JSON"),
    "cut mid-body": ({"cut": True}, "connection failed"),
    "unset key": (None, "which is not set"),
}


@pytest.fixture(scope="module")
def llm():
    with scripted_server() as server:
        yield server


@pytest.fixture(scope="module")
def store(db_url, llm) -> str:
    with connections.connect(db_url) as conn:
        add_scripted_store(conn, llm.base_url)
        conn.commit()
    return db_url


@pytest.fixture
def healthy(store, llm, monkeypatch) -> str:
    """Every model answers 42 from the scripted server until a test breaks one."""
    monkeypatch.delenv(UNSET_KEY, raising=False)
    with psycopg.connect(store) as conn:
        conn.execute(
            "UPDATE avengers.models SET endpoint = %s, api_key_env = NULL", (llm.base_url,)
        )
    for name in RANKED_MODELS:
        llm.answers(name, r"\boxed{42}")
    return store


def break_model(store: str, llm, model: str, fault: str) -> None:
    step, _ = FAULTS[fault]
    if step is not None:
        llm.script(model, step)
        return
    column, value = (
        ("endpoint", closed_port_url()) if fault == "refused" else ("api_key_env", UNSET_KEY)
    )
    with psycopg.connect(store) as conn:
        conn.execute(f"UPDATE avengers.models SET {column} = %s WHERE name = %s", (value, model))


def ask(store: str, kind: str, timeout: float = TIMEOUT):
    """(answer or error, seconds) of one ask with the sync or the async client."""
    started = time.perf_counter()
    try:
        if kind == "sync":
            with AvengersClient(store) as client:
                result = client.ask(QUESTION, samples=2, timeout=timeout)
        else:

            async def go():
                async with AsyncAvengersClient(store) as client:
                    return await client.ask(QUESTION, samples=2, timeout=timeout)

            result = asyncio.run(go())
    except AllEndpointsFailed as exc:
        result = exc
    return result, time.perf_counter() - started


def clients_warm(store: str) -> None:
    # Pools opened and the schema checked once, so the timed asks measure the ask alone.
    ask(store, "sync")


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_faulty_first_model_falls_back_within_the_deadline(healthy, llm, fault, kind, record):
    break_model(healthy, llm, "alpha", fault)
    deadline = 3 * TIMEOUT if fault in AT_ONCE else TIMEOUT
    answer, seconds = ask(healthy, kind, deadline)
    assert not isinstance(answer, Exception), answer
    assert answer.answer == "42" and answer.models == ("bravo",)
    (fallback,) = answer.fallbacks
    assert fallback.model == "alpha" and fallback.replaced_by == "bravo"
    assert FAULTS[fault][1] in fallback.error
    assert seconds < deadline + SLACK
    record(f"first model {fault}, {kind} ask", bound_s=deadline, measured_s=round(seconds, 3))


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_model_faulty_fails_within_the_deadline_naming_each(
    healthy, llm, fault, kind, record
):
    for name in RANKED_MODELS:
        break_model(healthy, llm, name, fault)
    with psycopg.connect(healthy) as conn:
        logged = conn.execute("SELECT max(id) FROM avengers.route_log").fetchone()[0] or 0
    error, seconds = ask(healthy, kind)
    assert isinstance(error, AllEndpointsFailed), error
    message = str(error)
    assert FAULTS[fault][1] in message
    named = [name for name in RANKED_MODELS if f"[{name}]" in message]
    left = message.partition("not asked: ")[2]
    assert named and all(name in named or name in left for name in RANKED_MODELS)
    assert seconds < TIMEOUT + SLACK
    with psycopg.connect(healthy) as conn:
        (row,) = conn.execute(
            "SELECT models, final_answer, metadata FROM avengers.route_log WHERE id > %s",
            (logged,),
        ).fetchall()
    assert row[0] == [] and row[1] is None and FAULTS[fault][1] in row[2]["error"]
    record(f"every model {fault}, {kind} ask", bound_s=TIMEOUT, measured_s=round(seconds, 3))


def test_cli_ask_with_a_hung_first_model_answers_within_its_5_s_deadline(healthy, llm, record):
    break_model(healthy, llm, "alpha", "hung")
    started = time.perf_counter()
    done = run_process(
        "ask", QUESTION, "--samples", "2", "--timeout", "5", "--json",
        env={"AVENGERS_DATABASE_URL": healthy},
    )  # fmt: skip
    seconds = time.perf_counter() - started  # the whole process: start-up, embedding, asking
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["answer"] == "42" and out["models"] == ["bravo"]
    assert [f["model"] for f in out["fallbacks"]] == ["alpha"]
    assert "share of the 5 s deadline" in out["fallbacks"][0]["error"]
    # The deadline bounds the ask (embedding, route, samples, fallbacks), not Python's start-up,
    # which a loaded machine stretches.
    assert out["latency_ms"] / 1000 <= 5.0 + SLACK
    record("avengers ask --timeout 5, hung first model", bound_s=5.0,
           ask_s=round(out["latency_ms"] / 1000, 3), process_s=round(seconds, 3))  # fmt: skip


def test_gateway_deadline_plain_streamed_and_per_request(healthy, llm, record):
    break_model(healthy, llm, "alpha", "hung")
    settings = GatewaySettings(auth=False, timeout_s=3.0)
    chat = {"model": "avengers", "messages": [{"role": "user", "content": QUESTION}]}
    with gateway_server(settings, database_url=healthy) as gw:
        url = gw.base_url + "/v1/chat/completions"
        httpx.post(url, json=chat, timeout=30)  # warm: embedder and pools
        started = time.perf_counter()
        plain = httpx.post(url, json=chat, timeout=30)
        plain_s = time.perf_counter() - started
        started = time.perf_counter()
        with httpx.stream("POST", url, json={**chat, "stream": True}, timeout=30) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith("data:")]
        stream_s = time.perf_counter() - started
        for name in RANKED_MODELS:
            break_model(healthy, llm, name, "hung")
        started = time.perf_counter()
        late = httpx.post(url, json={**chat, "timeout": 1.0}, timeout=30)
        late_s = time.perf_counter() - started
        too_long = httpx.post(url, json={**chat, "timeout": 60}, timeout=30)
    assert plain.status_code == 200 and plain.json()["model"] == "bravo"
    assert plain.headers["x-avengers-fallbacks"] == "alpha" and plain_s < 3.0 + SLACK
    text = "".join(
        (json.loads(e[5:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in events[:-1]
    )
    assert streamed.headers["x-avengers-fallbacks"] == "alpha" and text == r"\boxed{42}"
    assert events[-1] == "data: [DONE]" and stream_s < 3.0 + SLACK
    assert late.status_code == 504 and late.json()["error"]["code"] == "upstream_timeout"
    assert "no answer within the 1 s deadline" in late.json()["error"]["message"]
    assert late_s < 1.0 + SLACK
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "timeout"
    record("gateway, hung first model", bound_s=3.0, measured_s=round(plain_s, 3))
    record("gateway stream, hung first model", bound_s=3.0, measured_s=round(stream_s, 3))
    record("gateway, every model hung, timeout 1", bound_s=1.0, measured_s=round(late_s, 3))


def test_gateway_stream_cut_after_its_first_token_ends_with_an_error_and_says_so(healthy, llm):
    llm.script("alpha", {"texts": ["one two three four five"], "cut_after": 3})
    chat = {
        "model": "avengers",
        "stream": True,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    with (
        gateway_server(GatewaySettings(auth=False), database_url=healthy) as gw,
        httpx.stream("POST", gw.base_url + "/v1/chat/completions", json=chat, timeout=30) as r,
    ):
        events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert r.status_code == 200  # the first tokens were relayed: too late for another model
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert "closed the stream before its end" in error["message"]
    assert error["type"] == "upstream_error"
    last = json.loads(events[-3])["choices"][0]
    assert last["finish_reason"] == "error"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-3])
    assert text == "one two"
    route_id = r.headers["x-avengers-route-id"]
    (row,) = log_rows(healthy, [route_id]).values()
    assert row[1] == ["alpha"] and row[5]["finish_reason"] == "error"
    assert "closed the stream before its end" in row[5]["error"]


@pytest.mark.parametrize("model", ["avengers", "alpha"])
def test_a_stream_its_caller_closes_still_gets_its_route_log_row(healthy, llm, model):
    llm.script("alpha", {"texts": ["one two three four five six"], "chunk_delay": 0.5})
    chat = {"model": model, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    with gateway_server(GatewaySettings(auth=False), database_url=healthy) as gw:
        with httpx.stream("POST", gw.base_url + "/v1/chat/completions", json=chat, timeout=30) as r:
            for line in r.iter_lines():
                if '"content"' in line:
                    break  # the first token came: the caller goes away
            route_id = r.headers["x-avengers-route-id"]
        deadline = time.monotonic() + 15
        while not (rows := log_rows(healthy, [route_id])) and time.monotonic() < deadline:
            time.sleep(0.1)
    (row,) = rows.values()
    assert row[1] == ["alpha"] and row[5]["error"] == "the caller closed the stream before its end"


# What a model that answered 200 to a stream can do before its first token: stall, drip bytes,
# send a body that is not server-sent events (text, or a whole JSON completion).
STREAM_FAULTS = {
    "stall": {"texts": [r"\boxed{41}"], "first_delay": 60},
    # its first event in 8 pieces 0.3 s apart: complete after 2.1 s, past the 1.5 s share
    "drip": {"raw": 'data: {"choices": [{"delta": {"content": "41"}}]}\n\n', "drip": 0.3},
    "not sse": {"raw": "not an event stream"},
    "json body": {"json": {"choices": [{"message": {"content": "41"}}]}},
}


@pytest.mark.parametrize("fault", list(STREAM_FAULTS))
def test_gateway_stream_falls_back_until_its_first_token(healthy, llm, fault, record):
    llm.script("alpha", STREAM_FAULTS[fault])
    settings = GatewaySettings(auth=False, timeout_s=3.0)
    chat = {
        "model": "avengers",
        "stream": True,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    with gateway_server(settings, database_url=healthy) as gw:
        url = gw.base_url + "/v1/chat/completions"
        httpx.post(url, json={**chat, "stream": False, "model": "bravo"}, timeout=30)  # warm
        started = time.perf_counter()
        with httpx.stream("POST", url, json=chat, timeout=30) as streamed:
            first = time.perf_counter() - started
            events = [
                line[5:].strip() for line in streamed.iter_lines() if line.startswith("data:")
            ]
    assert streamed.status_code == 200
    assert streamed.headers["x-avengers-fallbacks"] == "alpha"
    assert streamed.headers["x-avengers-models"] == "bravo"
    text = "".join(
        (json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in events[:-1]
    )
    assert text == r"\boxed{42}" and events[-1] == "[DONE]" and '"error"' not in "".join(events)
    # The first candidate had half the 3 s deadline to send its first token.
    assert first < 3.0 + SLACK
    record(f"gateway stream, first model: {fault}", bound_s=3.0, measured_s=round(first, 3))


def test_a_passthrough_that_times_out_answers_504_like_a_routed_request(healthy, llm):
    llm.script("alpha", {"hang": True})
    llm.script("bravo", {"texts": [r"\boxed{42}"], "first_delay": 60})
    settings = GatewaySettings(auth=False, timeout_s=1.0)
    messages = [{"role": "user", "content": QUESTION}]
    with gateway_server(settings, database_url=healthy) as gw:
        url = gw.base_url + "/v1/chat/completions"
        plain = httpx.post(url, json={"model": "alpha", "messages": messages}, timeout=30)
        streamed = httpx.post(
            url, json={"model": "bravo", "messages": messages, "stream": True}, timeout=30
        )
    for response in (plain, streamed):
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "upstream_timeout"


class SlowToLoad:
    """The store's embedder, behind a model that takes twice the deadline to read once."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.loads = inner, inner.name, 0

    def load(self) -> None:
        if not self.loads:
            time.sleep(2 * TIMEOUT)
        self.loads += 1

    def embed(self, texts, **kw):
        return self.inner.embed(texts, **kw)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_reading_the_embedding_model_is_not_part_of_the_deadline(healthy, kind):
    with AvengersClient(healthy) as client:
        slow = SlowToLoad(client.embedder())
    started = time.perf_counter()
    if kind == "sync":
        with AvengersClient(healthy, embedder=slow) as client:
            answer = client.ask(QUESTION, samples=2, timeout=TIMEOUT)
    else:

        async def go():
            async with AsyncAvengersClient(healthy, embedder=slow) as client:
                return await client.ask(QUESTION, samples=2, timeout=TIMEOUT)

        answer = asyncio.run(go())
    assert slow.loads >= 1 and time.perf_counter() - started > 2 * TIMEOUT
    assert answer.answer == "42" and not answer.fallbacks
