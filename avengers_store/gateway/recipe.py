"""One ``model: "avengers"`` completion (``Recipe``): route, sample, vote, answer (plain or
streamed, on the wire it was asked on: chat completions or the Responses API) and log."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from avengers_store import client_core as core
from avengers_store.answering import strategies
from avengers_store.answering.extraction import AnswerFormat
from avengers_store.answering.sampling import SampleBatch, StreamedCompletion
from avengers_store.errors import AvengersError, EndpointError
from avengers_store.gateway import access, answers, sessions, streaming
from avengers_store.gateway.errors import bad_request, from_library
from avengers_store.gateway.headers import decision_headers
from avengers_store.gateway.inputs import (
    policy_changes,
    request_deadline,
    routed_text,
    samples_for,
)
from avengers_store.gateway.protocol import ChatCompletionRequest, decision_fields, route_info
from avengers_store.gateway.state import CompletionContext
from avengers_store.routing import RouteDecision
from avengers_store.shadow import work as shadow_work

RECIPE_MODEL = "avengers"


class Recipe:
    """One ``model: "avengers"`` request: route, sample, vote, answer, log. ``body`` is the
    request as it came (its fields are passed to the models as given); ``wire`` encodes the
    answer (``streaming.ChatWire`` or ``responses.ResponsesWire``)."""

    def __init__(self, ctx: CompletionContext, req: ChatCompletionRequest, body: dict[str, Any]):
        self.ctx, self.req = ctx, req
        self.gw, self.wire = gw, wire = ctx.gw, ctx.wire
        grant, s = ctx.grant, gw.settings
        for legacy in ("functions", "function_call"):
            if getattr(req, legacy) is not None:
                raise bad_request(
                    f"{legacy}: the legacy function-calling fields are not routed; send tools "
                    "(and tool_choice) instead",
                    param=legacy,
                )
        self.extra = req.passed_on(body)
        self.messages = body["messages"]  # sent as the caller gave them (validated in ``req``)
        AnswerFormat.from_request(self.extra)  # a bad JSON Schema is refused before routing
        self.text = routed_text(req.messages, req.route_on or s.route_on)
        self.strategy = req.strategy or s.strategy
        self.samples = samples_for(req, s, grant)
        self.changes = policy_changes(req, grant)
        self.top_n = req.top_n or s.top_n or core.DEFAULT_TOP_N[self.strategy]
        self.route_id = uuid.uuid4()
        wire.bind(self.route_id)
        self.vector: Any = None  # the embedding the request was routed with
        self.session = ctx.request.headers.get("x-session-id") or req.user
        self.failed: list[str] = []
        self.deadline = request_deadline(req, s, ctx.started)
        access.note(route_id=str(self.route_id), stream=req.stream)

    def plan(self) -> strategies.Plan:
        req, s = self.req, self.gw.settings
        question = core.Question(
            self.text,
            messages=self.messages,
            extra=self.extra,
            temperature=req.temperature,
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
                **self.changes,
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
        body = answers.completion(
            answer, self.completion_id, self.model_of(answer), self.info(answer)
        )
        return JSONResponse(self.wire.body(body), headers=self.headers(answer=answer))

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.route_id.hex}"

    def model_of(self, answer: strategies.Answer) -> str:
        return answer.model or answer.models[0]

    async def finish(self, answer: strategies.Answer, error: AvengersError | None = None) -> None:
        gw = self.gw
        gw.metrics.answered(answer)
        gw.log_rows(
            [self.row(self.decision, answer, error=str(error) if error else None)],
            self.shadow_items(answer),
        )
        access.note(
            model=self.model_of(answer), tokens_in=answer.tokens_in, tokens_out=answer.tokens_out
        )
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

    def shadow_items(self, answer: strategies.Answer | None) -> list[Any]:
        """The request's item for the shadow policy, when one is shadowed (none otherwise)."""
        roles = self.gw.client.roles
        if roles.shadow is None:
            return []
        found = shadow_work.item(
            self.route_id, self.vector, self.decision, text=self.text, answer=answer,
            shadow=roles.shadow_name,
        )  # fmt: skip
        return [found] if found is not None else []

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
        ``decision`` is None, so no embedding is kept; an answer with an error is a stream its
        upstream broke off after the first token)."""
        extra = self.ctx.log_extra(self.req.stream)
        if self.req.metadata:
            extra["request_metadata"] = dict(self.req.metadata)
        return core.log_row(
            self.text,
            decision,
            answer,
            route_id=self.route_id,
            strategy=self.strategy,
            latency_ms=self.ctx.elapsed_ms(),
            error=error,
            api_key_id=self.ctx.api_key_id,
            extra=extra,
            **self.gw.logged(self.vector if decision is not None else None, self.text),
        )

    def info(self, answer: strategies.Answer | None) -> dict[str, Any]:
        """The answer's ``avengers`` object: ``RouteInfo`` as it dumps (``route_info``)."""
        d = self.decision
        fields = {
            **decision_fields(self.route_id, d),
            "candidates": [c.model for c in d.candidates],
            "strategy": self.strategy,
            "expected_cost": d.expected_cost,
        }
        if answer is not None:
            fields["models"] = list(answer.models)
            fields["vote_share"] = answer.share
            fields["votes"] = dict(answer.votes)
            fields["fallbacks"] = [f.model for f in answer.fallbacks]
            fields["samples"] = len(answer.samples)
        return route_info(fields)

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

    def stream_body(self, call: strategies.SampleCall) -> dict[str, Any]:
        """A sample's request, streamed: usage is always asked for (the wire drops it unless
        the caller asked), since spend is counted from it."""
        body: dict[str, Any] = {"messages": call.messages, "max_tokens": call.max_tokens}
        if call.temperature is not None:
            body["temperature"] = call.temperature
        return {**body, **call.extra, "stream_options": {"include_usage": True}}

    async def relay(self, plan: strategies.Plan) -> Response:
        """One sample: open the candidates' streams in turn until one sends its first token
        (each within its share of the deadline), then answer with it and relay the rest."""
        gw = self.gw
        result: SampleBatch | EndpointError | None = None
        while True:
            try:
                call = plan.send(result)  # type: ignore[arg-type]
            except AvengersError as exc:
                self.log_failure(exc, self.decision)
                raise
            asked = time.perf_counter()
            try:
                opened = await streaming.open_stream(
                    gw.client.chat,
                    call.endpoint,
                    self.stream_body(call),
                    deadline=self.deadline,
                    first_token_by=call.deadline,
                )
                break
            except EndpointError as exc:
                gw.metrics.stage("upstream", time.perf_counter() - asked)
                self.failed.append(call.endpoint.model)
                result = exc
        return StreamingResponse(
            self.wire.events(self.relayed(plan, opened)),
            media_type=streaming.MEDIA_TYPE,
            headers={**streaming.HEADERS, **self.headers(models=[call.endpoint.model])},
        )

    async def relayed(
        self, plan: strategies.Plan, opened: streaming.OpenStream
    ) -> AsyncIterator[dict[str, Any] | None]:
        endpoint = opened.endpoint
        streamed = StreamedCompletion()
        error: EndpointError | None = None
        try:
            async with opened.stack:
                async for chunk in opened.events:
                    streamed.add(chunk)
                    chunk["id"], chunk["model"] = self.completion_id, endpoint.model
                    yield chunk
        except EndpointError as exc:
            error = exc
        except BaseException:
            # The caller went away mid-stream: the route id it was given still gets its row.
            answer = self.settle(plan, opened, streamed, failed=True)
            if answer is not None:
                self.gw.metrics.answered(answer)
                self.gw.log_rows([self.row(self.decision, answer, error=streaming.CLOSED)])
            raise
        answer = self.settle(plan, opened, streamed, failed=error is not None)
        if answer is not None:
            await self.finish(answer, error)
        if error is not None:
            for chunk in streaming.broken(self.completion_id, endpoint.model, error):
                yield chunk

    def settle(
        self,
        plan: strategies.Plan,
        opened: streaming.OpenStream,
        streamed: StreamedCompletion,
        *,
        failed: bool,
    ) -> strategies.Answer | None:
        """The relayed sample (cut short when ``failed``) handed to the plan: its Answer."""
        took = time.perf_counter() - opened.asked
        self.gw.metrics.stage("upstream", took)
        completion = streamed.completion(streaming.ERROR_FINISH if failed else None)
        batch = SampleBatch(
            opened.endpoint, (completion,), streamed.tokens_in, streamed.tokens_out,
            took * 1000.0, 1,
        )  # fmt: skip
        try:
            plan.send(batch)
        except StopIteration as stop:
            return stop.value
        return None

    def voted_stream(self, plan: strategies.Plan) -> Response:
        """Several samples: keep-alive comments while they are drawn and voted, then the
        winning completion as chunks."""
        gw = self.gw

        async def chunks() -> AsyncIterator[dict[str, Any] | None]:
            task = asyncio.create_task(gw.client.run_plan(plan))
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=gw.settings.keepalive_s)
                    if done:
                        break
                    yield None
                try:
                    answer = task.result()
                except AvengersError as exc:
                    self.log_failure(exc, self.decision)
                    yield from_library(exc).body()
                    return
            finally:
                if not task.done():
                    task.cancel()
            await self.finish(answer)
            info = self.info(answer)
            for chunk in answers.chunks(answer, self.completion_id, self.model_of(answer), info):
                yield chunk

        return StreamingResponse(
            self.wire.events(chunks()),
            media_type=streaming.MEDIA_TYPE,
            headers={**streaming.HEADERS, **self.headers()},
        )
