"""One request's bad input is that request's error, never its neighbours': a text the tokenizer
cannot read is refused alone (the async client's shared embedding batch, the gateway), and a
body past the gateway's limits (depth, size, digits) is a 400, not a 500."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from avengers_store.async_client import AsyncAvengersClient
from avengers_store.calibration.embedders import Embedder, get_embedder
from avengers_store.calibration.embedding_batches import EmbeddingBatcher
from avengers_store.errors import InputError
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.routing import RouteDecision
from avengers_store.testing import ARITHMETIC, LITERATURE, set_endpoints, two_topic_store

pytestmark = pytest.mark.timeout(180)

SURROGATE = "What is 2 plus 2?\ud800"
VALID = [ARITHMETIC, LITERATURE, "What is 9 times 9?", "Who wrote Macbeth?", "2+2?", "Odyssey?"]


@pytest.fixture(scope="module")
def store(db_url) -> str:
    return two_topic_store(db_url, {"alpha": [[1, 1], [0, 0]], "bravo": [[0, 0], [1, 1]]})


def test_a_lone_surrogate_fails_only_its_own_route_in_a_shared_batch(store, record):
    """Seven routes at once through one async client: their texts share an embedding batch;
    the one holding a lone surrogate gets an InputError naming its text, the six others route."""

    async def go() -> tuple[list[object], int]:
        async with AsyncAvengersClient(store) as client:
            await client.route(ARITHMETIC, 1)  # the model read, the serving space cached
            before = client._batcher.batches
            texts = [*VALID[:3], SURROGATE, *VALID[3:]]
            out = await asyncio.gather(*(client.route(t, 1) for t in texts), return_exceptions=True)
            return out, client._batcher.batches - before

    out, batches = asyncio.run(go())
    decisions = [o for o in out if isinstance(o, RouteDecision)]
    errors = [o for o in out if isinstance(o, BaseException)]
    assert len(decisions) == 6, out
    assert len(errors) == 1 and isinstance(errors[0], InputError), errors
    assert errors[0].location == "text" and "surrogate" in str(errors[0])
    assert out.index(errors[0]) == 3
    assert batches <= 2  # the six valid texts still went in one or two batches
    record("7 concurrent routes, one with a lone surrogate", routed=6, refused=1)


class _Poisoned(Embedder):
    """The real all-MiniLM-L6-v2, except that a batch holding the word "poison" fails as a
    tokenizer would: the failure the batcher cannot see coming."""

    def __init__(self) -> None:
        self.inner = get_embedder("all-MiniLM-L6-v2")
        self.name = self.inner.name
        self.calls: list[int] = []

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str], **kw: object) -> np.ndarray:
        self.calls.append(len(texts))
        if any("poison" in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        return self.inner.embed(texts)


def test_a_batch_that_fails_is_retried_one_request_at_a_time():
    embedder = _Poisoned()
    embedder.inner.load()

    async def go() -> list[object]:
        batcher = EmbeddingBatcher()
        try:
            texts = [["one"], ["two", "three"], ["poison"], ["four"]]
            return await asyncio.gather(
                *(batcher.embed(embedder, t) for t in texts), return_exceptions=True
            )
        finally:
            batcher.close()

    out = asyncio.run(go())
    assert [type(o).__name__ for o in out] == ["ndarray", "ndarray", "TypeError", "ndarray"]
    assert [o.shape for o in out if isinstance(o, np.ndarray)] == [(1, 384), (2, 384), (1, 384)]
    assert len(embedder.calls) >= 5  # the shared batch, then each request alone


def test_gateway_six_valid_requests_and_one_surrogate_at_once(store, scripted_server, record):
    """The check of the issue: 6 × 200 and one 400 naming the field, in every round."""
    scripted_server.answers("a", "42")
    scripted_server.answers("b", "Shakespeare")
    set_endpoints(
        store, alpha=(scripted_server.base_url, "a"), bravo=(scripted_server.base_url, "b")
    )
    with gateway_server(GatewaySettings(auth=False), database_url=store) as gw:
        url = gw.base_url + "/v1/chat/completions"
        # Encoded by hand: a JSON writer would refuse the lone surrogate, a hostile client not.
        bad = (
            '{"model": "avengers", "messages": [{"role": "user", "content": '
            '"What is 2 plus 2?\\ud800"}]}'
        )

        def post(text: str | None) -> httpx.Response:
            if text is None:
                return httpx.post(url, content=bad, timeout=60)
            body = {"model": "avengers", "messages": [{"role": "user", "content": text}]}
            return httpx.post(url, json=body, timeout=60)

        rounds = []
        with concurrent.futures.ThreadPoolExecutor(7) as pool:
            for _ in range(3):
                began = time.perf_counter()
                answers = list(pool.map(post, [*VALID, None]))
                rounds.append((answers, time.perf_counter() - began))
    for answers, _ in rounds:
        assert [r.status_code for r in answers] == [200] * 6 + [400], [r.text for r in answers]
        error = answers[-1].json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == "messages[0].content" and error["code"] == "invalid_unicode"
        assert "surrogate" in error["message"]
    record(
        "gateway, 6 valid + 1 lone surrogate at once, 3 rounds",
        statuses="6 x 200 + 1 x 400 each round",
        slowest_round_s=round(max(s for _, s in rounds), 3),
    )


def nested(depth: int) -> bytes:
    return b'{"model": "avengers", "messages": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (nested(100_000), "invalid_json"),  # a RecursionError in the parser
        (nested(500), "invalid_json"),  # parses, past the depth limit
        (b'{"model": "avengers", "max_tokens": ' + b"9" * 5_000 + b"}", "invalid_json"),
        (b'{"model": "av\\udfffengers", "messages": []}', "invalid_unicode"),
        (b'{"model": "avengers", "\\ud800": 1}', "invalid_unicode"),
        (b'{"model": "avengers", "messages": [' + b" " * 1_100_000 + b"]}", "body_too_large"),
    ],
    ids=["100k-deep", "500-deep", "5000-digit-int", "surrogate-value", "surrogate-key", "1.1MB"],
)
def test_bodies_past_the_limits_are_a_400(store, body, code):
    with gateway_server(GatewaySettings(auth=False), database_url=store) as gw:
        answers = [
            httpx.post(gw.base_url + path, content=body, timeout=60)
            for path in ("/v1/chat/completions", "/v1/route", "/v1/feedback")
        ]
        healthy = httpx.get(gw.base_url + "/health", timeout=10).status_code
    for response in answers:
        assert response.status_code == 400, response.text[:300]
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert healthy == 200
