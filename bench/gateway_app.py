"""The gateway as ``bench/gateway.py`` runs it: ``avengers serve``'s app (no auth, on loopback)
plus one extra route, ``GET /bench/select1``, that answers one ``SELECT 1`` from the gateway's own
pool through the same framework: the floor of ``/v1/route``. Not part of the product.

``--fixed-embedding`` gives the gateway's client an embedder that puts every text at one vector,
on the event loop (the embedding excluded, its worker thread's hop with it; routing, sampling,
voting and logging as usual). ``--floor-upstream
URL`` serves instead a bare proxy in the same framework and server with the gateway's own HTTP
client (``redaction.async_client``): ``POST /v1/chat/completions`` forwarded as it is to
``URL/chat/completions`` and its answer returned, the floor of the gateway's chat requests. ``--workers N`` runs N
processes on the port, as ``avengers serve --workers N`` does.

Example:
    python bench/gateway_app.py --port 8099 --url postgresql://...
    python bench/gateway_app.py --port 8097 --floor-upstream http://127.0.0.1:8098/v1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avengers_store import redaction

ARGS_ENV = "AVENGERS_BENCH_GATEWAY_ARGS"


def gateway_app(args: dict) -> Starlette:
    from avengers_store.gateway.app import create_app
    from avengers_store.gateway.settings import GatewaySettings
    from avengers_store.testing import FixedEmbedder, text_vector

    settings = GatewaySettings(
        auth=False,
        port=args["port"],
        database_url=args["url"],
        max_in_flight=256,
        max_tokens=args["max_tokens"],
        upstream_retries=0,
    )
    app = create_app(settings)
    gateway = app.state.gateway
    if args["fixed_embedding"]:
        # The client's own override hook (AvengersClient(embedder=...)), set after the fact:
        # the gateway builds its client from settings, which name no embedder. Inline: the
        # embedding thread's hop is the embedding's cost, excluded with it.
        gateway.client._embedder_override = FixedEmbedder(text_vector("bench", 384), inline=True)

    async def select1(request: Request) -> Response:
        async with gateway.client.connection("read") as conn:
            cursor = await conn.execute("SELECT 1")
            (one,) = await cursor.fetchone()
        return JSONResponse({"one": one})

    app.add_route("/bench/select1", select1, methods=["GET"])
    return app


def floor_app(upstream: str) -> Starlette:
    holder: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # The gateway's HTTP client (redaction.async_client) with the limits its AsyncChatClient
        # uses for max_in_flight 256.
        async with redaction.async_client(timeout=60, max_connections=256) as http:
            holder["http"] = http
            yield

    async def forward(request: Request) -> Response:
        body = await request.body()
        answer = await holder["http"].post(
            upstream + "/chat/completions",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        return Response(answer.content, answer.status_code, media_type="application/json")

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", forward, methods=["POST"]),
            Route("/ready", ready, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """uvicorn's factory in each worker process: the app the command line asked for."""
    args = json.loads(os.environ[ARGS_ENV])
    if args["floor_upstream"]:
        return floor_app(args["floor_upstream"])
    return gateway_app(args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--url", help="the store (the gateway; not with --floor-upstream)")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--fixed-embedding", action="store_true")
    ap.add_argument("--floor-upstream", help="serve the bare proxy to this base URL instead")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    if not args.floor_upstream and not args.url:
        ap.error("--url is required for the gateway")
    os.environ[ARGS_ENV] = json.dumps(vars(args))
    uvicorn.run(
        "gateway_app:app_from_env",
        factory=True,
        app_dir=str(Path(__file__).parent),
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
