"""One gateway's state (``Gateway``): its settings, the async client, metrics, the requests in
flight, and the steps every handler shares (authorizing, reading the body, the pool, logging);
and one completion request's context (``CompletionContext``).

Route-log rows go through a ``RouteLogWriter`` with a spool: a request's rows are in the store,
or fsync'd in the spool when the store cannot take them, before its response is sent
(``rows_kept``, awaited by the ``Guard`` middleware), so nothing answered is lost to a crash.
The spool is replayed into the store once it is back, and by the next start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request

from avengers_store.answering import route_log
from avengers_store.answering.async_chat import AsyncChatClient
from avengers_store.answering.route_log_spool import RouteLogSpool, default_directory
from avengers_store.answering.route_log_writer import RouteLogWriter
from avengers_store.answering.sampling import Endpoint
from avengers_store.async_client import AsyncAvengersClient
from avengers_store.errors import AvengersError
from avengers_store.gateway import access, bodies, keys
from avengers_store.gateway.errors import GatewayError, bad_request
from avengers_store.gateway.metrics import Metrics
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.store import schema
from avengers_store.store.queries import query

log = logging.getLogger("avengers.gateway")

_POOL_TTL_S = 2.0
# How long a response waits for its route-log rows to be kept (in the store or the spool): a
# write is spooled after a second, so this is only reached if the disk itself hangs.
LOG_HOLD_S = 10.0

# The route-log rows of the request being answered: each batch's future, or the task queueing
# it (set by the Guard middleware).
pending_logs: ContextVar[list[asyncio.Future[Any]] | None] = ContextVar(
    "avengers_pending_logs", default=None
)


class Gateway:
    """One gateway's state: settings, the async client, metrics, requests in flight."""

    def __init__(self, settings: GatewaySettings, client: AsyncAvengersClient | None = None):
        self.settings = settings
        self.metrics = Metrics()
        self.log_writer = None if client is not None else self._writer(settings)
        self.client = client or AsyncAvengersClient(
            settings.database_url,
            chat=AsyncChatClient(
                timeout=settings.upstream_timeout_s,
                max_retries=settings.upstream_retries,
                max_connections=max(settings.max_in_flight, 16),
            ),
            pool_size=settings.pool_size,
            max_concurrency=settings.max_in_flight,
            # The store's served policy, with the server's own fields over it; alpha = 1 where
            # neither sets a trade-off: the plain ranking, with each answer's expected cost.
            policy_changes=settings.policy_changes,
            policy_fill={"tradeoff": 1.0},
            threshold=settings.threshold,
            max_tokens=settings.max_tokens,
            embed_threads=settings.embed_threads,
            background_log=True,
            on_stage=self.metrics.stage,
            on_log=self.metrics.route_log,
            log_vectors=settings.log_vectors,
            log_texts=settings.log_texts,
            log_writer=self.log_writer,
        )
        self._own_chat = client is None
        self.in_flight = 0
        self._pool: tuple[float, dict[str, Endpoint]] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._head = schema.head_revision()
        self._sql_hash = schema.sql_hash()

    def _writer(self, settings: GatewaySettings) -> RouteLogWriter:
        directory = Path(settings.spool_dir) if settings.spool_dir else default_directory()
        spool = RouteLogSpool(directory, max_bytes=settings.spool_max_bytes)
        writer = RouteLogWriter(self._write_log, spool=spool)
        metrics = self.metrics

        def state(event: str, rows: int) -> None:
            metrics.spool(event, rows, spool.bytes, writer.spool_full)

        writer.on_written = lambda n: (metrics.route_log("written", n), state("written", 0))
        writer.on_dropped = lambda n: metrics.route_log("dropped", n)
        writer.on_spooled = lambda n: state("spooled", n)
        writer.on_replayed = lambda n: state("replayed", n)
        return writer

    async def _write_log(self, rows: Sequence[dict[str, Any]]) -> None:
        await self.client.execute(route_log.statement(rows), "write")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.log_writer is not None:
            self.log_writer.start()  # replays what an earlier process left in the spool
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

    async def authorize(self, request: Request, *, admit: bool = True) -> keys.Admission | None:
        """The request's live API key and its policy (None without auth); 401 without one.
        With ``admit`` (a request that calls models or routes), a key past its spend limit gets
        429 ``insufficient_quota`` and one past its requests per minute 429
        ``rate_limit_exceeded``, with Retry-After, before anything else is done."""
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
            grant = await keys.admit(conn, key.strip(), calls_models=admit)
        if grant is None:
            raise GatewayError(
                401, "the API key is not valid or was revoked", code="invalid_api_key"
            )
        access.note(key=grant.name)
        if grant.console_only:
            raise GatewayError(
                403,
                f"the key {grant.name!r} may read the console (/console) only, not the API",
                type="permission_error",
                code="console_only_key",
            )
        if grant.refused is not None:
            self.metrics.refused.labels(grant.refused).inc()
            raise refusal(grant)
        return grant

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

    def log_rows(self, rows: Sequence[dict[str, Any]], shadow: Sequence[Any] = ()) -> None:
        """Hand rows to the background writer; the response waits for them (``rows_kept``)
        only at the moment it is sent. ``shadow``: the requests' shadow items, computed in
        the background, never waited for."""
        kept: asyncio.Future[Any] | None = self.client.log_nowait(rows, shadow)
        if kept is None:  # the writer's queue is full (or closed): a task waits for room
            kept = asyncio.get_running_loop().create_task(self.client.log(rows, shadow=shadow))
            kept.add_done_callback(_log_failure)
        pending = pending_logs.get()
        if pending is not None:
            pending.append(kept)

    async def rows_kept(self) -> None:
        """Wait until the route-log rows of the request being answered are in the store or the
        spool (at most ``LOG_HOLD_S``)."""
        pending = pending_logs.get()
        if not pending:
            return
        tasks = list(pending)
        pending.clear()
        began = time.perf_counter()
        late: Any = ()
        if not all(t.done() for t in tasks):  # no timer to arm for rows kept already
            _, late = await asyncio.wait(tasks, timeout=LOG_HOLD_S)
        self.metrics.stage("log", time.perf_counter() - began)
        if late:
            log.error("route_log: %d row batch(es) not kept within %g s", len(late), LOG_HOLD_S)

    @property
    def spool_full(self) -> bool:
        return self.log_writer is not None and self.log_writer.spool_full

    async def readiness(self) -> list[str]:
        problems: list[str] = []
        if self.spool_full:
            problems.append("route log: the spool is full and the store does not take rows")
        try:
            async with self.client.connection("read") as conn:
                cursor = await conn.execute(
                    query("gateway", "store_revision"),
                    (schema.SQL_HASH_KEY,),
                )
                revision, applied, active, callable_models = await cursor.fetchone()
        except AvengersError as exc:
            return [*problems, f"store: {exc}"]
        except Exception as exc:  # a database error of any kind
            return [*problems, f"store: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"]
        if revision != self._head or applied != self._sql_hash:
            problems.append("schema: not current (run `avengers db upgrade`)")
        if active is None:
            problems.append("clustering: none active (run `avengers recluster`)")
        if not callable_models:
            problems.append("models: no active model has an endpoint")
        return problems


