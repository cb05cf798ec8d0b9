"""A completion that names a pool model: the request goes to that model's endpoint as it is
(the recipe's options are refused, since nothing is routed or voted), plain or streamed, and is
counted and logged with its usage. A stream is answered once its first token came, so a model
that fails before it gets the same 502 / 504 a routed request gets."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from avengers_store import client_core as core
from avengers_store.answering.sampling import Endpoint, StreamedCompletion, response_tokens
from avengers_store.errors import EndpointError
from avengers_store.gateway import access, streaming
from avengers_store.gateway.errors import GatewayError, bad_request
from avengers_store.gateway.inputs import request_deadline
from avengers_store.gateway.protocol import RECIPE_ONLY, ChatCompletionRequest
from avengers_store.gateway.state import CompletionContext


async def passthrough(
    ctx: CompletionContext, req: ChatCompletionRequest, body: dict[str, Any], endpoint: Endpoint
) -> Response:
    """A pool model named directly: the request goes to its endpoint as it is."""
    gw, wire = ctx.gw, ctx.wire
    given = [name for name in RECIPE_ONLY if body.get(name) is not None]
    if given:
        raise bad_request(
            f"{given[0]}: a recipe option of model 'avengers'; a request naming the pool model "
            f"{endpoint.model!r} goes to it as it is",
            param=given[0],
        )
    route_id = uuid.uuid4()
    wire.bind(route_id)
    deadline = request_deadline(req, gw.settings, ctx.started)
    headers = {
        "x-avengers-route-id": str(route_id),
        "x-avengers-models": endpoint.model,
        "x-avengers-strategy": "passthrough",
    }
    access.note(route_id=str(route_id), model=endpoint.model, stream=req.stream)
    question = next((m.text() for m in reversed(req.messages) if m.role == "user"), "")
    forwarded = {k: v for k, v in body.items() if k != "timeout"}

    def row(used: tuple[int, int], took: float, error: str | None = None) -> dict[str, Any]:
        usage = {
            "model": endpoint.model,
            "samples": 1 if error is None else 0,
            "tokens_in": used[0],
            "tokens_out": used[1],
            "latency_ms": took * 1000.0,
            "requests": 1,
            "errors": 0 if error is None else 1,
        }
        return core.log_row(
            question or "(no user message)",
            None,
            None,
            route_id=route_id,
            strategy="passthrough",
            latency_ms=ctx.elapsed_ms(),
            error=error,
            api_key_id=ctx.api_key_id,
            models=[endpoint.model],
            extra={**ctx.log_extra(req.stream), "usage": [usage]},
        )

    def done(used: tuple[int, int], took: float, error: str | None = None) -> None:
        gw.metrics.stage("upstream", took)
        gw.metrics.drawn(endpoint.model, 1 if error is None else 0, *used)
        gw.log_rows([row(used, took, error)])
        access.note(tokens_in=used[0], tokens_out=used[1])

    asked = time.perf_counter()
    if not req.stream:
        try:
            response = await gw.client.chat.forward(endpoint, forwarded, deadline=deadline)
            payload = response.json()
        except EndpointError as exc:
            done((0, 0), time.perf_counter() - asked, str(exc))
            raise
        except ValueError as exc:
            done((0, 0), time.perf_counter() - asked, "not JSON")
            raise GatewayError(
                502, f"{endpoint.describe()} answered with no JSON", type="upstream_error"
            ) from exc
        if not isinstance(payload, dict):
            done((0, 0), time.perf_counter() - asked, "not a JSON object")
            raise GatewayError(
                502, f"{endpoint.describe()} answered with no JSON object", type="upstream_error"
            )
        choices = payload.get("choices")
        used = response_tokens(payload, len(choices) if isinstance(choices, list) else 1)
        done(used, time.perf_counter() - asked)
        payload["model"] = endpoint.model
        return JSONResponse(wire.body(payload), headers=headers)

    options = forwarded.get("stream_options")
    forwarded["stream_options"] = {**(options if isinstance(options, dict) else {})}
    forwarded["stream_options"]["include_usage"] = True  # spend is counted from it
    try:
        opened = await streaming.open_stream(
            gw.client.chat, endpoint, forwarded, deadline=deadline, first_token_by=deadline
        )
    except EndpointError as exc:
        done((0, 0), time.perf_counter() - asked, str(exc))
        raise

    async def chunks() -> AsyncIterator[dict[str, Any] | None]:
        streamed = StreamedCompletion()
        error: EndpointError | None = None
        chunk_id = f"chatcmpl-{route_id.hex}"
        try:
            async with opened.stack:
                async for chunk in opened.events:
                    streamed.add(chunk)
                    chunk_id = chunk.get("id") or chunk_id
                    chunk["model"] = endpoint.model
                    yield chunk
        except EndpointError as exc:
            error = exc
        except BaseException:
            # The caller went away mid-stream: the route id it was given still gets its row.
            done((streamed.tokens_in, streamed.tokens_out), time.perf_counter() - asked,
                 streaming.CLOSED)  # fmt: skip
            raise
        used = (streamed.tokens_in, streamed.tokens_out)
        done(used, time.perf_counter() - asked, str(error) if error else None)
        if error is not None:
            for chunk in streaming.broken(chunk_id, endpoint.model, error):
                yield chunk

    return StreamingResponse(
        wire.events(chunks()),
        media_type=streaming.MEDIA_TYPE,
        headers={**streaming.HEADERS, **headers},
    )
