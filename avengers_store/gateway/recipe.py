"""One ``model: "avengers"`` chat completion (``Recipe``): route, sample, vote, answer (plain or
streamed) and log; ``reply`` picks the text and model the caller gets."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from avengers_store import client_core as core
from avengers_store.answering import strategies
from avengers_store.answering.sampling import SampleBatch
from avengers_store.errors import AvengersError, EndpointError
from avengers_store.gateway import sessions, streaming
from avengers_store.gateway.errors import from_library
from avengers_store.gateway.headers import decision_headers
from avengers_store.gateway.inputs import request_deadline, routed_text
from avengers_store.gateway.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    RouteInfo,
    Usage,
    finite,
    token_counts,
)
from avengers_store.gateway.state import Gateway
from avengers_store.routing import RouteDecision

RECIPE_MODEL = "avengers"
_DEFAULT_TEMPERATURE = 0.7


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
        self.route_id = uuid.uuid4()
        self.vector: Any = None  # the embedding the request was routed with
        self.session = request.headers.get("x-session-id") or req.user
        self.failed: list[str] = []
        self.deadline = request_deadline(req, s, started)

    def plan(self) -> strategies.Plan:
        req, s = self.req, self.gw.settings
        question = core.Question(
            self.text,
            messages=[m.model_dump(exclude_none=True) for m in req.messages],
            extra=req.passed_on(),
            temperature=req.temperature if req.temperature is not None else _DEFAULT_TEMPERATURE,
            max_tokens=req.token_cap or s.max_tokens,
        )
        return self.gw.client.plan(
            question,
            self.decision,
            samples=self.samples,
            strategy=self.strategy,
            task_type=req.task_type,
            threshold=req.threshold or s.threshold,
            deadline=self.deadline,
        )

    async def pinned(self) -> str | None:
        """The model the conversation stays on (None: no session, or none pinned)."""
        if not self.session:
            return None
        rows = await self.gw.client.execute(
            sessions.pinned_statement(self.session, self.gw.settings.session_ttl_s)
        )
        return rows[0][0] if rows else None

    async def respond(self) -> Response:
        gw, req = self.gw, self.req
        try:
            self.decision, self.vector = await gw.client.route_with_vector(
                self.text,
                self.top_n,
                require_endpoint=True,
                completions=core.completions_for(self.strategy, self.samples),
                pinned=await self.pinned(),
                **req.policy_changes(),
            )
            if self.decision.ood and self.decision.ood_policy == "widen":
                self.strategy = "model-switch"
            plan = self.plan()
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

    async def finish(self, answer: strategies.Answer) -> None:
        gw = self.gw
        gw.metrics.answered(answer)
        gw.log_rows([self.row(self.decision, answer)])
        if self.session and answer.model:
            await gw.client.execute(
                sessions.pin_statement(
                    self.session,
                    answer.model,
                    self.decision.clustering_id,
                    self.decision.cluster,
                    gw.settings.session_ttl_s,
                ),
                "write",
            )

    def log_failure(self, exc: AvengersError, decision: RouteDecision | None) -> None:
        self.gw.log_rows([self.row(decision, None, error=str(exc))])
        for fallback in getattr(exc, "failures", ()):
            self.gw.metrics.fallbacks.labels(fallback.model).inc()

    def row(
        self,
        decision: RouteDecision | None,
        answer: strategies.Answer | None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """The request's route-log row: answered, or failed with ``error`` (before routing when
        ``decision`` is None, so no embedding is kept)."""
        return core.log_row(
            self.text,
            decision,
            answer,
            route_id=self.route_id,
            strategy=self.strategy,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            error=error,
            api_key_id=self.key_id,
            extra={"gateway": True, "stream": self.req.stream},
            **self.gw.logged(self.vector if decision is not None else None, self.text),
        )

    def info(self, answer: strategies.Answer | None) -> RouteInfo:
        d = self.decision
        info = RouteInfo(
            route_id=str(self.route_id),
            clustering=d.clustering_id,
            cluster=d.cluster,
            distance=d.distance,
            candidates=[c.model for c in d.candidates],
            strategy=self.strategy,
            novelty=finite(d.novelty),
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
        out = {
            **decision_headers(self.route_id, self.decision),
            "x-avengers-strategy": self.strategy,
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
                            usage = token_counts(event["usage"])
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