@dataclass(frozen=True)
class CompletionContext:
    """One completion request as it reached the gateway, whichever answers it (the recipe or a
    passthrough): the gateway, the HTTP request, its key's grant (None when keys are off), when
    it arrived (a ``perf_counter`` reading) and the wire it is answered on
    (``streaming.ChatWire`` or ``responses.ResponsesWire``)."""

    gw: Gateway
    request: Request
    grant: keys.Admission | None
    started: float
    wire: Any

    @property
    def api_key_id(self) -> int | None:
        return self.grant.key_id if self.grant is not None else None

    def elapsed_ms(self) -> float:
        """Milliseconds since the request arrived."""
        return (time.perf_counter() - self.started) * 1000.0

    def log_extra(self, stream: bool) -> dict[str, Any]:
        """The route-log row's ``extra`` every completion carries (the API named when it is
        not chat completions)."""
        extra: dict[str, Any] = {"gateway": True, "stream": stream}
        if self.wire.name != "chat":
            extra["api"] = self.wire.name
        return extra


def refusal(grant: keys.Admission) -> GatewayError:
    """The 429 for a key its policy refuses now: past its spend limit (``insufficient_quota``,
    which retrying before the period ends cannot help: ``x-should-retry: false`` tells OpenAI
    SDKs not to) or its requests per minute (``rate_limit_exceeded``)."""
    retry = {"Retry-After": str(max(1, grant.retry_after or 1))}
    if grant.refused == "rate":
        return GatewayError(
            429,
            f"key {grant.name!r} made its {grant.quota:g} requests of this minute: retry in "
            f"{retry['Retry-After']} s",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers=retry,
        )
    period = "today (UTC)" if grant.refused == "day" else "this month (UTC)"
    return GatewayError(
        429,
        f"key {grant.name!r} has spent {grant.spent:.6g} of its {grant.quota:g} limit for "
        f"{period}: no model is called until the period ends (`avengers keys set` raises it)",
        type="insufficient_quota",
        code="insufficient_quota",
        headers={**retry, "x-should-retry": "false"},
    )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("route_log: rows not queued: %s", task.exception())
