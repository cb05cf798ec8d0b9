"""``AvengersClient``: route a query to the models that are best on its cluster, then ask them.

Sync and thread-safe. The constructor connects to nothing; the first call opens one
``psycopg_pool.ConnectionPool`` (pgvector registered on each connection) and checks the schema
revision once. With a read replica (``read_url`` or ``AVENGERS_READ_DATABASE_URL``) routing reads
go to it and writes (the route log) to the primary; while the replica is down, reads go to the
primary, and back to the replica a second after it answers again. Losing the database raises
``StoreUnavailable``; the next call after the server is back reconnects (see
``store.availability``). Every method takes ``conn=`` to run in the
caller's connection and transaction instead. ``AsyncAvengersClient`` is its asyncio twin; what
they share (checks, lookups, answers to results and log rows) is in ``client_core``, the routing
statements in ``routing``, and the strategies in ``answering.strategies``.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from avengers_store import client_core as core
from avengers_store import routing
from avengers_store.answering import route_log, strategies
from avengers_store.answering.chat import DEFAULT_MAX_TOKENS, ChatClient
from avengers_store.answering.prompts import PromptSet
from avengers_store.calibration.embedders import Embedder, embedder_for_space
from avengers_store.client_core import DEFAULT_TOP_N, Query
from avengers_store.errors import AvengersError, ConnectionFailed, InputError, StoreUnavailable
from avengers_store.production import feedback
from avengers_store.routing import RouteDecision, loop, novelty, ood
from avengers_store.store import availability, config, connections, schema

__all__ = ["DEFAULT_TOP_N", "AvengersClient", "Query"]


class AvengersClient:
    """Route and answer queries with the store at ``url`` (default: the configured database).

    ``chat`` is the ChatClient used to call the models (default: one made and closed by this
    client); ``max_tokens`` caps each sampled completion; ``embedder`` overrides the embedder of
    the serving space (it must produce vectors of that space); ``pool_size`` bounds database
    connections per pool; ``max_concurrency`` bounds questions in flight in ``ask_many``;
    ``method`` is the routing rule (a ``routing.RoutingMethod`` or ``"avengers"`` / ``"paper"``;
    default ``routing.AVENGERS``); ``prepared_statements=False`` keeps the pools' connections
    from preparing statements (for a transaction-mode pooler that cannot keep them; single
    routes then go through ``avengers.route``, whose plan the server caches); ``log_vectors``
    keeps each asked query's embedding in ``avengers.route_vectors`` (never its text unless
    ``log_texts``), so feedback on it counts in later clustering versions. ``ood_policy``: what
    an out-of-distribution query gets (``flag``, ``best-overall`` or ``widen``; see
    ``routing.ood``), overridable per call; ``seed`` seeds exploration's draws; ``loop_ttl``: how
    long (seconds) the loop's data of a clustering (OOD thresholds, settings, production counts)
    is reused across decisions (0: read with every decision; ``routing.loop.LoopCache``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        read_url: str | None = None,
        chat: ChatClient | None = None,
        embedder: Embedder | None = None,
        prompts: PromptSet | None = None,
        threshold: float = strategies.DEFAULT_THRESHOLD,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        pool_size: int = 4,
        max_concurrency: int = 4,
        timeout: float | None = core.DEFAULT_TIMEOUT,
        method: str | routing.RoutingMethod | None = None,
        prepared_statements: bool = True,
        log_vectors: bool = False,
        log_texts: bool = False,
        ood_policy: str = ood.DEFAULT_POLICY,
        seed: int | None = None,
        loop_ttl: float = 1.0,
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
        self._pools: dict[str, ConnectionPool] = {}
        self._replica = availability.ReplicaState()
        self._lock = threading.Lock()
        self._closed = False

    # -- connections -----------------------------------------------------------------------

    def _open_pool(self, role: str) -> ConnectionPool:
        with self._lock:
            if self._closed:
                raise AvengersError("this AvengersClient is closed: make a new one")
            pool = self._pools.get(role)
            if pool is not None:
                return pool
            if role == "read" and self.read_url is None:
                pool = self._pools.get("write") or self._new_pool(self._primary_url())
                self._pools["write"] = pool
            else:
                target = self.read_url if role == "read" else self._primary_url()
                pool = self._new_pool(target, role)
            self._pools[role] = pool
            return pool

    def _primary_url(self) -> str:
        try:
            return connections.resolve_url(self.url)
        except ConnectionFailed as exc:  # the embedded server could not be started
            raise availability.unavailable(self.url, exc) from exc

    def _new_pool(self, target: str, role: str = "write") -> ConnectionPool:
        # One probe connection first: clear errors (unreachable server, no pgvector) and the
        # schema check, before a pool starts retrying in the background.
        try:
            with connections.connect(target) as probe:
                schema.check_revision(probe)
        except ConnectionFailed as exc:
            raise self._unavailable(role, exc) from exc
        pool = ConnectionPool(
            target,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True}
            if self.prepared_statements
            else {"autocommit": True, "prepare_threshold": None},
            configure=lambda c: connections.register_vector(c, target),
            open=False,
            name=f"avengers-{connections.redact(target)}",
            timeout=availability.CHECKOUT_TIMEOUT_S,
        )
        pool.open(wait=True, timeout=30)
        return pool

    def _unavailable(self, role: str, exc: BaseException) -> StoreUnavailable:
        if role == "read" and self.read_url is not None:
            return availability.unavailable(self.read_url, exc, role="replica")
        return availability.unavailable(self.url, exc)

    def _forget(self, pool: ConnectionPool) -> None:
        """Stop using ``pool`` (its server was lost): the next call makes a new one, which
        probes the server first, so a server that is back serves at once and one still down
        is reported at once, instead of waiting out the pool's reconnection backoff."""
        with self._lock:
            roles = [r for r, p in self._pools.items() if p is pool]
            for r in roles:
                del self._pools[r]
        # Closed aside: closing waits for its workers, and in-use connections return to it.
        threading.Thread(target=pool.close, kwargs={"timeout": 5}, daemon=True).start()

    @contextmanager
    def _connection(
        self, conn: psycopg.Connection | None, role: str
    ) -> Iterator[psycopg.Connection]:
        """``conn``, or a live pooled connection (``read``: the replica when there is one and
        it is up, else the primary). Losing the server raises StoreUnavailable."""
        if conn is not None:
            yield conn
            return
        if role == "read" and self.read_url is not None and not self._replica.usable():
            role = "write"
        try:
            pooled, pool, release = self._checkout(role)
        except StoreUnavailable:
            if role != "read" or self.read_url is None:
                raise
            self._replica.failed()  # reads fall back to the primary for a moment
            role = "write"
            pooled, pool, release = self._checkout(role)
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
            release()

    def _checkout(self, role: str) -> tuple[psycopg.Connection, ConnectionPool, Any]:
        """A pooled connection checked alive (one empty round trip), its pool, and how to give
        it back. A dead one (the server restarted) replaces the pool once."""
        for _ in range(2):
            pool = self._open_pool(role)
            try:
                pooled = pool.getconn()
            except PoolClosed:
                continue  # another thread found the server lost and replaced the pool
            except PoolTimeout as exc:
                self._forget(pool)
                raise self._unavailable(role, exc) from exc
            try:
                ConnectionPool.check_connection(pooled)
            except psycopg.Error:
                pool.putconn(pooled)
                self._forget(pool)
                continue
            return pooled, pool, functools.partial(pool.putconn, pooled)
        raise self._unavailable(role, ConnectionFailed("the connection was lost"))

    @property
    def chat(self) -> ChatClient:
        with self._lock:
            if self._chat is None:
                self._chat = ChatClient(max_concurrency=max(self.max_concurrency, 4))
            return self._chat

    def close(self) -> None:
        """Close the pools (and the ChatClient this client made). Idempotent."""
        with self._lock:
            self._closed = True
            pools, self._pools = {id(p): p for p in self._pools.values()}, {}
            chat, self._chat = (self._chat if self._own_chat else None), None
        for pool in pools.values():
            pool.close()
        if chat is not None:
            chat.close()

    def __enter__(self) -> AvengersClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- embedding -------------------------------------------------------------------------

    def embedder(self, conn: psycopg.Connection | None = None) -> Embedder:
        """The embedder of the serving space (the active clustering's), cached per client."""
        return self._serving(conn)[1]

    def _serving(
        self, conn: psycopg.Connection | None, *, refresh: bool = False
    ) -> tuple[int | None, Embedder]:
        """(active clustering id when cached, embedder of its space)."""
        if self._embedder_override is not None:
            return None, self._embedder_override
        with self._lock:
            cached = self._serving_cache
        if cached is not None and not refresh:
            return cached
        with self._connection(conn, "read") as c:
            clustering_id, space = core.serving_from_row(c.execute(core.SERVING_SQL).fetchone())
        with self._lock:
            embedder = self._embedders.get(space.id)
        if embedder is None:
            embedder = embedder_for_space(space)
        state = (clustering_id, embedder)
        with self._lock:
            self._embedders[space.id] = embedder
            self._serving_cache = state
        return state

    def _vectors(
        self, queries: Sequence[Query], conn: psycopg.Connection | None, *, refresh: bool = False
    ) -> tuple[list[Any], int | None]:
        """Texts embedded, vectors passed through; and the clustering the embedder serves."""
        out: list[Any] = list(queries)
        texts = core.text_positions(queries)
        if not texts:
            return out, None
        clustering_id, embedder = self._serving(conn, refresh=refresh)
        vectors = embedder.embed([q for _, q in texts])
        for (i, _), v in zip(texts, vectors, strict=True):
            out[i] = v
        return out, clustering_id

    # -- routing ---------------------------------------------------------------------------

    def route(
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
        conn: psycopg.Connection | None = None,
    ) -> RouteDecision:
        """Route a text (embedded in the serving space) or a vector: the routing statement
        (``avengers.route_pooled``, else ``avengers.route``), then the loop's (``routing.loop``:
        novelty, production feedback, settings), the OOD policy and the clustering's
        exploration. ``method`` and ``ood_policy`` override the client's for this call.
        ``tradeoff`` (α in [0, 1]: 1 ranks by expected quality, 0 by expected cost) and
        ``max_cost`` (the highest expected cost a candidate may have; when none fits, the
        cheapest is returned with ``over_budget``) make the route cost-aware, each candidate
        then carrying its ``expected_cost``; ``prompt_chars`` is a vector's text length (a
        text's own length is used); ``completions``: answers the request will draw (its
        expected cost counts them)."""
        chosen = routing.routing_method(method) if method is not None else self.method
        policy = self._policy(ood_policy)
        options: dict[str, Any] = {"require_endpoint": require_endpoint, "method": chosen}
        if tradeoff is not None or max_cost is not None:  # a plain route skips all of this
            options["policy"] = routing.cost_policy(tradeoff, max_cost, completions)
            options["prompt_chars"] = len(query) if isinstance(query, str) else prompt_chars
        if conn is not None and not isinstance(query, str):
            # A vector on the caller's connection: nothing to embed, no pool to check out.
            return self._decide(conn, [query], top_n, options, policy, single=True)[0]
        vectors, served = self._vectors([query], conn)
        with self._connection(conn, "read") as c:
            decisions = self._decide(c, vectors, top_n, options, policy, single=True)
        if core.stale(decisions, served):
            vectors, _ = self._vectors([query], conn, refresh=True)
            with self._connection(conn, "read") as c:
                decisions = self._decide(c, vectors, top_n, options, policy, single=True)
        return decisions[0]

    def route_many(
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
        conn: psycopg.Connection | None = None,
    ) -> list[RouteDecision]:
        """Route many texts and/or vectors in one routing statement (one snapshot); input order
        kept. A 2-D numpy array is taken as one vector per row, as is. ``method`` and
        ``ood_policy`` override the client's for this call; ``tradeoff``, ``max_cost`` and
        ``prompt_chars`` (per query; texts use their own length) as in ``route``;
        ``completions``: answers each request will draw (its expected cost counts them)."""
        return self._route_many(
            queries, top_n, require_endpoint=require_endpoint, method=method, tradeoff=tradeoff,
            max_cost=max_cost, prompt_chars=prompt_chars, completions=completions,
            ood_policy=ood_policy, conn=conn,
        )[0]  # fmt: skip

    def _route_many(
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
        conn: psycopg.Connection | None,
    ) -> tuple[list[RouteDecision], Any]:
        """``route_many``'s decisions and the vectors they were routed with (texts embedded)."""
        core.check_route_many(queries)
        chosen = routing.routing_method(method) if method is not None else self.method
        policy = self._policy(ood_policy)
        cost = routing.cost_policy(tradeoff, max_cost, completions)
        options: dict[str, Any] = {
            "require_endpoint": require_endpoint, "method": chosen, "policy": cost}  # fmt: skip
        if cost.costed:
            options["prompt_chars"] = core.prompt_chars(queries, prompt_chars)
        if isinstance(queries, np.ndarray) and queries.ndim == 2:
            with self._connection(conn, "read") as c:
                return self._decide(c, queries, top_n, options, policy), queries
        vectors, served = self._vectors(list(queries), conn)
        with self._connection(conn, "read") as c:
            decisions = self._decide(c, vectors, top_n, options, policy)
        if core.stale(decisions, served):
            vectors, _ = self._vectors(list(queries), conn, refresh=True)
            with self._connection(conn, "read") as c:
                decisions = self._decide(c, vectors, top_n, options, policy)
        return decisions, vectors

    def _policy(self, ood_policy: str | None) -> str:
        return ood.ood_policy(ood_policy) if ood_policy is not None else self.ood_policy

    def _decide(
        self,
        c: psycopg.Connection,
        vectors: Any,
        top_n: int,
        options: dict[str, Any],
        policy: str,
        *,
        single: bool = False,
    ) -> list[RouteDecision]:
        """Route, annotate with the loop, apply the OOD policy and exploration. Exploration
        chooses among ``exploration.POOL`` candidates: asked for from the start once this
        client has seen it on, else routed again the first time."""

        def run(n: int) -> list[RouteDecision]:
            if single:
                found = [routing.route_vector(c, vectors[0], n, **options)]
            else:
                found = routing.route_vectors(c, vectors, n, **options)
            rows = loop.cached_rows(c, found, self._loop_cache)
            models = loop.novelty_models(c, found, rows, self._novelty_cache)
            return loop.annotate(found, rows, vectors, models)

        asked = core.asked_for(top_n, self._explores)
        decisions = run(asked)
        self._explores = any(d.exploration is not None for d in decisions)
        if asked == top_n and loop.needs_pool(decisions, top_n):
            decisions = run(core.asked_for(top_n, True))
        return loop.settle(
            c, decisions, top_n, policy, self._rng, require_endpoint=options["require_endpoint"]
        )

    # -- answering -------------------------------------------------------------------------

    def ask(
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
        conn: psycopg.Connection | None = None,
    ) -> strategies.Answer:
        """Embed, route to the top models with endpoints, sample and vote, log, return the
        Answer with ``decision`` and ``route_id`` filled. ``latency_ms`` is end to end
        (embedding included). ``tradeoff`` and ``max_cost`` as in ``route``, the expected cost
        counting ``samples`` answers. An out-of-distribution question gets ``ood_policy``
        (default: the client's); under ``widen`` it is answered with Model-Switch over the
        top-n. ``timeout`` (seconds; default the client's) bounds it all, fallbacks included:
        past it the samples drawn are voted on, or AllEndpointsFailed (``timed_out``) is
        raised."""
        return self.ask_many(
            [text], samples, strategy, task_type, top_n, tradeoff=tradeoff, max_cost=max_cost,
            ood_policy=ood_policy, timeout=timeout, conn=conn, return_exceptions=False,
        )[0]  # type: ignore[return-value]  # fmt: skip

    def ask_many(
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
        conn: psycopg.Connection | None = None,
    ) -> list[strategies.Answer | AvengersError]:
        """``ask`` for many texts: one embedding batch, one routing statement, then at most
        ``max_concurrency`` questions sampled at a time. Every question writes a route_log row
        (failed ones too, with the error). With ``return_exceptions`` a failed question yields
        its AvengersError in place of an Answer. ``timeout`` bounds each question as ``ask``
        would: the shared embedding and routing plus its own sampling (waiting for a free slot
        among ``max_concurrency`` is not counted)."""
        core.check_ask(texts, strategy)
        core.check_timeout(timeout)
        limit = timeout if timeout is not None else self.timeout
        if not texts:
            return []
        # Reading the embedding model happens once per process: not part of a question's deadline.
        core.load_embedder(self._serving(conn)[1])
        started = time.perf_counter()
        n = core.top_n_for(strategy, top_n)
        decisions, vectors = self._route_many(
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

        def one(i: int) -> tuple[strategies.Answer | None, AvengersError | None, float]:
            began = time.perf_counter()
            deadline = core.question_deadline(limit, routed_ms / 1000.0)
            try:
                result = self._answer_one(texts[i], decisions[i], {**options, "deadline": deadline})
                return result, None, (time.perf_counter() - began) * 1000.0
            except AvengersError as exc:
                return None, exc, (time.perf_counter() - began) * 1000.0

        workers = max(1, min(max_concurrency or self.max_concurrency, len(texts)))
        if workers == 1:
            results = [one(i) for i in range(len(texts))]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(one, range(len(texts))))

        out, rows = core.settle(
            texts,
            decisions,
            results,
            routed_ms=routed_ms,
            strategy=strategy,
            top_n=n,
            vectors=vectors if self.log_vectors else None,
            keep_texts=self.log_texts,
        )
        with self._connection(conn, "write") as c:
            route_log.write(c, rows)
        if not return_exceptions:
            core.raise_first(out)
        return out

    def _answer_one(
        self, text: str, decision: RouteDecision, options: dict[str, Any]
    ) -> strategies.Answer:
        endpoints = core.endpoints_for(decision)
        return strategies.answer(
            text, endpoints, client=self.chat, **core.options_for(decision, options)
        )

    # -- feedback --------------------------------------------------------------------------

    def feedback(
        self,
        route_id: uuid.UUID | str,
        score: float,
        model: str | None = None,
        source: str = feedback.DEFAULT_SOURCE,
        *,
        at: datetime | None = None,
        refresh: bool = True,
        conn: psycopg.Connection | None = None,
    ) -> feedback.Feedback:
        """Score the answer of request ``route_id`` (``Answer.route_id``) in [0, 1]: one SQL
        call (``avengers.record_feedback``). ``model`` None scores the model whose answer was
        returned, else it must be one the request sampled; a second feedback from the same
        ``source`` replaces the first. ``refresh`` serves it to routing at once."""
        with self._connection(conn, "write") as c:
            stored = feedback.record_feedback(
                c, route_id, score, model, source, at=at, refresh=refresh
            )
        self._loop_cache.clear()  # the next decision shows this feedback
        return stored
