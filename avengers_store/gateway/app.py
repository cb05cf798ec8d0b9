"""The gateway's ASGI app (Starlette): thin handlers over ``AsyncAvengersClient``.

``POST /v1/chat/completions`` with ``model: "avengers"`` routes the conversation (its last user
message, or all of it with ``route_on: "conversation"``), samples and votes with the recipe, and
answers a standard ``chat.completion`` whose ``model`` is the pool model whose answer won and whose
``usage`` sums every sample; the ``x-avengers-*`` headers (and the body's ``avengers`` object) say
what the router decided. A pool model's name passes the request straight to its endpoint.
``POST /v1/route`` returns the decision only; ``POST /v1/feedback`` scores an answer by its route
id; ``GET /v1/models``, ``/health``, ``/ready`` and ``/metrics`` describe the gateway. Route-log
rows are written in the background, and feedback is served by one refresh per
``feedback_refresh_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avengers_store import client_core as core
from avengers_store.answering import route_log, strategies
from avengers_store.answering.async_chat import AsyncChatClient
from avengers_store.answering.sampling import Deadline, Endpoint, SampleBatch
from avengers_store.async_client import AsyncAvengersClient
from avengers_store.errors import AvengersError, EndpointError
from avengers_store.gateway import keys, sessions, streaming
from avengers_store.gateway.errors import (
    GatewayError,
    bad_request,
    from_library,
    from_validation,
)
from avengers_store.gateway.metrics import Metrics
from avengers_store.gateway.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
    RouteCandidate,
    RouteInfo,
    RouteRequest,
    RouteResponse,
    Usage,
)
from avengers_store.gateway.settings import ENV, GatewaySettings
from avengers_store.routing import RouteDecision
from avengers_store.store import schema

log = logging.getLogger("avengers.gateway")

RECIPE_MODEL = "avengers"
LIMITED_PATHS = frozenset({"/v1/chat/completions", "/v1/route", "/v1/feedback"})
KNOWN_PATHS = LIMITED_PATHS | {"/v1/models", "/health", "/ready", "/metrics"}
_POOL_TTL_S = 2.0
_DEFAULT_TEMPERATURE = 0.7


class Gateway:
    """One gateway's state: settings, the async client, metrics, requests in flight."""

    def __init__(self, settings: GatewaySettings, client: AsyncAvengersClient | None = None):
        self.settings = settings
        self.metrics = Metrics()
        self.client = client or AsyncAvengersClient(
            settings.database_url,
            chat=AsyncChatClient(
                timeout=settings.upstream_timeout_s,
                max_retries=settings.upstream_retries,
                max_connections=max(settings.max_in_flight, 16),
            ),
            pool_size=settings.pool_size,
            max_concurrency=settings.max_in_flight,
            method=settings.method,
            threshold=settings.threshold,
            max_tokens=settings.max_tokens,
            embed_threads=settings.embed_threads,
            background_log=True,
            on_stage=self.metrics.stage,
            log_vectors=settings.log_vectors,
            log_texts=settings.log_texts,
            ood_policy=settings.ood_policy,
        )
        self._own_chat = client is None
        self.in_flight = 0
        self._pool: tuple[float, dict[str, Endpoint]] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._head = schema.head_revision()
        self._sql_hash = schema.sql_hash()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        # Load the embedder and open the pools now, so the first request does not pay for it;
        # a store that is not ready yet is reported by /ready, not fatal here.
        try:
            await self.client.embed(["warm up"])
        except AvengersError as exc:
            log.warning("gateway started, store not ready: %s", exc)

    async def stop(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            # Serve the feedback that arrived last before the pools close.
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, AvengersError):
                await self._refresh
            with contextlib.suppress(AvengersError):
                await self.client.refresh_production()
        chat = self.client._chat if self._own_chat else None
        await self.client.aclose()  # writes every queued route-log row first
        if chat is not None:
            await chat.aclose()

    # -- shared steps ----------------------------------------------------------------------

    async def authorize(self, request: Request) -> int | None:
        """The id of the request's live API key (None without auth); 401 otherwise."""
        if not self.settings.auth:
            return None
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise GatewayError(
                401,
                "no API key: send 'Authorization: Bearer <key>' (an operator creates keys with "
                "`avengers keys create NAME`)",
                code="invalid_api_key",
            )
        async with self.client.connection("write") as conn:
            key_id = await keys.verify(conn, key.strip())
        if key_id is None:
            raise GatewayError(
                401, "the API key is not valid or was revoked", code="invalid_api_key"
            )
        return key_id

    async def read_json(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise bad_request(f"the body is larger than {limit} bytes", code="body_too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise bad_request(f"the body is larger than {limit} bytes", code="body_too_large")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"the body is not JSON: {exc}", code="invalid_json") from exc

    async def pool_models(self) -> dict[str, Endpoint]:
        """Active models with an endpoint, by name (cached for two seconds)."""
        now = time.monotonic()
        if self._pool is not None and now - self._pool[0] < _POOL_TTL_S:
            return self._pool[1]
        async with self.client.connection("read") as conn:
            cursor = await conn.execute(
                "SELECT name, endpoint, coalesce(served_name, name), api_key_env "
                "FROM avengers.models WHERE active AND endpoint IS NOT NULL ORDER BY name"
            )
            rows = await cursor.fetchall()
        models = {r[0]: Endpoint(*r) for r in rows}
        self._pool = (now, models)
        return models

    def serve_feedback_soon(self) -> None:
        """One production refresh ``feedback_refresh_s`` from now, for every feedback row that
        arrives meanwhile (a refresh per request would serialise them on the view's lock)."""
        if self._refresh is not None and not self._refresh.done():
            return

        async def later() -> None:
            await asyncio.sleep(self.settings.feedback_refresh_s)
            try:
                await self.client.refresh_production()
            except AvengersError as exc:
                log.warning("feedback refresh failed (the next feedback retries): %s", exc)

        self._refresh = asyncio.get_running_loop().create_task(later(), name="avengers-feedback")

    def logged(self, vector: Any, text: str | None) -> dict[str, Any]:
        """The route-log fields that keep a request's embedding (``--log-vectors``) and its text
        (``--log-texts``): none unless asked."""
        if not self.settings.log_vectors or vector is None:
            return {}
        return {"vector": vector, "text": text if self.settings.log_texts else None}

    def log_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Queue rows for the background writer without holding the response."""
        asyncio.get_running_loop().create_task(self.client.log(rows))

    async def readiness(self) -> list[str]:
        problems: list[str] = []
        try:
            async with self.client.connection("read") as conn:
                cursor = await conn.execute(
                    """SELECT (SELECT version_num FROM public.avengers_alembic_version),
                              (SELECT value FROM avengers.meta WHERE key = %s),
                              (SELECT id FROM avengers.active_clustering),
                              (SELECT count(*) FROM avengers.models
                               WHERE active AND endpoint IS NOT NULL)""",
                    (schema.SQL_HASH_KEY,),
                )
                revision, applied, active, callable_models = await cursor.fetchone()
        except AvengersError as exc:
            return [f"store: {exc}"]
        except Exception as exc:  # a database error of any kind
            return [f"store: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"]
        if revision != self._head or applied != self._sql_hash:
            problems.append("schema: not current (run `avengers db upgrade`)")
        if active is None:
            problems.append("clustering: none active (run `avengers recluster`)")
        if not callable_models:
            problems.append("models: no active model has an endpoint")
        return problems


# -- handlers -------------------------------------------------------------------------------


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def chat_completions(request: Request) -> Response:
    gw = _gateway(request)
    started = time.perf_counter()
    key_id = await gw.authorize(request)
    body = await gw.read_json(request)
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from exc
    if req.model == RECIPE_MODEL:
        return await Recipe(gw, req, request, key_id, started).respond()
    pool = await gw.pool_models()
    endpoint = pool.get(req.model)
    if endpoint is None:
        raise GatewayError(
            400,
            f"the model {req.model!r} does not exist: use {RECIPE_MODEL!r} or an active pool "
            f"model ({', '.join(pool) or 'none has an endpoint'})",
            param="model",
            code="model_not_found",
        )
    return await passthrough(gw, req, body, endpoint, key_id, started)


def request_deadline(
    req: ChatCompletionRequest, settings: GatewaySettings, started: float
) -> Deadline:
    """When the request must be answered by: the gateway's ``timeout_s`` from its arrival
    (``started``, a ``perf_counter`` reading), or the request's shorter ``timeout``."""
    seconds = settings.timeout_s
    if req.timeout is not None:
        if req.timeout > settings.timeout_s:
            raise bad_request(
                f"timeout: at most {settings.timeout_s:g} seconds (the gateway's --timeout), "
                f"got {req.timeout:g}",
                param="timeout",
            )
        seconds = req.timeout
    elapsed = time.perf_counter() - started
    return Deadline(time.monotonic() - elapsed + seconds, seconds)


def routed_text(messages: Sequence[ChatMessage], route_on: str) -> str:
    """The text the router embeds: the last user message, or the conversation."""
    if route_on == "conversation":
        text = "\n".join(m.text() for m in messages if m.role in ("system", "user", "assistant"))
        if any(m.role == "user" and m.text().strip() for m in messages):
            return text
    else:
        for message in reversed(messages):
            if message.role == "user" and message.text().strip():
                return message.text()
    raise bad_request("the conversation has no user message with text", param="messages")


def costs_asked(
    tradeoff: float | None, max_cost: float | None, settings: GatewaySettings
) -> tuple[float, float | None]:
    """The request's trade-off and cost ceiling, else the server's; α = 1 when neither sets
    one, so that every routed answer carries its expected cost (decisions are the plain
    routing's at α = 1)."""
    alpha = tradeoff if tradeoff is not None else settings.tradeoff
    return (1.0 if alpha is None else alpha), (
        max_cost if max_cost is not None else settings.max_cost
    )


def cost_headers(decision: RouteDecision) -> dict[str, str]:
    """x-avengers-expected-cost (of the request on the first candidate, when known) and
    x-avengers-over-budget."""
    out = {"x-avengers-over-budget": "true" if decision.over_budget else "false"}
    if decision.expected_cost is not None:
        out["x-avengers-expected-cost"] = f"{decision.expected_cost:.6g}"
    return out


class Recipe:
    """One ``model: "avengers"`` request: route, sample, vote, answer, log."""

    def __init__(
        self,
        gw: Gateway,
        req: ChatCompletionRequest,
        request: Request,
        key_id: int | None,
        started: float,
    ) -> None:
        self.gw, self.req, self.key_id, self.started = gw, req, key_id, started
        s = gw.settings
        self.text = routed_text(req.messages, req.route_on or s.route_on)
        self.strategy = req.strategy or s.strategy
        self.samples = req.samples or s.samples
        self.top_n = req.top_n or s.top_n or core.DEFAULT_TOP_N[self.strategy]
        self.tradeoff, self.max_cost = costs_asked(req.tradeoff, req.max_cost, s)
        self.route_id = uuid.uuid4()
        self.vector: Any = None  # the embedding the request was routed with
        self.session = request.headers.get("x-session-id") or req.user
        self.failed: list[str] = []
        self.deadline = request_deadline(req, s, started)

    def plan(self, endpoints: list[Endpoint]) -> strategies.Plan:
        req, s = self.req, self.gw.settings
        return strategies.answer_plan(
            self.text,
            endpoints,
            samples=self.samples,
            strategy=self.strategy,
            task_type=req.task_type,
            threshold=req.threshold or s.threshold,
            temperature=req.temperature if req.temperature is not None else _DEFAULT_TEMPERATURE,
            max_tokens=req.token_cap or s.max_tokens,
            messages=[m.model_dump(exclude_none=True) for m in req.messages],
            extra=req.passed_on(),
            deadline=self.deadline,
        )

    async def respond(self) -> Response:
        gw, req = self.gw, self.req
        try:
            self.decision, self.vector = await gw.client.route_with_vector(
                self.text,
                self.top_n,
                require_endpoint=True,
                method=req.method,
                ood_policy=req.ood_policy,
                tradeoff=self.tradeoff,
                max_cost=self.max_cost,
                completions=core.completions_for(self.strategy, self.samples),
            )
            if self.decision.ood and self.decision.ood_policy == "widen":
                self.strategy = "model-switch"
            endpoints = await self.candidates(core.endpoints_for(self.decision))
            plan = self.plan(endpoints)
        except AvengersError as exc:
            self.log_failure(exc, None)
            raise
        relay = self.samples == 1 and self.strategy != "model-switch"
        if req.stream and (relay or self.strategy == "direct"):
            return await self.relay(plan)
        if req.stream:
            return self.voted_stream(plan)
        try:
            answer = await gw.client.run_plan(plan)
        except AvengersError as exc:
            self.log_failure(exc, self.decision)
            raise
        await self.finish(answer)
        text, model = reply(answer)
        body = ChatCompletion(
            id=self.completion_id,
            model=model,
            choices=[
                Choice(
                    message=AssistantMessage(content=text),
                    finish_reason=answer.finish_reason or "stop",
                )
            ],
            usage=Usage.of(answer.tokens_in, answer.tokens_out),
            avengers=self.info(answer),
        )
        return JSONResponse(body.model_dump(exclude_none=True), headers=self.headers(answer=answer))

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.route_id.hex}"

    async def candidates(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        """The routed endpoints, with a conversation's pinned model first."""
        if not self.session:
            return endpoints
        gw = self.gw
        async with gw.client.connection("read") as conn:
            model = await sessions.pinned(conn, self.session, gw.settings.session_ttl_s)
        if model is None:
            return endpoints
        pinned = next((e for e in endpoints if e.model == model), None)
        if pinned is None:
            pinned = (await gw.pool_models()).get(model)
        if pinned is None:  # deactivated or without endpoint since: route afresh
            return endpoints
        return [pinned, *(e for e in endpoints if e.model != model)]

    async def finish(self, answer: strategies.Answer) -> None:
        gw = self.gw
        gw.metrics.answered(answer)
        row = route_log.entry(
            self.text,
            decision=self.decision,
            answer=answer,
            strategy=self.strategy,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            route_id=self.route_id,
            api_key_id=self.key_id,
            extra={
                "top_n": self.top_n,
                "gateway": True,
                "stream": self.req.stream,
                **core.cost_fields(self.decision),
            },
            **self.gw.logged(self.vector, self.text),
        )
        gw.log_rows([row])
        if self.session and answer.model:
            async with gw.client.connection("write") as conn:
                await sessions.pin(
                    conn,
                    self.session,
                    answer.model,
                    self.decision.clustering_id,
                    self.decision.cluster,
                    gw.settings.session_ttl_s,
                )

    def log_failure(self, exc: AvengersError, decision: RouteDecision | None) -> None:
        row = route_log.entry(
            self.text,
            decision=decision,
            answer=None,
            strategy=self.strategy,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            error=str(exc),
            route_id=self.route_id,
            api_key_id=self.key_id,
            extra={
                "top_n": self.top_n,
                "gateway": True,
                "stream": self.req.stream,
                **core.cost_fields(decision),
            },
            **self.gw.logged(self.vector if decision is not None else None, self.text),
        )
        self.gw.log_rows([row])
        for fallback in getattr(exc, "failures", ()):
            self.gw.metrics.fallbacks.labels(fallback.model).inc()

    def info(self, answer: strategies.Answer | None) -> RouteInfo:
        d = self.decision
        info = RouteInfo(
            route_id=str(self.route_id),
            clustering=d.clustering_id,
            cluster=d.cluster,
            distance=d.distance,
            candidates=[c.model for c in d.candidates],
            strategy=self.strategy,
            novelty=_finite(d.novelty),
            ood=d.ood,
            ood_policy=d.ood_policy,
            exploration=d.exploration,
            explored=d.explored,
            expected_cost=d.expected_cost,
            over_budget=d.over_budget,
        )
        if answer is not None:
            info.models = list(answer.models)
            info.vote_share = answer.share
            info.votes = dict(answer.votes)
            info.fallbacks = [f.model for f in answer.fallbacks]
            info.samples = len(answer.samples)
        return info

    def headers(
        self, *, answer: strategies.Answer | None = None, models: Sequence[str] = ()
    ) -> dict[str, str]:
        d = self.decision
        out = {
            "x-avengers-route-id": str(self.route_id),
            "x-avengers-clustering": str(d.clustering_id),
            "x-avengers-cluster": str(d.cluster),
            "x-avengers-distance": f"{d.distance:.6f}",
            "x-avengers-candidates": ",".join(c.model for c in d.candidates),
            "x-avengers-strategy": self.strategy,
            **loop_headers(d),
            **cost_headers(d),
        }
        if answer is not None:
            out["x-avengers-models"] = ",".join(answer.models)
            out["x-avengers-vote-share"] = f"{answer.share:.4f}"
            failed = [f.model for f in answer.fallbacks]
        else:
            out["x-avengers-models"] = ",".join(models)
            failed = self.failed
        out["x-avengers-fallbacks"] = ",".join(failed) if failed else "none"
        return out

    # -- streaming ---------------------------------------------------------------------------

    async def relay(self, plan: strategies.Plan) -> Response:
        """One sample: open the upstream stream (falling back past endpoints that fail to
        answer), then relay its tokens as they arrive."""
        gw, req = self.gw, self.req
        stack = contextlib.AsyncExitStack()
        result: SampleBatch | EndpointError | None = None
        while True:
            try:
                call = plan.send(result)  # type: ignore[arg-type]
            except AvengersError as exc:
                self.log_failure(exc, self.decision)
                raise
            body = {
                "messages": call.messages,
                "temperature": call.temperature,
                "max_tokens": call.max_tokens,
                "stream_options": {"include_usage": True},
                **call.extra,
            }
            asked = time.perf_counter()
            try:
                events = await stack.enter_async_context(
                    gw.client.chat.stream(
                        call.endpoint, body, deadline=self.deadline, connect_by=call.deadline
                    )
                )
                break
            except EndpointError as exc:
                gw.metrics.stage("upstream", time.perf_counter() - asked)
                self.failed.append(call.endpoint.model)
                result = exc
        endpoint = call.endpoint
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def body_iter() -> AsyncIterator[bytes]:
            text: list[str] = []
            reason: str | None = None
            usage = (0, 0)
            try:
                async with stack:
                    async for event in events:
                        if event.get("usage"):
                            u = event["usage"]
                            usage = (u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0)
                        choices = event.get("choices") or []
                        for choice in choices:
                            text.append((choice.get("delta") or {}).get("content") or "")
                            reason = choice.get("finish_reason") or reason
                        if not choices and not include_usage:
                            continue  # the usage event the caller did not ask for
                        event["id"], event["model"] = self.completion_id, endpoint.model
                        if not include_usage:
                            event.pop("usage", None)
                        yield streaming.event(event)
            except EndpointError as exc:
                self.log_failure(exc, self.decision)
                yield streaming.event(from_library(exc).body())
                yield streaming.DONE
                return
            gw.metrics.stage("upstream", time.perf_counter() - asked)
            batch = SampleBatch(
                endpoint,
                ("".join(text),),
                usage[0],
                usage[1],
                (time.perf_counter() - asked) * 1000.0,
                1,
                finish_reasons=(reason,),
            )
            try:
                plan.send(batch)
            except StopIteration as stop:
                await self.finish(stop.value)
            yield streaming.DONE

        return StreamingResponse(
            body_iter(),
            media_type=streaming.MEDIA_TYPE,
            headers={**streaming.HEADERS, **self.headers(models=[endpoint.model])},
        )

    def voted_stream(self, plan: strategies.Plan) -> Response:
        """Several samples: keep-alive comments while they are drawn and voted, then the
        winning completion as chunks."""
        gw, req = self.gw, self.req
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def body_iter() -> AsyncIterator[bytes]:
            task = asyncio.create_task(gw.client.run_plan(plan))
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=gw.settings.keepalive_s)
                    if done:
                        break
                    yield streaming.KEEPALIVE
                try:
                    answer = task.result()
                except AvengersError as exc:
                    self.log_failure(exc, self.decision)
                    yield streaming.event(from_library(exc).body())
                    yield streaming.DONE
                    return
            finally:
                if not task.done():
                    task.cancel()
            await self.finish(answer)
            text, model = reply(answer)

            def chunk(delta: Delta, reason: str | None = None, **more: Any) -> bytes:
                return streaming.event(
                    ChatCompletionChunk(
                        id=self.completion_id,
                        model=model,
                        choices=[ChunkChoice(delta=delta, finish_reason=reason)],
                        **more,
                    )
                )

            yield chunk(Delta(role="assistant", content=""))
            for piece in streaming.pieces(text):
                yield chunk(Delta(content=piece))
            yield chunk(Delta(), answer.finish_reason or "stop", avengers=self.info(answer))
            if include_usage:
                usage = Usage.of(answer.tokens_in, answer.tokens_out)
                yield streaming.event(
                    ChatCompletionChunk(id=self.completion_id, model=model, choices=[], usage=usage)
                )
            yield streaming.DONE

        return StreamingResponse(
            body_iter(),
            media_type=streaming.MEDIA_TYPE,
            headers={**streaming.HEADERS, **self.headers()},
        )


def reply(answer: strategies.Answer) -> tuple[str, str]:
    """(text, model) the caller gets: the winning sample, or the first one when none parsed."""
    if answer.text is not None:
        return answer.text, answer.model or answer.models[0]
    if answer.samples:
        return answer.samples[0].raw, answer.samples[0].model or answer.models[0]
    return "", answer.models[0]


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
        return route_log.entry(
            question or "(no user message)",
            decision=None,
            answer=None,
            strategy="passthrough",
            latency_ms=(time.perf_counter() - started) * 1000.0,
            error=error,
            route_id=route_id,
            api_key_id=key_id,
            models=[endpoint.model],
            extra={"gateway": True, "tokens_in": usage[0], "tokens_out": usage[1]},
        )

    def count(usage: tuple[int, int]) -> None:
        gw.metrics.samples.labels(endpoint.model).inc()
        gw.metrics.tokens.labels(endpoint.model, "prompt").inc(usage[0])
        gw.metrics.tokens.labels(endpoint.model, "completion").inc(usage[1])

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
        usage = payload.get("usage") or {}
        used = (usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
        count(used)
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
                        u = event["usage"]
                        used = (u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0)
                    event["model"] = endpoint.model
                    yield streaming.event(event)
        except EndpointError as exc:
            gw.log_rows([row(used, str(exc))])
            yield streaming.event(from_library(exc).body())
            yield streaming.DONE
            return
        count(used)
        gw.log_rows([row(used)])
        yield streaming.DONE

    return StreamingResponse(
        body_iter(), media_type=streaming.MEDIA_TYPE, headers={**streaming.HEADERS, **headers}
    )


async def route_only(request: Request) -> Response:
    gw = _gateway(request)
    started = time.perf_counter()
    key_id = await gw.authorize(request)
    body = await gw.read_json(request)
    try:
        req = RouteRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from exc
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
    tradeoff, max_cost = costs_asked(req.tradeoff, req.max_cost, gw.settings)
    decision, vector = await gw.client.route_with_vector(
        query,
        req.top_n,
        method=req.method,
        tradeoff=tradeoff,
        max_cost=max_cost,
        ood_policy=req.ood_policy,
    )
    route_id = uuid.uuid4()
    gw.log_rows(
        [
            route_log.entry(
                question if question is not None else "(vector)",
                decision=decision,
                answer=None,
                strategy="route",
                latency_ms=(time.perf_counter() - started) * 1000.0,
                route_id=route_id,
                api_key_id=key_id,
                extra={
                    "top_n": req.top_n,
                    "gateway": True,
                    "vector": question is None,
                    **core.cost_fields(decision),
                },
                **gw.logged(vector, question),
            )
        ]
    )
    out = RouteResponse(
        route_id=str(route_id),
        clustering=decision.clustering_id,
        cluster=decision.cluster,
        distance=decision.distance,
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
                utility=c.utility,
                over_budget=c.over_budget,
            )
            for c in decision.candidates
        ],
        novelty=_finite(decision.novelty),
        ood=decision.ood,
        ood_policy=decision.ood_policy,
        production_weight=decision.production_weight,
        exploration=decision.exploration,
        explored=decision.explored,
        tradeoff=decision.tradeoff,
        max_cost=decision.max_cost,
        over_budget=decision.over_budget,
    )
    return JSONResponse(
        out.model_dump(),
        headers={
            "x-avengers-route-id": str(route_id),
            "x-avengers-clustering": str(decision.clustering_id),
            "x-avengers-cluster": str(decision.cluster),
            "x-avengers-distance": f"{decision.distance:.6f}",
            "x-avengers-candidates": ",".join(c.model for c in decision.candidates),
            **loop_headers(decision),
            **cost_headers(decision),
        },
    )


