"""What wraps every handler: ``openai_errors`` answers errors the OpenAI way, and ``Guard`` (ASGI
middleware) holds the in-flight limit, keeps each response until its route-log rows are kept
(in the store or the spool), counts requests and their latency, and writes each request's
access-log line (``access``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avengers_store.errors import AvengersError
from avengers_store.gateway import access
from avengers_store.gateway.errors import GatewayError, from_library
from avengers_store.gateway.state import Gateway, pending_logs
from avengers_store.store import availability

log = logging.getLogger("avengers.gateway")

LIMITED_PATHS = frozenset({"/v1/chat/completions", "/v1/responses", "/v1/route", "/v1/feedback"})
KNOWN_PATHS = LIMITED_PATHS | {"/v1/models", "/health", "/ready", "/metrics"}


def openai_errors(handler: Any) -> Any:
    """Every handler answers errors the OpenAI way."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            error = exc
        except AvengersError as exc:
            error = from_library(exc)
        except Exception as exc:
            if availability.is_lost(exc, None):
                # A driver or pool error that means the store went away mid-call: a 503 to
                # retry, like StoreUnavailable, never a 500.
                log.warning("the store was lost answering %s: %s", request.url.path, exc)
                url = request.app.state.gateway.settings.database_url
                error = from_library(availability.unavailable(url, exc))
            else:
                log.exception("unexpected error answering %s", request.url.path)
                error = GatewayError(
                    500, "internal error (see the gateway's log)", type="server_error"
                )
        access.note(error=error.code or error.type)
        return error.response()

    return wrapped


class Guard:
    """Pure ASGI middleware: refuses work past the in-flight limit with 429 and Retry-After
    (back-pressure instead of collapse), and while the route-log spool is full with 503; sends
    no part of a response before the request's route-log rows are kept; counts requests and
    their latency."""

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
        record = access.AccessRecord(scope.get("method", ""), path)
        access.current.set(record)
        refusal = _refusal(gw) if limited else None
        if refusal is not None:
            gw.metrics.request(label, refusal.status)
            record.status, record.error = refusal.status, refusal.code
            access.log.info(record.line())
            await refusal.response()(scope, receive, send)
            return
        status = 500
        pending_logs.set([])

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            # Nothing of the answer leaves before its route-log rows are kept.
            await gw.rows_kept()
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
            took = time.perf_counter() - started
            gw.metrics.request(label, status, took)
            # Probes would drown the requests; a line nobody logs is not built.
            if label not in ("/health", "/metrics") and access.log.isEnabledFor(logging.INFO):
                record.status, record.latency_ms = status, took * 1000.0
                access.log.info(record.line())


def _refusal(gw: Gateway) -> GatewayError | None:
    """Why a limited request is refused before it starts (None: it is not): the in-flight
    limit is reached (429), or the route-log spool is full while the store is unreachable (503,
    since an answer could not be logged)."""
    if gw.in_flight >= gw.settings.max_in_flight:
        gw.metrics.rejected.inc()
        return GatewayError(
            429,
            f"{gw.settings.max_in_flight} requests are in flight, the gateway's limit: "
            "retry after a second",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )
    if gw.spool_full:
        return GatewayError(
            503,
            "the store is unreachable and the route-log spool is full, so an answer could "
            "not be logged: retry once the store is back",
            type="service_unavailable",
            code="not_ready",
            headers={"Retry-After": "5"},
        )
    return None
