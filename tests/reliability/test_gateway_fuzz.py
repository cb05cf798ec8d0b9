"""Fuzzing the gateway: generated chat, responses, route and feedback bodies, valid and broken
(encodings, lone surrogates, depth, sizes, wrong types, unknown fields), sent to a live gateway
on loopback while a steady stream of valid requests runs beside them. Every valid request is
answered 200, every broken one a 4xx with an OpenAI error body (``{"error": {message, type,
param, code}}``), anything else never a 5xx, and ``/health`` stays up throughout.

The store routes real text (all-MiniLM-L6-v2, two clusters) to a scripted model server. Bounded
like the importer fuzzer: derandomized, 60 examples per property, a deadline per example.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from avengers_store.gateway.bodies import MAX_DEPTH
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import (
    ARITHMETIC,
    LITERATURE,
    scripted_server,
    set_endpoints,
    two_topic_store,
)

settings.register_profile(
    "gateway-ci",
    max_examples=60,
    deadline=timedelta(seconds=20),  # shared cores: generous, still a bound per example
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("gateway-thorough", parent=settings.get_profile("gateway-ci"),
                          max_examples=500, derandomize=False)  # fmt: skip
PROFILE = settings.get_profile(
    "gateway-thorough" if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else "gateway-ci"
)

pytestmark = pytest.mark.timeout(420)

MAX_BODY = 100_000
PATHS = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "route": "/v1/route",
    "feedback": "/v1/feedback",
}


class Live:
    """The gateway, the route ids feedback may name, and the steady stream beside the fuzzer."""

    def __init__(self, base_url: str, route_ids: list[str]) -> None:
        self.base_url = base_url
        self.route_ids = route_ids
        self.steady: Counter = Counter()
        self.health: Counter = Counter()
        self.failures: list[str] = []
        self.done = threading.Event()
        self.threads = [
            threading.Thread(target=self._steady, daemon=True),
            threading.Thread(target=self._health, daemon=True),
        ]

    def _steady(self) -> None:
        bodies = [
            ("chat", chat_body(ARITHMETIC)),
            ("route", {"input": LITERATURE}),
            ("chat", {**chat_body(LITERATURE), "stream": True}),
            ("feedback", {"route_id": self.route_ids[0], "score": 1.0}),
        ]
        with httpx.Client(base_url=self.base_url, timeout=60) as http:
            i = 0
            while not self.done.is_set():
                kind, body = bodies[i % len(bodies)]
                i += 1
                r = http.post(PATHS[kind], json=body)
                self.steady[r.status_code] += 1
                if r.status_code != 200:
                    self.failures.append(f"steady {kind}: {r.status_code} {r.text[:300]}")

    def _health(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            while not self.done.wait(0.2):
                try:
                    status = http.get("/health").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.health[status] += 1

    def check(self) -> None:
        """The steady stream was answered 200 and /health up, so far."""
        assert not self.failures, self.failures[:5]
        assert set(self.health) <= {200}, self.health


@pytest.fixture(scope="module")
def live(db_url) -> Iterator[Live]:
    store = two_topic_store(db_url, {"alpha": [[1, 1], [0, 0]], "bravo": [[0, 0], [1, 1]]})
    with scripted_server() as llm:
        llm.answers("a", "42")
        llm.answers("b", "Shakespeare")
        set_endpoints(store, alpha=(llm.base_url, "a"), bravo=(llm.base_url, "b"))
        overrides = {"database_url": store, "auth": False, "max_body_bytes": MAX_BODY}
        with gateway_server(GatewaySettings(), **overrides) as gw:
            route_ids = []
            for text in (ARITHMETIC, LITERATURE):
                r = httpx.post(gw.base_url + PATHS["chat"], json=chat_body(text), timeout=60)
                assert r.status_code == 200, r.text
                route_ids.append(r.headers["x-avengers-route-id"])
            running = Live(gw.base_url, route_ids)
            for t in running.threads:
                t.start()
            try:
                yield running
            finally:
                running.done.set()
                for t in running.threads:
                    t.join(timeout=60)
    assert sum(running.steady.values()) > 0


def chat_body(text: str) -> dict[str, Any]:
    return {"model": "avengers", "messages": [{"role": "user", "content": text}]}


def post(live: Live, kind: str, body: bytes | dict) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        live.base_url + PATHS[kind],
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )


def is_openai_error(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (
        set(error) == {"message", "type", "param", "code"}
        and isinstance(error["message"], str)
        and bool(error["message"])
        and isinstance(error["type"], str)
    )


# -- generated content -------------------------------------------------------------------------

# Text a caller may send: any Unicode but lone surrogates, with something to route on.
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=300).filter(str.strip)
UNKNOWN_FIELDS = st.dictionaries(
    st.text("abcdefghijk", min_size=1, max_size=8).map(lambda k: f"x_{k}"),  # none it reads
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), TEXT, st.lists(TEXT, max_size=3)),
    max_size=3,
)
JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(codec="utf-8"), max_size=20),
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def valid_bodies(draw, live: Live) -> tuple[str, dict]:
    kind = draw(st.sampled_from(["chat", "responses", "route", "feedback"]))
    extra = draw(UNKNOWN_FIELDS)
    if kind == "responses":
        body = {"model": "avengers", "input": draw(TEXT), "stream": draw(st.booleans())}
        body["max_output_tokens"] = draw(st.integers(1, 512))
        if draw(st.booleans()):
            body["instructions"] = draw(TEXT)
    elif kind == "chat":
        body = chat_body(draw(TEXT))
        body["temperature"] = draw(st.floats(0.0, 2.0))
        body["max_tokens"] = draw(st.integers(1, 512))
        body["stream"] = draw(st.booleans())
        if draw(st.booleans()):
            body["messages"].insert(0, {"role": "system", "content": draw(TEXT)})
    elif kind == "route":
        body = draw(
            st.sampled_from(
                [{"input": draw(TEXT)}, {"messages": [{"role": "user", "content": draw(TEXT)}]}]
            )
        )
        body["top_n"] = draw(st.integers(1, 2))
    else:
        body = {
            "route_id": draw(st.sampled_from(live.route_ids)),
            "score": draw(st.floats(0.0, 1.0)),
        }
    return kind, {**extra, **body}


def nest(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@st.composite
def broken_bodies(draw, live: Live) -> tuple[str, str, bytes]:
    """(endpoint, what is broken, the body's bytes): each is a 4xx by construction."""
    kind, body = draw(valid_bodies(live))
    fault = draw(
        st.sampled_from(
            ["utf16", "bad-utf8", "truncated", "not-json", "nan", "surrogate", "depth", "size",
             "type", "range", "missing", "empty", "top-level"]
        )
    )  # fmt: skip
    text = json.dumps(body)
    if fault == "utf16":
        data = text.encode("utf-16")
    elif fault == "bad-utf8":
        at = draw(st.integers(0, len(text)))
        data = text[:at].encode() + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
        data += text[at:].encode()
    elif fault == "truncated":
        data = text.encode()[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif fault == "not-json":
        data = draw(st.sampled_from([b"hello", b"{'model': 'avengers'}", b"[1,2,", b"{]"]))
    elif fault == "nan":
        data = text[:-1].encode() + b', "x_n": ' + draw(st.sampled_from([b"NaN", b"-Infinity"]))
        data += b"}"
    elif fault == "surrogate":
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\udbff"]))
        field = {"chat": "model", "responses": "model", "route": "top_n", "feedback": "route_id"}[
            kind
        ]
        # Into a string the gateway reads, or a key: a lone surrogate anywhere is refused.
        if draw(st.booleans()) and kind != "route":
            data = text.replace(f'"{field}": "', f'"{field}": "{escape}', 1).encode()
        else:
            data = ('{"' + escape + 'k": 1, ' + text[1:]).encode()
    elif fault == "depth":
        depth = draw(st.sampled_from([MAX_DEPTH + 1, 500, 5_000, 100_000]))
        data = (text[:-1] + ', "x_deep": ' + json.dumps(nest(min(depth, 900))) + "}").encode()
        if depth > 900:  # past what json.dumps writes: built as text
            data = text[:-1].encode() + b', "x_deep": ' + b"[" * depth + b"]" * depth + b"}"
    elif fault == "size":
        pad = "p" * (MAX_BODY + draw(st.integers(1, 50_000)))
        data = json.dumps({**body, "x_pad": pad}).encode()
    elif fault == "type":
        # Values no lax reading turns into the right type (a bool reads as a number, 7 is a
        # top_n): messages, top_n and score of the wrong kind.
        field, wrongs = {
            "chat": ("messages", ["text", 7, None, {"a": 1}, [1, 2], True]),
            "responses": ("input", [7, None, {"a": 1}, [1, 2], True, []]),
            "route": ("top_n", ["text", None, {"a": 1}, [1, 2], 2.5]),
            "feedback": ("score", ["text", None, {"a": 1}, [1, 2], 7]),
        }[kind]
        data = json.dumps({**body, field: draw(st.sampled_from(wrongs))}).encode()
    elif fault == "range":
        field, value = draw(
            st.sampled_from(
                {
                    "chat": [("samples", 0), ("samples", 65), ("top_n", 99), ("temperature", 9)],
                    "responses": [("samples", 0), ("max_output_tokens", 0), ("top_p", 1.5)],
                    "route": [("top_n", 0), ("top_n", 17), ("tradeoff", 2.0)],
                    "feedback": [("score", -0.5), ("score", 1.5)],
                }[kind]
            )
        )
        data = json.dumps({**body, field: value}).encode()
    elif fault == "missing":
        required = {"chat": "model", "responses": "input", "route": None, "feedback": "route_id"}[
            kind
        ]
        if required is None:  # a route needs input, messages or vector
            body = {k: v for k, v in body.items() if k not in ("input", "messages")}
        else:
            body = {k: v for k, v in body.items() if k != required}
        data = json.dumps(body).encode()
    elif fault == "empty":
        data = b""
    else:
        data = json.dumps(draw(st.sampled_from([[body], "text", 3, None]))).encode()
    return kind, fault, data


# -- the properties ----------------------------------------------------------------------------


# The gateway's threads and the steady stream run beside the fuzzer and draw from the global
# `random` module; hypothesis sees its state move during a draw and blames the strategy, which
# draws from hypothesis alone.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@PROFILE
@given(data=st.data())
def test_valid_bodies_are_answered_200(live, data):
    kind, body = data.draw(valid_bodies(live))
    event(kind)
    response = post(live, kind, body)
    assert response.status_code == 200, (kind, body, response.text[:500])
    if kind == "responses" and body["stream"]:
        assert "event: response.completed" in response.text or (
            "event: response.incomplete" in response.text
        )
        assert "response.failed" not in response.text, response.text[:500]
    elif kind == "responses":
        assert response.json()["error"] is None and response.json()["status"] != "failed"
    elif body.get("stream"):
        assert response.text.rstrip().endswith("data: [DONE]")
        assert '"error"' not in response.text, response.text[:500]
    else:
        assert "error" not in response.json()
    live.check()


@PROFILE
@given(data=st.data())
def test_broken_bodies_are_a_4xx_in_the_openai_shape(live, data):
    kind, fault, body = data.draw(broken_bodies(live))
    event(f"{kind} {fault}")
    response = post(live, kind, body)
    assert 400 <= response.status_code < 500, (kind, fault, body[:300], response.text[:500])
    assert is_openai_error(response), response.text[:500]
    live.check()


@PROFILE
@given(
    kind=st.sampled_from(list(PATHS)),
    body=st.one_of(
        JSON,
        st.fixed_dictionaries(
            {}, optional={k: JSON for k in ("model", "messages", "input", "route_id", "score")}
        ),
        st.fixed_dictionaries(
            {"model": st.just("avengers")},
            optional={
                "messages": st.lists(
                    st.fixed_dictionaries({"role": JSON, "content": JSON}), max_size=3
                ),
                "samples": JSON,
                "strategy": JSON,
                "top_n": JSON,
                "stream": JSON,
            },
        ),
    ),
)
def test_anything_else_is_never_a_5xx(live, kind, body):
    response = post(live, kind, body)
    event(f"{kind} {response.status_code}")
    assert response.status_code < 500, (kind, body, response.text[:500])
    if response.status_code >= 400:
        assert is_openai_error(response), response.text[:500]
    live.check()


def test_the_steady_stream_was_answered_throughout(live, record):
    """Last in the module: the stream ran beside every example above."""
    time.sleep(0.5)
    live.check()
    assert live.steady[200] > 20 and set(live.steady) == {200}
    record(
        "gateway fuzzer: steady valid requests beside the generated ones",
        steady_200=live.steady[200],
        health_checks=sum(live.health.values()),
    )
