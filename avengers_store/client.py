"""``AvengersClient``: route a query to the models that are best on its cluster, then ask them.

Sync and thread-safe. The constructor connects to nothing; the first call opens one
``psycopg_pool.ConnectionPool`` (pgvector registered on each connection) and checks the schema
revision once. With a read replica (``read_url`` or ``AVENGERS_READ_DATABASE_URL``) routing reads
go to it and writes (the route log) to the primary; while the replica is down, reads go to the
primary, and back to the replica a second after it answers again. Losing the database raises
``StoreUnavailable``; the next call after the server is back reconnects (see
``store.availability``). Every method takes ``conn=`` to run in the caller's connection and
transaction instead.

The methods (``route``, ``route_many``, ``ask``, ``ask_many``, ``feedback``, ...) are the flows of
``client_core.ClientCore``, written once for this client and ``AsyncAvengersClient``; this module
holds only the sync I/O that runs them (``_drive``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from avengers_store import client_core as core
from avengers_store.answering import route_log, strategies
from avengers_store.answering.chat import DEFAULT_MAX_TOKENS, ChatClient
from avengers_store.answering.prompts import PromptSet
from avengers_store.calibration.embedders import Embedder
from avengers_store.client_core import DEFAULT_TOP_N, Query
from avengers_store.client_pools import (
    GENERIC_PLANS,
    SPARE_WAIT_S,
    PooledClient,
    needs_check,
    spare_room,
)
from avengers_store.errors import AvengersError, ConnectionFailed, EndpointError, StoreUnavailable
from avengers_store.flows import Done, advance
from avengers_store.routing import RoutingMethod
from avengers_store.routing.adapters import ensure_vector_types
from avengers_store.routing.policy import Policy
from avengers_store.store import availability, connections, schema, snapshots
from avengers_store.store.statement import run as run_statement

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TOP_N", "AvengersClient", "Query"]


class AvengersClient(PooledClient):
    """Route and answer queries with the store at ``url`` (default: the configured database).

    ``policy`` is the default routing policy (``routing.Policy``; ``method`` and
    ``ood_policy`` change it); ``chat`` is the ChatClient used to call the models (default: one
    made and closed by this client); ``max_tokens`` caps each sampled completion; ``embedder``
    overrides the embedder of the serving space (it must produce vectors of that space);
    ``pool_size`` bounds database connections per pool; ``max_concurrency`` bounds questions in
    flight in ``ask_many``; ``prepared_statements=False`` keeps the pools' connections from
    preparing statements (for a transaction-mode pooler that cannot keep them);
    ``log_vectors`` keeps each asked query's embedding in ``avengers.route_vectors`` (never its
    text unless ``log_texts``), so feedback on it counts in later clustering versions; ``seed``
    seeds exploration's draws; ``timeout`` bounds each ``ask`` (seconds).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        read_url: str | None = None,
        policy: Policy | None = None,
        method: str | RoutingMethod | None = None,
        ood_policy: str | None = None,
        chat: ChatClient | None = None,
        embedder: Embedder | None = None,
        prompts: PromptSet | None = None,
        threshold: float = strategies.DEFAULT_THRESHOLD,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        pool_size: int = 4,
        max_concurrency: int = 4,
        timeout: float | None = core.DEFAULT_TIMEOUT,
        prepared_statements: bool = True,
        log_vectors: bool = False,
        log_texts: bool = False,
        seed: int | None = None,
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
        self._lock = threading.Lock()
        self._shadow_thread: ThreadPoolExecutor | None = None

    # -- connections -----------------------------------------------------------------------

    def _open_pool(self, role: str) -> ConnectionPool:
        with self._lock:
            pool = self._known_pool(role)
            if pool is None:
                serving = self._pool_role(role)
                target = self.read_url if serving == "read" else self._primary_url()
                pool = self._keep(role, self._new_pool(target, serving))
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

        def configure(c: psycopg.Connection) -> None:
            connections.register_vector(c, target)
            if self.prepared_statements:
                c.execute(GENERIC_PLANS)

        pool = ConnectionPool(target, configure=configure, **self._pool_options(target, "avengers"))
        pool.open(wait=True, timeout=30)
        return pool

    def _forget(self, pool: ConnectionPool) -> None:
        """Stop using ``pool`` (its server was lost): the next call makes a new one, which
        probes the server first, so a server that is back serves at once and one still down
        is reported at once, instead of waiting out the pool's reconnection backoff."""
        with self._lock:
            self._drop(pool)
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
        with self._pooled(role) as (pooled, _):
            yield pooled

    @contextmanager
    def _pooled(self, role: str) -> Iterator[tuple[psycopg.Connection, ConnectionPool]]:
        """A live pooled connection for ``role`` (as ``_connection``) and its pool."""
        role = self._routed_role(role)
        try:
            pooled, pool, release = self._checkout(role)
        except StoreUnavailable:
            if not self._falls_back(role):
                raise
            role = "write"
            pooled, pool, release = self._checkout(role)
        try:
            with self._watching(pool, role, pooled):
                yield pooled, pool
        finally:
            release()

    def _run_parts(self, step: core.RunParts) -> list[Any]:
        """A batch's parts on the pooled connections free now (the first waits for one, the
        others take only what is free, so two batches never wait on each other), in one
        snapshot; a connection runs its parts in turn, the connections at once."""
        with self._pooled(step.role) as (first, pool), ExitStack() as held:
            conns = [first]
            for _ in range(spare_room(pool, len(step.statements) - 1)):
                try:
                    spare = pool.getconn(timeout=SPARE_WAIT_S)
                except (PoolTimeout, PoolClosed):
                    break
                held.callback(pool.putconn, spare)
                if needs_check(spare):
                    try:
                        ConnectionPool.check_connection(spare)
                    except psycopg.Error:
                        continue  # the pool replaces it; this batch does without
                conns.append(spare)
            for c in conns:
                ensure_vector_types(c)
            try:
                first.execute(snapshots.BEGIN)
                if conns[1:]:
                    snapshot = first.execute(snapshots.EXPORT).fetchone()[0]
                for c in conns[1:]:
                    c.execute(snapshots.BEGIN)
                    c.execute(snapshots.adopt(snapshot))
                shares = snapshots.shares(len(step.statements), len(conns))

                def run_share(c: psycopg.Connection, share: list[int]) -> list[Any]:
                    read = step.read or (lambda _, rows: rows)
                    return [read(i, run_statement(c, step.statements[i])) for i in share]

                with ThreadPoolExecutor(len(conns)) as workers:
                    done = list(workers.map(run_share, conns, shares))
            finally:
                for c in conns:
                    with suppress(psycopg.Error):
                        c.execute(snapshots.END)
            return snapshots.in_order(shares, done, len(step.statements))

    def _checkout(self, role: str) -> tuple[psycopg.Connection, ConnectionPool, Any]:
        """A pooled connection checked alive (a round trip only when the server spoke on it while
        idle: ``client_pools.needs_check``), its pool, and how to give it back. A dead one (the
        server restarted) replaces the pool once."""
        for _ in range(2):
            pool = self._open_pool(role)
            try:
                pooled = pool.getconn()
            except PoolClosed:
                continue  # another thread found the server lost and replaced the pool
            except PoolTimeout as exc:
                raise self._lost(pool, role, exc) from exc
            try:
                if needs_check(pooled):
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

    def flush_shadow(self, timeout: float | None = 10.0) -> bool:
        """Wait until the requests handed to shadowing so far are shadowed (their decisions
        stored, their samples asked); False when ``timeout`` seconds passed first."""
        return self._shadows.wait_idle(timeout)

    def _shadow(self, items: tuple[Any, ...]) -> None:
        """Hand shadow items to the background thread (started when none runs)."""
        if items and self._shadows.add(items):
            with self._lock:
                if self._shadow_thread is None:
                    self._shadow_thread = ThreadPoolExecutor(1, "avengers-shadow")
                self._shadow_thread.submit(self._shadow_worker)

    def _shadow_worker(self) -> None:
        while True:
            self._shadows.wait_due()
            if not (batch := self._shadows.take()):
                return
            try:
                self._drive(self.shadow_flow(batch))
            except Exception:  # an observation failing never reaches a caller
                log.warning("shadow: a batch of %d request(s) failed", len(batch), exc_info=True)
            self._shadows.finished(len(batch))

    def close(self) -> None:
        """Close the pools (and the ChatClient this client made), once the shadow work handed
        over so far is done (at most 10 s). Idempotent."""
        self._shadows.wait_idle(10.0)
        with self._lock:
            shadow, self._shadow_thread = self._shadow_thread, None
        if shadow is not None:
            shadow.shutdown(wait=False, cancel_futures=True)
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

    # -- the driver: the steps of a flow, done -----------------------------------------------

    def _drive(self, flow: core.Flow[Any]) -> Any:
        """Run a flow (``client_core``) to its result, doing each step it yields."""
        value: Any = None
        error: BaseException | None = None
        while not isinstance(step := advance(flow, value, error), Done):
            value, error = None, None
            try:
                value = self._step(step)
            except AvengersError as exc:
                error = exc
        return step.value

    def _step(self, step: core.Step) -> Any:
        if isinstance(step, core.Run):
            with self._connection(step.conn, step.role) as c:
                return self._run(c, step)
        if isinstance(step, core.RunParts):
            return self._run_parts(step)
        if isinstance(step, core.Embed):
            return step.embedder.embed(list(step.texts))
        if isinstance(step, core.Sample):
            try:
                return step.call.ask(self.chat)
            except EndpointError as exc:
                return exc
        if isinstance(step, core.Gather):
            workers = max(1, min(step.limit, len(step.flows)))
            if workers == 1:
                return [self._drive(f) for f in step.flows]
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(self._drive, step.flows))
        if isinstance(step, core.Log):
            with self._connection(step.conn, "write") as c:
                if step.rows:
                    run_statement(c, route_log.statement(step.rows))
            self._shadow(step.shadow)
            return None
        if isinstance(step, core.LoadModel):
            core.load_embedder(step.embedder)
        return None  # Flush, Note: nothing to do here

    @staticmethod
    def _run(c: psycopg.Connection, step: core.Run) -> Any:
        if any(s.binary for s in step.statements):
            ensure_vector_types(c)
        if len(step.statements) == 1:
            return run_statement(c, step.statements[0])
        with c.transaction():
            found = [run_statement(c, s) for s in step.statements]
        return found[0]
