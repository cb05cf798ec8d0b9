"""``AsyncAvengersClient``: ``AvengersClient`` for asyncio, with the same methods and parameters
(``route``, ``route_many``, ``ask``, ``ask_many``, ``feedback``, ..., each a coroutine): both run
the flows of ``client_core.ClientCore``; this module holds only the asyncio I/O (``_drive``).

The constructor connects to nothing; the first call opens a ``psycopg_pool.AsyncConnectionPool``
(pgvector registered on each connection) after checking the schema revision once. Model calls go
through one ``AsyncChatClient``. Texts are embedded off the event loop, one worker thread with one
torch thread by default, and texts of concurrent calls are embedded together
(``calibration.embedding_batches``).

With ``background_log=True`` route-log rows are written by a background task (a bounded queue)
instead of before ``ask`` returns; ``aclose()`` writes every queued row before closing the pools.
``on_stage(stage, seconds)`` is told how long each stage took: ``embed``, ``route``, ``upstream``
(one model call) and ``vote`` (the plan's own time: extraction and voting).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from avengers_store import client_core as core
from avengers_store.answering import route_log, strategies
from avengers_store.answering.async_chat import AsyncChatClient
from avengers_store.answering.prompts import PromptSet
from avengers_store.answering.route_log_writer import RouteLogWriter
from avengers_store.answering.sampling import DEFAULT_MAX_TOKENS
from avengers_store.calibration.embedders import Embedder
from avengers_store.calibration.embedding_batches import EmbeddingBatcher
from avengers_store.client_pools import (
    GENERIC_PLANS,
    SPARE_WAIT_S,
    PooledClient,
    needs_check,
    spare_room,
)
from avengers_store.errors import (
    AvengersError,
    ConfigurationError,
    ConnectionFailed,
    EndpointError,
    StoreUnavailable,
)
from avengers_store.flows import Done, advance
from avengers_store.routing import RoutingMethod
from avengers_store.routing.adapters import aensure_vector_types
from avengers_store.routing.policy import Policy
from avengers_store.store import availability, connections, schema, snapshots
from avengers_store.store.statement import arun

log = logging.getLogger(__name__)

StageObserver = Callable[[str, float], None]
# Longest ``feedback`` waits for this client's queued route-log rows (its route's among them).
FEEDBACK_FLUSH_S = 5.0
# Seconds the shadow task naps while its batch lingers (``ShadowBatches.due``).
SHADOW_NAP_S = 0.05


class AsyncAvengersClient(PooledClient):
    """Route and answer queries with the store at ``url`` from asyncio.

    Options as ``AvengersClient`` (``read_url``, ``policy``, ``method``, ``ood_policy``,
    ``embedder``, ``prompts``, ``threshold``, ``max_tokens``, ``pool_size``,
    ``max_concurrency``, ``timeout``, ``prepared_statements``, ``log_vectors``, ``log_texts``,
    ``seed``), and: ``chat`` an AsyncChatClient (default: one made and closed by this client);
    ``embed_threads`` torch threads for a local embedder (None: leave torch's setting);
    ``max_embed_batch`` texts per embedding batch; ``background_log`` and ``log_queue`` (rows
    waiting at most); ``on_stage`` a stage-time observer; ``on_log(event, rows)`` is told of
    background route-log rows ``queued``, ``written`` and ``dropped``; ``log_writer`` a
    RouteLogWriter of the caller's (e.g. with a spool) for the background rows.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        read_url: str | None = None,
        policy: Policy | None = None,
        method: str | RoutingMethod | None = None,
        ood_policy: str | None = None,
        chat: AsyncChatClient | None = None,
        embedder: Embedder | None = None,
        prompts: PromptSet | None = None,
        threshold: float = strategies.DEFAULT_THRESHOLD,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        pool_size: int = 8,
        max_concurrency: int = 16,
        timeout: float | None = core.DEFAULT_TIMEOUT,
        prepared_statements: bool = True,
        log_vectors: bool = False,
        log_texts: bool = False,
        seed: int | None = None,
        embed_threads: int | None = 1,
        max_embed_batch: int = 64,
        background_log: bool = False,
        log_queue: int = 10_000,
        on_stage: StageObserver | None = None,
        on_log: Callable[[str, int], None] | None = None,
        log_writer: RouteLogWriter | None = None,
        policy_changes: Mapping[str, Any] | None = None,
        policy_fill: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            url, read_url=read_url, pool_size=pool_size, chat=chat,
            prepared_statements=prepared_statements, embedder=embedder, prompts=prompts,
            threshold=threshold, max_tokens=max_tokens, max_concurrency=max_concurrency,
            timeout=timeout, policy=policy, method=method, ood_policy=ood_policy,
            log_vectors=log_vectors, log_texts=log_texts, seed=seed,
            policy_changes=policy_changes, policy_fill=policy_fill,
        )  # fmt: skip
        self.on_stage = on_stage
        self.on_log = on_log
        self.background_log = background_log
        self._batcher = EmbeddingBatcher(threads=embed_threads, max_batch=max_embed_batch)
        self._closing: set[asyncio.Task[None]] = set()
        self._pool_lock: asyncio.Lock | None = None
        self._shutting_down = False
        self._log_queue = log_queue
        self._writer: RouteLogWriter | None = log_writer
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    # -- connections -----------------------------------------------------------------------

    async def _open_pool(self, role: str) -> AsyncConnectionPool:
        pool = self._pools.get(role)
        if pool is not None:
            return pool
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:
            pool = self._known_pool(role)
            if pool is None:
                serving = self._pool_role(role)
                target = self.read_url if serving == "read" else await self._primary_url()
                pool = self._keep(role, await self._new_pool(target, serving))
            return pool

    async def _primary_url(self) -> str:
        try:
            return await asyncio.to_thread(connections.resolve_url, self.url)
        except ConnectionFailed as exc:  # the embedded server could not be started
            raise availability.unavailable(self.url, exc) from exc

    async def _new_pool(self, target: str, role: str = "write") -> AsyncConnectionPool:
        # One probe connection first, as the sync client does (clear errors, the schema check),
        # in a thread: it is the sync code path.
        def probe() -> None:
            with connections.connect(target) as conn:
                schema.check_revision(conn)

        try:
            await asyncio.to_thread(probe)
        except ConnectionFailed as exc:
            raise self._unavailable(role, exc) from exc

        async def configure(c: psycopg.AsyncConnection) -> None:
            await aensure_vector_types(c)
            if self.prepared_statements:
                await c.execute(GENERIC_PLANS)

        pool = AsyncConnectionPool(
            target, configure=configure, **self._pool_options(target, "avengers-async")
        )
        await pool.open(wait=True, timeout=30)
        return pool

    def _forget(self, pool: AsyncConnectionPool) -> None:
        """Stop using ``pool`` (its server was lost), as ``AvengersClient._forget`` does."""
        self._drop(pool)
        task = asyncio.get_running_loop().create_task(pool.close(timeout=5))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @asynccontextmanager
    async def connection(
        self, role: str = "read", conn: psycopg.AsyncConnection | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection (``read``: the replica if any and up, else the primary;
        ``write``: the primary), or ``conn`` when given. Losing the server raises
        StoreUnavailable; the next call reconnects."""
        if conn is not None:
            yield conn
            return
        async with self._pooled(role) as (pooled, _):
            yield pooled

    @asynccontextmanager
    async def _pooled(
        self, role: str
    ) -> AsyncIterator[tuple[psycopg.AsyncConnection, AsyncConnectionPool]]:
        """A live pooled connection for ``role`` (as ``connection``) and its pool."""
        role = self._routed_role(role)
        try:
            pooled, pool = await self._checkout(role)
        except StoreUnavailable:
            if not self._falls_back(role):
                raise
            role = "write"
            pooled, pool = await self._checkout(role)
        try:
            with self._watching(pool, role, pooled):
                yield pooled, pool
        finally:
            await pool.putconn(pooled)

    async def _run_parts(self, step: core.RunParts) -> list[Any]:
        """``AvengersClient._run_parts``: the connections' parts run concurrently as tasks."""
        async with self._pooled(step.role) as (first, pool), AsyncExitStack() as held:
            conns = [first]
            for _ in range(spare_room(pool, len(step.statements) - 1)):
                try:
                    spare = await pool.getconn(timeout=SPARE_WAIT_S)
                except (PoolTimeout, PoolClosed):
                    break
                held.push_async_callback(pool.putconn, spare)
                if needs_check(spare):
                    try:
                        await AsyncConnectionPool.check_connection(spare)
                    except psycopg.Error:
                        continue  # the pool replaces it; this batch does without
                conns.append(spare)
            for c in conns:
                await aensure_vector_types(c)
            try:
                await first.execute(snapshots.BEGIN)
                if conns[1:]:
                    snapshot = (await (await first.execute(snapshots.EXPORT)).fetchone())[0]
                for c in conns[1:]:
                    await c.execute(snapshots.BEGIN)
                    await c.execute(snapshots.adopt(snapshot))
                shares = snapshots.shares(len(step.statements), len(conns))

                async def run_share(c: psycopg.AsyncConnection, share: list[int]) -> list[Any]:
                    read = step.read or (lambda _, rows: rows)
                    return [read(i, await arun(c, step.statements[i])) for i in share]

                done = await asyncio.gather(*map(run_share, conns, shares))
            finally:
                for c in conns:
                    with suppress(psycopg.Error):
                        await c.execute(snapshots.END)
            return snapshots.in_order(shares, done, len(step.statements))

    async def _checkout(self, role: str) -> tuple[psycopg.AsyncConnection, AsyncConnectionPool]:
        """A pooled connection checked alive and its pool (see ``AvengersClient._checkout``)."""
        for _ in range(2):
            pool = await self._open_pool(role)
            try:
                pooled = await pool.getconn()
            except PoolClosed:
                continue  # another task found the server lost and replaced the pool
            except PoolTimeout as exc:
                raise self._lost(pool, role, exc) from exc
            try:
                if needs_check(pooled):
                    await AsyncConnectionPool.check_connection(pooled)
            except psycopg.Error:
                await pool.putconn(pooled)
                self._forget(pool)
                continue
            return pooled, pool
        raise self._unavailable(role, ConnectionFailed("the connection was lost"))

    @property
    def chat(self) -> AsyncChatClient:
        if self._chat is None:
            self._chat = AsyncChatClient(max_connections=max(self.max_concurrency, 16))
        return self._chat

    async def aclose(self) -> None:
        """Write queued route-log rows, then close the pools, the chat client this client made
        and the embedding worker. Idempotent."""
        if self._shutting_down:
            return
        self._shutting_down = True
        await self.flush_shadow(10.0)
        # Closed only once the writer is done: rows waiting out an outage need a pool to go to.
        if self._writer is not None:
            await self._writer.aclose()
        self._closed = True
        pools, self._pools = {id(p): p for p in self._pools.values()}, {}
        for pool in pools.values():
            await pool.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._own_chat and self._chat is not None:
            await self._chat.aclose()
        self._chat = None
        await asyncio.to_thread(self._batcher.close)

    async def flush_shadow(self, timeout: float | None = 10.0) -> bool:
        """Wait until the requests handed to shadowing so far are shadowed (their decisions
        stored, their samples asked); False when ``timeout`` seconds passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        self._shadows.hurry(True)
        try:
            while not self._shadows.idle():
                if end is not None and time.monotonic() >= end:
                    return False
                await asyncio.sleep(0.01)
            return True
        finally:
            self._shadows.hurry(False)

    def _shadow(self, items: tuple[Any, ...]) -> None:
        """Hand shadow items to the background task (started when none runs): off the
        response's path, after its route-log rows were handed to the writer."""
        if items and self._shadows.add(items):
            task = asyncio.get_running_loop().create_task(
                self._shadow_worker(), name="avengers-shadow"
            )
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_worker(self) -> None:
        while True:
            # Short naps rather than the whole linger: a flush makes the batch due at once.
            if (wait := self._shadows.due()) > 0:
                await asyncio.sleep(min(wait, SHADOW_NAP_S))
                continue
            if not (batch := self._shadows.take()):
                return
            try:
                await self._drive(self.shadow_flow(batch))
            except Exception:  # an observation failing never reaches a caller
                log.warning("shadow: a batch of %d request(s) failed", len(batch), exc_info=True)
            self._shadows.finished(len(batch))

    async def __aenter__(self) -> AsyncAvengersClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the driver: the steps of a flow, done -----------------------------------------------

    async def _drive(self, flow: core.Flow[Any]) -> Any:
        """Run a flow (``client_core``) to its result, doing each step it yields."""
        value: Any = None
        error: BaseException | None = None
        while not isinstance(step := advance(flow, value, error), Done):
            value, error = None, None
            try:
                value = await self._step(step)
            except AvengersError as exc:
                error = exc
        return step.value

    async def _step(self, step: core.Step) -> Any:
        if isinstance(step, core.Run):
            started = time.perf_counter()
            if step.conn is not None:
                found = await self._run(step.conn, step)
            else:  # ``connection``'s pooled branch, one context manager fewer per statement
                async with self._pooled(step.role) as (c, _):
                    found = await self._run(c, step)
            if step.stage is not None:
                self._observe(step.stage, time.perf_counter() - started)
            return found
        if isinstance(step, core.RunParts):
            started = time.perf_counter()
            found = await self._run_parts(step)
            if step.stage is not None:
                self._observe(step.stage, time.perf_counter() - started)
            return found
        if isinstance(step, core.Embed):
            started = time.perf_counter()
            found = await self._batcher.embed(step.embedder, list(step.texts))
            self._observe("embed", time.perf_counter() - started)
            return found
        if isinstance(step, core.Sample):
            started = time.perf_counter()
            try:
                return await step.call.ask(self.chat)
            except EndpointError as exc:
                return exc
            finally:
                self._observe("upstream", time.perf_counter() - started)
        if isinstance(step, core.Gather):
            gate = asyncio.Semaphore(max(1, step.limit))

            async def one(flow: core.Flow[Any]) -> Any:
                async with gate:
                    return await self._drive(flow)

            return list(await asyncio.gather(*(one(f) for f in step.flows)))
        if isinstance(step, core.Log):
            await self._log(step.rows, step.conn)
            self._shadow(step.shadow)
        elif isinstance(step, core.LoadModel):
            await asyncio.to_thread(core.load_embedder, step.embedder)
        elif isinstance(step, core.Flush):
            if self._writer is not None:
                # Bounded: while the store is down the statement after fails anyway.
                await self._writer.flush(FEEDBACK_FLUSH_S)
        elif isinstance(step, core.Note):
            self._observe(step.stage, step.seconds)
        return None

    @staticmethod
    async def _run(c: psycopg.AsyncConnection, step: core.Run) -> Any:
        if any(s.binary for s in step.statements):
            await aensure_vector_types(c)
        if len(step.statements) == 1:
            return await arun(c, step.statements[0])
        async with c.transaction():
            found = [await arun(c, s) for s in step.statements]
        return found[0]

    def _observe(self, stage: str, seconds: float) -> None:
        if self.on_stage is not None:
            self.on_stage(stage, seconds)

    async def _log(self, rows: Sequence[dict[str, Any]], conn: Any) -> None:
        """Route-log rows written now, or queued for the background writer when the client was
        made with ``background_log`` (and no ``conn`` is given)."""
        if not rows:
            return
        if self.background_log and conn is None:
            if self._writer is None:
                self._writer = RouteLogWriter(self._write_rows, max_queue=self._log_queue)
                if self.on_log is not None:
                    observe = self.on_log
                    self._writer.on_written = lambda n: observe("written", n)
                    self._writer.on_dropped = lambda n: observe("dropped", n)
            if self.on_log is not None:
                self.on_log("queued", len(rows))
            try:
                await self._writer.submit(rows)
            except ConfigurationError:  # a closed writer takes none of them
                if self.on_log is not None:
                    self.on_log("dropped", len(rows))
                raise
            return
        await self._write_rows(rows, conn)

    def log_nowait(
        self, rows: Sequence[dict[str, Any]], shadow: Sequence[Any] = ()
    ) -> asyncio.Future[bool] | None:
        """``log(rows, shadow=shadow)`` for a client with ``background_log`` and a writer whose
        queue has room: the rows queued at once, without a task to drive ``log``'s flow. The
        writer's future (done when they are kept, ``RouteLogWriter.submit_nowait``); None when
        they could not be queued so (``log`` then waits for room, or raises)."""
        if not self.background_log or self._writer is None or not rows:
            return None
        kept = self._writer.submit_nowait(rows)
        if kept is None:
            return None
        if self.on_log is not None:
            self.on_log("queued", len(rows))
        self._shadow(tuple(shadow))
        return kept

    async def _write_rows(self, rows: Sequence[dict[str, Any]], conn: Any = None) -> None:
        async with self.connection("write", conn) as c:
            await arun(c, route_log.statement(rows))

    @property
    def log_writer(self) -> RouteLogWriter | None:
        return self._writer
