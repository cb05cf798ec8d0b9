"""The endpoint handlers: ``/v1/chat/completions`` and ``/v1/responses`` (the recipe or a
passthrough, on either wire), ``/v1/route``, ``/v1/feedback``, ``/v1/models``, ``/health``,
``/ready`` and ``/metrics``."""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from avengers_store import client_core as core
from avengers_store.gateway import access
from avengers_store.gateway.errors import GatewayError, bad_request, from_validation
from avengers_store.gateway.headers import decision_headers
from avengers_store.gateway.inputs import check_model, policy_changes, routed_text
from avengers_store.gateway.passthrough import passthrough
from avengers_store.gateway.protocol import (
    ChatCompletionRequest,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
    RouteCandidate,
    RouteRequest,
    RouteResponse,
    decision_fields,
)
from avengers_store.gateway.recipe import RECIPE_MODEL, Recipe
from avengers_store.gateway.responses import ResponsesRequest, ResponsesWire, to_chat
from avengers_store.gateway.state import CompletionContext, Gateway
from avengers_store.gateway.streaming import ChatWire

Body = TypeVar("Body", bound=BaseModel)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def _parsed(gw: Gateway, request: Request, kind: type[Body]) -> tuple[Body, Any]:
    """The request's JSON body validated as ``kind``, and the body as it came (400 otherwise)."""
    body = await gw.read_json(request)
    try:
        return kind.model_validate(body), body
    except ValidationError as exc:
        raise from_validation(exc) from exc


async def chat_completions(request: Request) -> Response:
    gw = _gateway(request)
    started = time.perf_counter()
    grant = await gw.authorize(request)
    req, body = await _parsed(gw, request, ChatCompletionRequest)
    ctx = CompletionContext(gw, request, grant, started, ChatWire(req.include_usage))
    return await _complete(ctx, req, body)


async def responses(request: Request) -> Response:
    gw = _gateway(request)
    started = time.perf_counter()
    grant = await gw.authorize(request)
    given, body = await _parsed(gw, request, ResponsesRequest)
    chat = to_chat(given, body)
    try:
        req = ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:
        raise from_validation(exc) from exc
    ctx = CompletionContext(gw, request, grant, started, ResponsesWire(given, body))
    return await _complete(ctx, req, chat)


async def _complete(
    ctx: CompletionContext, req: ChatCompletionRequest, body: dict[str, Any]
) -> Response:
    """A completion on ``ctx.wire``: routed and voted for ``avengers``, else passed to the pool
    model it names (one the key may use)."""
    if req.model == RECIPE_MODEL:
        return await Recipe(ctx, req, body).respond()
    pool = await ctx.gw.pool_models()
    endpoint = pool.get(req.model)
    if endpoint is None:
        raise GatewayError(
            400,
            f"the model {req.model!r} does not exist: use {RECIPE_MODEL!r} or an active pool "
            f"model ({', '.join(pool) or 'none has an endpoint'})",
            param="model",
            code="model_not_found",
        )
    check_model(req.model, ctx.grant)
    return await passthrough(ctx, req, body, endpoint)


async def route_only(request: Request) -> Response:
    gw = _gateway(request)
    started = time.perf_counter()
    grant = await gw.authorize(request)
    req, _ = await _parsed(gw, request, RouteRequest)
    if req.vector is not None:
        query: Any = np.asarray(req.vector, dtype=np.float32)
        question = None
    elif req.input is not None:
        if not req.input.strip():
            raise bad_request("input is empty", param="input")
        query = question = req.input
    elif req.messages:
        query = question = routed_text(req.messages, req.route_on or gw.settings.route_on)
    else:
        raise bad_request("give input (a text), messages or vector", param="input")
    decision, vector = await gw.client.route_with_vector(
        query, req.top_n, seed=req.seed, **policy_changes(req, grant)
    )
    route_id = uuid.uuid4()
    access.note(route_id=str(route_id))
    gw.log_rows(
        [
            core.log_row(
                question if question is not None else "(vector)",
                decision,
                None,
                route_id=route_id,
                strategy="route",
                latency_ms=(time.perf_counter() - started) * 1000.0,
                api_key_id=grant.key_id if grant is not None else None,
                extra={"gateway": True, "vector": question is None},
                **gw.logged(vector, question),
            )
        ]
    )
    out = RouteResponse(
        **decision_fields(route_id, decision),
        candidates=[
            RouteCandidate(
                model=c.model,
                rank=c.rank,
                score=c.score,
                mean_score=c.mean_score,
                n=c.n,
                wilson_low=c.wilson_low,
                wilson_high=c.wilson_high,
                production_n=c.production_n,
                production_mean=c.production_mean,
                expected_cost=c.expected_cost,
                expected_latency_ms=c.expected_latency_ms,
                utility=c.utility,
                over_budget=c.over_budget,
                evidence=c.evidence,
                propensity=c.propensity,
            )
            for c in decision.candidates
        ],
        production_weight=decision.production_weight,
        tradeoff=decision.tradeoff,
        max_cost=decision.max_cost,
    )
    return JSONResponse(
        out.model_dump(),
        headers=decision_headers(route_id, decision),
    )


async def feedback(request: Request) -> Response:
    gw = _gateway(request)
    await gw.authorize(request, admit=False)
    req, _ = await _parsed(gw, request, FeedbackRequest)
    now = gw.settings.feedback_refresh_s == 0
    route_id = req.route_id.removeprefix("resp_")  # a Responses id is its route id
    access.note(route_id=route_id)
    stored = await gw.client.feedback(route_id, req.score, req.model, req.source, refresh=now)
    gw.metrics.fed_back(stored.source, stored.score, stored.replaced)
    if not now:
        gw.serve_feedback_soon()
    out = FeedbackResponse(
        id=stored.id,
        route_id=str(stored.route_id),
        model=stored.model,
        score=stored.score,
        source=stored.source,
        replaced=stored.replaced,
    )
    return JSONResponse(out.model_dump())


async def list_models(request: Request) -> Response:
    gw = _gateway(request)
    grant = await gw.authorize(request, admit=False)
    allowed = grant.policy.models if grant is not None else None
    names = [RECIPE_MODEL, *(m for m in await gw.pool_models() if allowed is None or m in allowed)]
    return JSONResponse(ModelList(data=[ModelCard(id=n) for n in names]).model_dump())


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    problems = await _gateway(request).readiness()
    if problems:
        error = GatewayError(503, "; ".join(problems), type="service_unavailable", code="not_ready")
        return error.response()
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    data, content_type = _gateway(request).metrics.exposition()
    return Response(data, media_type=content_type)