async def feedback(request: Request) -> Response:
    gw = _gateway(request)
    await gw.authorize(request)
    body = await gw.read_json(request)
    try:
        req = FeedbackRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from exc
    now = gw.settings.feedback_refresh_s == 0
    stored = await gw.client.feedback(req.route_id, req.score, req.model, req.source, refresh=now)
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
    await gw.authorize(request)
    names = [RECIPE_MODEL, *(await gw.pool_models())]
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


def _errors(handler: Any) -> Any:
    """Every handler answers errors the OpenAI way."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            return exc.response()
        except AvengersError as exc:
            return from_library(exc).response()
        except Exception:
            log.exception("unexpected error answering %s", request.url.path)
            return GatewayError(
                500, "internal error (see the gateway's log)", type="server_error"
            ).response()

    return wrapped


class Guard:
    """Pure ASGI middleware: refuses work past the in-flight limit with 429 and Retry-After
    (back-pressure instead of collapse), and counts requests and their latency."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gw = self.gateway
        path = scope["path"]
        label = path if path in KNOWN_PATHS else "other"
        limited = path in LIMITED_PATHS
        if limited and gw.in_flight >= gw.settings.max_in_flight:
            gw.metrics.rejected.inc()
            gw.metrics.requests.labels(label, "429").inc()
            error = GatewayError(
                429,
                f"{gw.settings.max_in_flight} requests are in flight, the gateway's limit: "
                "retry after a second",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
            await error.response()(scope, receive, send)
            return
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        if limited:
            gw.in_flight += 1
            gw.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observe)
        finally:
            if limited:
                gw.in_flight -= 1
                gw.metrics.in_flight.dec()
            gw.metrics.requests.labels(label, str(status)).inc()
            gw.metrics.latency.labels(label).observe(time.perf_counter() - started)


