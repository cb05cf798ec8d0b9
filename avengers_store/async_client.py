"""``AsyncAvengersClient``: ``AvengersClient`` for asyncio, with the same surface (``route``,
``route_many``, ``ask``, ``ask_many``, each a coroutine) and the same behaviour.

The constructor connects to nothing; the first call opens a ``psycopg_pool.AsyncConnectionPool``
(pgvector registered on each connection) after checking the schema revision once. Model calls go
through one ``AsyncChatClient``. Texts are embedded off the event loop, one worker thread with one
torch thread by default, and texts of concurrent calls are embedded together
(``calibration.embedding_batches``). Routing statements, strategies, fallback and route-log rows
are the ones the sync client uses (``routing``, ``answering.strategies``, ``client_core``).

With ``background_log=True`` route-log rows are written by a background task (a bounded queue)
instead of before ``ask`` returns; ``aclose()`` writes every queued row before closing the pools.
``on_stage(stage, seconds)`` is told how long each stage took: ``embed``, ``route``, ``upstream``
(one model call) and ``vote`` (the plan's own time: extraction and voting).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from avengers_store import client_core as core
from avengers_store import routing
from avengers_store.answering import route_log, strategies
from avengers_store.answering.async_chat import AsyncChatClient
from avengers_store.answering.prompts import PromptSet
from avengers_store.answering.route_log_writer import RouteLogWriter
from avengers_store.answering.sampling import DEFAULT_MAX_TOKENS
from avengers_store.calibration.embedders import Embedder, embedder_for_space
from avengers_store.calibration.embedding_batches import EmbeddingBatcher
from avengers_store.client_core import Query
from avengers_store.errors import (
    AvengersError,
    ConfigurationError,
    ConnectionFailed,
    InputError,
    StoreUnavailable,
)
from avengers_store.production import feedback
from avengers_store.routing import RouteDecision, loop, novelty, ood
from avengers_store.routing.adapters import aensure_vector_types
from avengers_store.store import availability, config, connections, schema

StageObserver = Callable[[str, float], None]
# Longest ``feedback`` waits for this client's queued route-log rows (its route's among them).
FEEDBACK_FLUSH_S = 5.0


class AsyncAvengersClient:
    """Route and answer queries with the store at ``url`` from asyncio.

    Options as ``AvengersClient`` (``read_url``, ``embedder``, ``prompts``, ``threshold``,
    ``max_tokens``, ``pool_size``, ``max_concurrency``, ``timeout``, ``method``,
    ``prepared_statements``, ``log_vectors``, ``log_texts``, ``ood_policy``, ``seed``), and:
    ``chat`` an AsyncChatClient (default: one made and closed by this client); ``embed_threads``
    torch threads for a local embedder (None: leave torch's setting); ``max_embed_batch`` texts
    per embedding batch; ``background_log`` and ``log_queue`` (rows waiting at most);
    ``on_stage`` a stage-time observer; ``on_log(event, rows)`` is told of background route-log
    rows ``queued``, ``written`` and ``dropped``; ``log_writer`` a RouteLogWriter of the
    caller's (e.g. with a spool) for the background rows.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        read_url: str | None = None,
        chat: AsyncChatClient | None = None,
        embedder: Embedder | None = None,
        prompts: PromptSet | None = None,
        threshold: float = strategies.DEFAULT_THRESHOLD,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        pool_size: int = 8,
        max_concurrency: int = 16,
        timeout: float | None = core.DEFAULT_TIMEOUT,
        method: str | routing.RoutingMethod | None = None,
        prepared_statements: bool = True,
        embed_threads: int | None = 1,
        max_embed_batch: int = 64,
        background_log: bool = False,
        log_queue: int = 10_000,
        on_stage: StageObserver | None = None,
        on_log: Callable[[str, int], None] | None = None,
        log_vectors: bool = False,
        log_texts: bool = False,
        ood_policy: str = ood.DEFAULT_POLICY,
        seed: int | None = None,
        loop_ttl: float = 1.0,
        log_writer: RouteLogWriter | None = None,
    ) -> None:
        if pool_size < 1:
            raise InputError(f"pool_size must be >= 1, got {pool_size}", location="pool_size")
        if max_concurrency < 1:
            raise InputError(
                f"max_concurrency must be >= 1, got {max_concurrency}", location="max_concurrency"
            )
        core.check_timeout(timeout)
        self.timeout = timeout
        self.method = routing.routing_method(method)
        self.url = url
        self.read_url = read_url if read_url is not None else config.read_database_url()
        self.prompts = prompts
        self.threshold = threshold
        self.max_tokens = max_tokens
        self.pool_size = pool_size
        self.max_concurrency = max_concurrency
        self.prepared_statements = prepared_statements
        self.on_stage = on_stage
        self.on_log = on_log
        self.log_vectors = log_vectors or log_texts
        self.log_texts = log_texts
        self.ood_policy = ood.ood_policy(ood_policy)
        self._rng = np.random.default_rng(seed)
        self._explores = False
        self._loop_cache = loop.LoopCache(loop_ttl)
        self._novelty_cache = novelty.NoveltyCache()
        self._chat = chat
        self._own_chat = chat is None
        self._embedder_override = embedder
        self._embedders: dict[int, Embedder] = {}
        self._serving_cache: tuple[int | None, Embedder] | None = None
        self._batcher = EmbeddingBatcher(threads=embed_threads, max_batch=max_embed_batch)
        self._pools: dict[str, AsyncConnectionPool] = {}
        self._replica = availability.ReplicaState()
        self._closing: set[asyncio.Task[None]] = set()
        self._pool_lock: asyncio.Lock | None = None
        self._closed = False
        self._shutting_down = False
        self._log_queue = log_queue
        self._writer: RouteLogWriter | None = log_writer
        self.background_log = background_log

    # -- connections -----------------------------------------------------------------------

    async def _open_pool(self, role: str) -> AsyncConnectionPool:
        pool = self._pools.get(role)
        if pool is not None:
            return pool
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:
            if self._closed:
                raise AvengersError("this AsyncAvengersClient is closed: make a new one")
            pool = self._pools.get(role)
            if pool is not None:
                return pool
            if role == "read" and self.read_url is None:
                pool = self._pools.get("write") or await self._new_pool(await self._primary_url())
                self._pools["write"] = pool
            else:
                target = self.read_url if role == "read" else await self._primary_url()
                pool = await self._new_pool(target, role)
            self._pools[role] = pool
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
        kwargs: dict[str, Any] = {"autocommit": True}
        if not self.prepared_statements:
            kwargs["prepare_threshold"] = None
        pool = AsyncConnectionPool(
            target,
            min_size=1,
            max_size=self.pool_size,
            kwargs=kwargs,
            configure=aensure_vector_types,
            open=False,
            name=f"avengers-async-{connections.redact(target)}",
            timeout=availability.CHECKOUT_TIMEOUT_S,
        )
        await pool.open(wait=True, timeout=30)
        return pool

    def _unavailable(self, role: str, exc: BaseException) -> StoreUnavailable:
        if role == "read" and self.read_url is not None:
            return availability.unavailable(self.read_url, exc, role="replica")
        return availability.unavailable(self.url, exc)

    def _forget(self, pool: AsyncConnectionPool) -> None:
        """Stop using ``pool`` (its server was lost), as ``AvengersClient._forget`` does."""
        for role in [r for r, p in self._pools.items() if p is pool]:
            del self._pools[role]
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
        if role == "read" and self.read_url is not None and not self._replica.usable():
            role = "write"
        try:
            pooled, pool = await self._checkout(role)
        except StoreUnavailable:
            if role != "read" or self.read_url is None:
                raise
            self._replica.failed()  # reads fall back to the primary for a moment
            role = "write"
            pooled, pool = await self._checkout(role)
        try:
            yield pooled
        except (psycopg.OperationalError, ConnectionFailed) as exc:
            if not availability.is_lost(exc, pooled):
                raise
            self._forget(pool)
            if role == "read" and self.read_url is not None:
                self._replica.failed()
            raise self._unavailable(role, exc) from exc
        finally:
            await pool.putconn(pooled)

    async def _checkout(self, role: str) -> tuple[psycopg.AsyncConnection, AsyncConnectionPool]:
        """A pooled connection checked alive and its pool (see ``AvengersClient._checkout``)."""
        for _ in range(2):
            pool = await self._open_pool(role)
            try:
                pooled = await pool.getconn()
            except PoolClosed:
                continue  # another task found the server lost and replaced the pool
            except PoolTimeout as exc:
                self._forget(pool)
                raise self._unavailable(role, exc) from exc
            try:
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

    async def __aenter__(self) -> AsyncAvengersClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- embedding -------------------------------------------------------------------------

    async def embedder(self, conn: psycopg.AsyncConnection | None = None) -> Embedder:
        """The embedder of the serving space (the active clustering's), cached per client."""
        return (await self._serving(conn))[1]

    async def _serving(
        self, conn: psycopg.AsyncConnection | None, *, refresh: bool = False
    ) -> tuple[int | None, Embedder]:
        if self._embedder_override is not None:
            return None, self._embedder_override
        if self._serving_cache is not None and not refresh:
            return self._serving_cache
        async with self.connection("read", conn) as c:
            cursor = await c.execute(core.SERVING_SQL)
            clustering_id, space = core.serving_from_row(await cursor.fetchone())
        embedder = self._embedders.get(space.id) or embedder_for_space(space)
        self._embedders[space.id] = embedder
        self._serving_cache = (clustering_id, embedder)
        return self._serving_cache

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` in the serving space (batched with concurrent calls)."""
        _, embedder = await self._serving(None)
        return await self._embed(embedder, list(texts))

    async def _embed(self, embedder: Embedder, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = await self._batcher.embed(embedder, texts)
        self._observe("embed", time.perf_counter() - started)
        return vectors

    async def _vectors(
        self,
        queries: Sequence[Query],
        conn: psycopg.AsyncConnection | None,
        *,
        refresh: bool = False,
    ) -> tuple[list[Any], int | None]:
        out: list[Any] = list(queries)
        texts = core.text_positions(queries)
        if not texts:
            return out, None
        clustering_id, embedder = await self._serving(conn, refresh=refresh)
        vectors = await self._embed(embedder, [q for _, q in texts])
        for (i, _), v in zip(texts, vectors, strict=True):
            out[i] = v
        return out, clustering_id

    def _observe(self, stage: str, seconds: float) -> None:
        if self.on_stage is not None:
            self.on_stage(stage, seconds)

    # -- routing ---------------------------------------------------------------------------

    async def route(
        self,
        query: Query,
        top_n: int = 1,
        *,
        require_endpoint: bool = False,
        method: str | routing.RoutingMethod | None = None,
        tradeoff: float | None = None,
        max_cost: float | None = None,
        prompt_chars: int | None = None,
        completions: int = 1,
        ood_policy: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> RouteDecision:
        """Route a text (embedded in the serving space) or a vector: as ``AvengersClient.route``.
        ``method`` and ``ood_policy`` override the client's for this call; ``tradeoff``,
        ``max_cost`` and ``prompt_chars`` as in ``AvengersClient.route``; ``completions``:
        answers the request will draw (its expected cost counts them)."""
        decision, _ = await self.route_with_vector(
            query, top_n, require_endpoint=require_endpoint, method=method, tradeoff=tradeoff,
            max_cost=max_cost, prompt_chars=prompt_chars, completions=completions,
            ood_policy=ood_policy, conn=conn,
        )  # fmt: skip
        return decision

    async def route_with_vector(
        self,
        query: Query,
        top_n: int = 1,
        *,
        require_endpoint: bool = False,
        method: str | routing.RoutingMethod | None = None,
        tradeoff: float | None = None,
        max_cost: float | None = None,
        prompt_chars: int | None = None,
        completions: int = 1,
        ood_policy: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> tuple[RouteDecision, Any]:
        """``route``, and the vector the query was routed with (its embedding, for a text):
        what the route log keeps when vectors are logged (``log_vectors``)."""
        options = {
            "require_endpoint": require_endpoint,
            "method": routing.routing_method(method) if method is not None else self.method,
            "policy": routing.cost_policy(tradeoff, max_cost, completions),
            "prompt_chars": core.prompt_chars(
                [query], None if prompt_chars is None else [prompt_chars]
            )[0],
        }
        policy = self._policy(ood_policy)
        vectors, served = await self._vectors([query], conn)
        decision = await self._route_one(vectors[0], top_n, options, conn, policy)
        if core.stale([decision], served):
            vectors, _ = await self._vectors([query], conn, refresh=True)
            decision = await self._route_one(vectors[0], top_n, options, conn, policy)
        return decision, vectors[0]

    def _policy(self, ood_policy: str | None) -> str:
        return ood.ood_policy(ood_policy) if ood_policy is not None else self.ood_policy

    async def _route_one(
        self, vector: Any, top_n: int, options: dict[str, Any], conn: Any, policy: str
    ) -> RouteDecision:
        started = time.perf_counter()
        async with self.connection("read", conn) as c:
            decisions = await self._decide(c, [vector], top_n, options, policy, single=True)
        self._observe("route", time.perf_counter() - started)
        return decisions[0]

    async def _decide(
        self,
        c: psycopg.AsyncConnection,
        vectors: Any,
        top_n: int,
        options: dict[str, Any],
        policy: str,
        *,
        single: bool = False,
    ) -> list[RouteDecision]:
        """``AvengersClient._decide``: route, annotate with the loop, apply the OOD policy and
        exploration."""

        async def run(n: int) -> list[RouteDecision]:
            if single:
                found = [await routing.aroute_vector(c, vectors[0], n, **options)]
            else:
                found = await routing.aroute_vectors(c, vectors, n, **options)
            rows = await loop.acached_rows(c, found, self._loop_cache)
            models = await loop.anovelty_models(c, found, rows, self._novelty_cache)
            return loop.annotate(found, rows, vectors, models)

        asked = core.asked_for(top_n, self._explores)
        decisions = await run(asked)
        self._explores = any(d.exploration is not None for d in decisions)
        if asked == top_n and loop.needs_pool(decisions, top_n):
            decisions = await run(core.asked_for(top_n, True))
        return await loop.asettle(
            c, decisions, top_n, policy, self._rng, require_endpoint=options["require_endpoint"]
        )

    async def route_many(
        self,
        queries: Sequence[Query],
        top_n: int = 1,
        *,
        require_endpoint: bool = False,
        method: str | routing.RoutingMethod | None = None,
        tradeoff: float | None = None,
        max_cost: float | None = None,
        prompt_chars: Sequence[int | None] | None = None,
        completions: int = 1,
        ood_policy: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> list[RouteDecision]:
        """Route many texts and/or vectors in one routing statement (one snapshot); input order
        kept. ``method`` and ``ood_policy`` override the client's for this call; the cost
        options as in ``AvengersClient.route_many``."""
        found = await self._route_many(
            queries, top_n, require_endpoint=require_endpoint, method=method, tradeoff=tradeoff,
            max_cost=max_cost, prompt_chars=prompt_chars, completions=completions,
            ood_policy=ood_policy, conn=conn,
        )  # fmt: skip
        return found[0]

    async def _route_many(
        self,
        queries: Sequence[Query],
        top_n: int,
        *,
        require_endpoint: bool,
        method: str | routing.RoutingMethod | None,
        tradeoff: float | None,
        max_cost: float | None,
        prompt_chars: Sequence[int | None] | None,
        completions: int,
        ood_policy: str | None,
        conn: psycopg.AsyncConnection | None,
    ) -> tuple[list[RouteDecision], Any]:
        """``route_many``'s decisions and the vectors they were routed with (texts embedded)."""
        core.check_route_many(queries)
        cost = routing.cost_policy(tradeoff, max_cost, completions)
        options: dict[str, Any] = {
            "require_endpoint": require_endpoint,
            "method": routing.routing_method(method) if method is not None else self.method,
            "policy": cost,
        }
        if cost.costed:
            options["prompt_chars"] = core.prompt_chars(queries, prompt_chars)
        policy = self._policy(ood_policy)
        if isinstance(queries, np.ndarray) and queries.ndim == 2:
            return await self._route_batch(queries, top_n, options, conn, policy), queries
        vectors, served = await self._vectors(list(queries), conn)
        decisions = await self._route_batch(vectors, top_n, options, conn, policy)
        if core.stale(decisions, served):
            vectors, _ = await self._vectors(list(queries), conn, refresh=True)
            decisions = await self._route_batch(vectors, top_n, options, conn, policy)
        return decisions, vectors

    async def _route_batch(
        self, vectors: Any, top_n: int, options: dict[str, Any], conn: Any, policy: str
    ) -> list[RouteDecision]:
        started = time.perf_counter()
        async with self.connection("read", conn) as c:
            decisions = await self._decide(c, vectors, top_n, options, policy)
        self._observe("route", time.perf_counter() - started)
        return decisions

    # -- answering -------------------------------------------------------------------------

    async def ask(
        self,
        text: str,
        samples: int = strategies.DEFAULT_SAMPLES,
        strategy: str = "self-consistency",
        task_type: str | None = None,
        top_n: int | None = None,
        *,
        tradeoff: float | None = None,
        max_cost: float | None = None,
        ood_policy: str | None = None,
        timeout: float | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> strategies.Answer:
        """Embed, route to the top models with endpoints, sample and vote, log, return the
        Answer (``decision`` and ``route_id`` filled); ``tradeoff``, ``max_cost``,
        ``ood_policy`` and ``timeout`` as in ``AvengersClient.ask``."""
        results = await self.ask_many(
            [text], samples, strategy, task_type, top_n, tradeoff=tradeoff, max_cost=max_cost,
            ood_policy=ood_policy, timeout=timeout, conn=conn, return_exceptions=False,
        )  # fmt: skip
        return results[0]  # type: ignore[return-value]

    async def ask_many(
        self,
        texts: Sequence[str],
        samples: int = strategies.DEFAULT_SAMPLES,
        strategy: str = "self-consistency",
        task_type: str | None = None,
        top_n: int | None = None,
        *,
        max_concurrency: int | None = None,
        return_exceptions: bool = False,
        tradeoff: float | None = None,
        max_cost: float | None = None,
        ood_policy: str | None = None,
        timeout: float | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> list[strategies.Answer | AvengersError]:
        """``ask`` for many texts: one embedding batch, one routing statement, then at most
        ``max_concurrency`` questions sampled at a time; a route_log row each (failed ones
        too). With ``return_exceptions`` a failed question yields its AvengersError.
        ``timeout`` bounds each question as ``AvengersClient.ask_many`` says."""
        core.check_ask(texts, strategy)
        core.check_timeout(timeout)
        limit = timeout if timeout is not None else self.timeout
        if not texts:
            return []
        # Reading the embedding model happens once per process: not part of a question's deadline.
        _, embedder = await self._serving(conn)
        await asyncio.to_thread(core.load_embedder, embedder)
        started = time.perf_counter()
        n = core.top_n_for(strategy, top_n)
        decisions, vectors = await self._route_many(
            list(texts), n, require_endpoint=True, method=None, tradeoff=tradeoff,
            max_cost=max_cost, prompt_chars=None,
            completions=core.completions_for(strategy, samples), ood_policy=ood_policy, conn=conn,
        )  # fmt: skip
        routed_ms = (time.perf_counter() - started) * 1000.0
        options: dict[str, Any] = {
            "samples": samples,
            "strategy": strategy,
            "task_type": task_type,
            "threshold": self.threshold,
            "prompts": self.prompts,
            "max_tokens": self.max_tokens,
        }
        gate = asyncio.Semaphore(max(1, max_concurrency or self.max_concurrency))

        async def one(i: int) -> core.Outcome:
            async with gate:
                began = time.perf_counter()
                deadline = core.question_deadline(limit, routed_ms / 1000.0)
                try:
                    plan = strategies.answer_plan(
                        texts[i],
                        core.endpoints_for(decisions[i]),
                        deadline=deadline,
                        **core.options_for(decisions[i], options),
                    )
                    result = await self.run_plan(plan)
                    return result, None, (time.perf_counter() - began) * 1000.0
                except AvengersError as exc:
                    return None, exc, (time.perf_counter() - began) * 1000.0

        outcomes = await asyncio.gather(*(one(i) for i in range(len(texts))))
        out, rows = core.settle(
            texts,
            decisions,
            outcomes,
            routed_ms=routed_ms,
            strategy=strategy,
            top_n=n,
            vectors=vectors if self.log_vectors else None,
            keep_texts=self.log_texts,
        )
        await self.log(rows, conn=conn)
        if not return_exceptions:
            core.raise_first(out)
        return out

    async def run_plan(self, plan: strategies.Plan) -> strategies.Answer:
        """Drive an ``answer_plan`` with this client's AsyncChatClient (stage times observed)."""
        return await strategies.arun_plan(plan, self.chat, observe=self.on_stage)

    async def log(
        self, rows: Sequence[dict[str, Any]], *, conn: psycopg.AsyncConnection | None = None
    ) -> None:
        """Write route-log rows (``route_log.entry``): now, or queued for the background
        writer when the client was made with ``background_log`` (and no ``conn`` is given)."""
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
        async with self.connection("write", conn) as c:
            await route_log.awrite(c, rows)

    # -- feedback --------------------------------------------------------------------------

    async def feedback(
        self,
        route_id: uuid.UUID | str,
        score: float,
        model: str | None = None,
        source: str = feedback.DEFAULT_SOURCE,
        *,
        at: datetime | None = None,
        refresh: bool = True,
        conn: psycopg.AsyncConnection | None = None,
    ) -> feedback.Feedback:
        """``AvengersClient.feedback``: score the answer of request ``route_id`` in [0, 1].
        Route-log rows still queued for the background writer are written first, so feedback
        on an answer this client just gave finds its route."""
        if self._writer is not None and conn is None:
            # Bounded: while the store is down the statement below raises StoreUnavailable anyway.
            await self._writer.flush(FEEDBACK_FLUSH_S)
        async with self.connection("write", conn) as c:
            stored = await feedback.arecord_feedback(
                c, route_id, score, model, source, at=at, refresh=refresh
            )
        self._loop_cache.clear()  # the next decision shows this feedback
        return stored

    async def refresh_production(self, conn: psycopg.AsyncConnection | None = None) -> None:
        """Serve the feedback recorded since the last refresh (``avengers.refresh_production``)."""
        async with self.connection("write", conn) as c:
            await c.execute(feedback.REFRESH_SQL)
        self._loop_cache.clear()

    @property
    def log_writer(self) -> RouteLogWriter | None:
        return self._writer

    async def _write_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        async with self.connection("write") as c:
            await route_log.awrite(c, rows)
