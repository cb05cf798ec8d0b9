"""The gateway as ``bench/gateway.py`` runs it: ``avengers serve``'s app (no auth, on loopback)
plus one extra route, ``GET /bench/select1``, that answers one ``SELECT 1`` from the gateway's own
pool through the same framework: the floor of ``/v1/route``. Not part of the product.

Example:
    python bench/gateway_app.py --port 8099 --url postgresql://...
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from avengers_store.gateway.app import create_app
from avengers_store.gateway.settings import GatewaySettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--max-tokens", type=int, default=4)
    args = ap.parse_args()
    settings = GatewaySettings(
        auth=False,
        port=args.port,
        database_url=args.url,
        max_in_flight=256,
        max_tokens=args.max_tokens,
        upstream_retries=0,
    )
    app = create_app(settings)
    gateway = app.state.gateway

    async def select1(request: Request) -> Response:
        async with gateway.client.connection("read") as conn:
            cursor = await conn.execute("SELECT 1")
            (one,) = await cursor.fetchone()
        return JSONResponse({"one": one})

    app.add_route("/bench/select1", select1, methods=["GET"])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
