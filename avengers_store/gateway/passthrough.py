"""A chat completion that names a pool model: the request goes to that model's endpoint as it
is, plain or streamed, and is counted and logged."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from avengers_store import client_core as core
from avengers_store.answering.sampling import Endpoint
from avengers_store.errors import EndpointError
from avengers_store.gateway import streaming
from avengers_store.gateway.errors import GatewayError, from_library
from avengers_store.gateway.inputs import request_deadline
from avengers_store.gateway.protocol import ChatCompletionRequest, token_counts
from avengers_store.gateway.state import Gateway


async def passthrough(
    gw: Gateway,
    req: ChatCompletionRequest,
    body: dict[str, Any],
    endpoint: Endpoint,
    key_id: int | None,
    started: float,
) -> Response:
    """A pool model named directly: the request goes to its endpoint as it is."""
    route_id = uuid.uuid4()
    deadline = request_deadline(req, gw.settings, started)
    headers = {
        "x-avengers-route-id": str(route_id),
        "x-avengers-models": endpoint.model,
        "x-avengers-strategy": "passthrough",
    }
    question = next((m.text() for m in reversed(req.messages) if m.role == "user"), "")

    def row(usage: tuple[int, int], error: str | None = None) -> dict[str, Any]:
        return core.log_row(
            question or "(no user message)",
            None,
            None,
            route_id=route_id,
            strategy="passthrough",
            latency_ms=(time.perf_counter() - started) * 1000.0,
            error=error,
            api_key_id=key_id,
            models=[endpoint.model],
            extra={"gateway": True, "tokens_in": usage[0], "tokens_out": usage[1]},
        )

    if not req.stream:
        asked = time.perf_counter()
        try:
            response = await gw.client.chat.forward(endpoint, body, deadline=deadline)
            payload = response.json()
        except EndpointError as exc:
            gw.log_rows([row((0, 0), str(exc))])
            raise
        except ValueError as exc:
            gw.log_rows([row((0, 0), "not JSON")])
            raise GatewayError(502, f"{endpoint.describe()} answered with no JSON") from exc
        gw.metrics.stage("upstream", time.perf_counter() - asked)
        used = token_counts(payload.get("usage"))
        gw.metrics.drawn(endpoint.model, 1, *used)
        gw.log_rows([row(used)])
        if isinstance(payload, dict):
            payload["model"] = endpoint.model
        return JSONResponse(payload, headers=headers)

    stack = contextlib.AsyncExitStack()
    try:
        events = await stack.enter_async_context(
            gw.client.chat.stream(endpoint, body, deadline=deadline)
        )
    except EndpointError as exc:
        gw.log_rows([row((0, 0), str(exc))])
        raise

    async def body_iter() -> AsyncIterator[bytes]:
        used = (0, 0)
        try:
            async with stack:
                async for event in events:
                    if event.get("usage"):
                        used = token_counts(event["usage"])
                    event["model"] = endpoint.model
                    yield streaming.event(event)
        except EndpointError as exc:
            gw.log_rows([row(used, str(exc))])
            yield streaming.event(from_library(exc).body())
            yield streaming.DONE
            return
        gw.metrics.drawn(endpoint.model, 1, *used)
        gw.log_rows([row(used)])
        yield streaming.DONE

    return StreamingResponse(
        body_iter(), media_type=streaming.MEDIA_TYPE, headers={**streaming.HEADERS, **headers}
    )