def create_app(
    settings: GatewaySettings | None = None, *, client: AsyncAvengersClient | None = None
) -> Starlette:
    """The gateway app. ``client`` replaces the AsyncAvengersClient it would make (tests)."""
    gateway = Gateway(settings or GatewaySettings(), client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _errors(chat_completions), methods=["POST"]),
            Route("/v1/route", _errors(route_only), methods=["POST"]),
            Route("/v1/feedback", _errors(feedback), methods=["POST"]),
            Route("/v1/models", _errors(list_models), methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", _errors(ready), methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.add_middleware(Guard, gateway=gateway)
    return app


def app_from_env() -> Starlette:
    """App factory for uvicorn worker processes (settings in ``$AVENGERS_GATEWAY_SETTINGS``)."""
    import os

    return create_app(GatewaySettings.from_env(os.environ[ENV]))


def _finite(value: float | None) -> float | None:
    # JSON has no infinity: an infinitely novel query (every calibration query sat on its
    # centroid) is sent as a large number.
    if value is None:
        return None
    return value if math.isfinite(value) else 1e300


def loop_headers(decision: RouteDecision) -> dict[str, str]:
    """x-avengers-ood, -novelty and -ood-policy (when the clustering has distance statistics)
    and x-avengers-explored (when its exploration is on)."""
    out = {}
    if decision.novelty is not None:
        out["x-avengers-novelty"] = f"{decision.novelty:.4f}"
        out["x-avengers-ood"] = "true" if decision.ood else "false"
        if decision.ood and decision.ood_policy:
            out["x-avengers-ood-policy"] = decision.ood_policy
    if decision.exploration is not None:
        out["x-avengers-exploration"] = decision.exploration
        out["x-avengers-explored"] = "true" if decision.explored else "false"
    return out
