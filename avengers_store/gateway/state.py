"""One gateway's state (``Gateway``): its settings, the async client, metrics, the requests in
flight, and the steps every handler shares (authorizing, reading the body, the pool, logging)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request

from avengers_store.answering.async_chat import AsyncChatClient
from avengers_store.answering.sampling import Endpoint
from avengers_store.async_client import AsyncAvengersClient
from avengers_store.errors import AvengersError
from avengers_store.gateway import bodies, keys
from avengers_store.gateway.errors import GatewayError, bad_request
from avengers_store.gateway.metrics import Metrics
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.store import schema

log = logging.getLogger("avengers.gateway")

_POOL_TTL_S = 2.0


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
            on_log=self.metrics.route_log,
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
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise bad_request(f"the body is larger than {limit} bytes", code="body_too_large")
        return bodies.parse(bytes(body))

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
