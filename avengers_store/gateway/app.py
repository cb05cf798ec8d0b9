"""The gateway's ASGI app (Starlette): thin handlers over ``AsyncAvengersClient``.

``POST /v1/chat/completions`` with ``model: "avengers"`` routes the conversation (its last user
message, or all of it with ``route_on: "conversation"``), samples and votes with the recipe, and
answers a standard ``chat.completion`` whose ``model`` is the pool model whose answer won and whose
``usage`` sums every sample; the ``x-avengers-*`` headers (and the body's ``avengers`` object) say
what the router decided. A pool model's name passes the request straight to its endpoint.
``POST /v1/responses`` is the Responses API over the same recipe and pool (``responses``).
``POST /v1/route`` returns the decision only; ``POST /v1/feedback`` scores an answer by its route
id; ``GET /v1/models``, ``/health``, ``/ready`` and ``/metrics`` describe the gateway; ``/console`` is its read-only console
(``avengers_store.console``). Route-log
rows are written in the background, and feedback is served by one refresh per
``feedback_refresh_s``. This module holds the route table; the handlers live in ``handlers``,
``recipe`` and ``passthrough``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route

from avengers_store.async_client import AsyncAvengersClient
from avengers_store.console import access as console_access
from avengers_store.console import app as console
from avengers_store.gateway.guard import Guard, openai_errors
from avengers_store.gateway.handlers import (
    chat_completions,
    feedback,
    health,
    list_models,
    metrics,
    ready,
    responses,
    route_only,
)
from avengers_store.gateway.settings import ENV, GatewaySettings
from avengers_store.gateway.state import Gateway


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
            Route("/v1/chat/completions", openai_errors(chat_completions), methods=["POST"]),
            Route("/v1/responses", openai_errors(responses), methods=["POST"]),
            Route("/v1/route", openai_errors(route_only), methods=["POST"]),
            Route("/v1/feedback", openai_errors(feedback), methods=["POST"]),
            Route("/v1/models", openai_errors(list_models), methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", openai_errors(ready), methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *console.routes(),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    settings = gateway.settings
    app.state.console = console_access.ConsoleState(
        lambda: gateway.client.connection("read"),
        settings.auth,
        gateway_defaults={
            "strategy": settings.strategy,
            "samples": settings.samples,
            "top_n": settings.top_n,
            "threshold": settings.threshold,
            "routing": settings.routing_policy.to_dict(),
        },
    )
    app.add_middleware(Guard, gateway=gateway)
    return app


def app_from_env() -> Starlette:
    """App factory for uvicorn worker processes (settings in ``$AVENGERS_GATEWAY_SETTINGS``)."""
    import os

    return create_app(GatewaySettings.from_env(os.environ[ENV]))
