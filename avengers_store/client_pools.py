"""What the sync and async clients do alike with their connection pools, without I/O: the
connection options, the pools by role, which pool a call goes to, and what losing a server is
reported as. Each client opens, probes, checks out and closes its own kind of pool; the rules
live here once, so the two cannot drift.

A read goes to the replica (``read_url``) while it is usable, else to the primary; with no
replica, reads share the primary's pool. A pool whose server was lost is forgotten, so the next
call makes a new one, which probes the server first.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from avengers_store import client_core as core
from avengers_store.errors import AvengersError, ConnectionFailed, InputError, StoreUnavailable
from avengers_store.shadow.batches import ShadowBatches
from avengers_store.store import availability, config, connections


def needs_check(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    """Whether a pooled connection must be checked alive with a round trip before it is used:
    only when the server has spoken on it while it sat idle. A server speaks unasked only to say
    goodbye (a shutdown's FATAL, a closed socket) or to deliver a notification, and a poll of the
    socket sees that without a round trip; checking every checkout cost one per call."""
    if conn.closed or conn.broken:
        return True
    # poll, not select: select refuses descriptors above 1,024, which a busy gateway reaches.
    watch = select.poll()
    try:
        watch.register(conn.pgconn.socket, select.POLLIN)
        return bool(watch.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


# Set on every pooled connection that keeps prepared statements. Every statement these pools
# prepare is a router's, repeated with other values; under ``auto`` one whose policy fields are
# bound (method paper's neighbours, temperature, shrinkage) was planned anew on every call: its
# generic plan's estimate for an unknown LIMIT is a tenth of the centroids, so the plan cache kept
# choosing custom plans, 3 ms of planning at k = 4,096 (a route 4.8 ms against 2.0 generic).
GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"


# How long a batch's part waits for a pooled connection of its own before it takes its turn
# on one already held: long enough for the pool to open one, short against a part's work.
SPARE_WAIT_S = 0.1
# Connections of a pool a batch leaves to the client's other callers.
RESERVED = 1


def spare_room(pool: Any, wanted: int) -> int:
    """How many more connections a batch may take from ``pool`` (at most ``wanted``): those idle
    and those it may still open, but one, so that a route asked meanwhile by another caller of
    the client finds a connection instead of waiting out the batch."""
    stats = pool.get_stats()
    room = stats.get("pool_available", 0) + stats["pool_max"] - stats["pool_size"] - RESERVED
    return max(0, min(wanted, room))


class PooledClient(core.ClientCore):
    """``ClientCore`` with the options and state of a client's connection pools: ``url`` (the
    primary, default: the configured database), ``read_url`` (a replica, default:
    ``AVENGERS_READ_DATABASE_URL``), ``pool_size`` (connections per pool),
    ``prepared_statements``, and ``chat`` (the caller's chat client; None: one made and closed
    by the client). ``options`` are ``ClientCore``'s."""

    def __init__(
        self,
        url: str | None,
        *,
        read_url: str | None,
        pool_size: int,
        prepared_statements: bool,
        chat: Any,
        **options: Any,
    ) -> None:
        if pool_size < 1:
            raise InputError(f"pool_size must be >= 1, got {pool_size}", location="pool_size")
        super().__init__(**options)
        self.url = url
        self.read_url = read_url if read_url is not None else config.read_database_url()
        self.pool_size = pool_size
        # Two parts per connection a batch may take (all but RESERVED): a part's decisions are
        # built while the server runs the connection's next part (10k vectors at k = 64:
        # 1.11-1.13x four parts on four connections).
        lendable = pool_size - RESERVED
        self.batch_parts = 2 * lendable if lendable > 1 else 1
        self.prepared_statements = prepared_statements
        self._chat = chat
        self._own_chat = chat is None
        self._pools: dict[str, Any] = {}
        self._replica = availability.ReplicaState()
        self._closed = False
        self._shadows = ShadowBatches()

    def _forget(self, pool: Any) -> None:  # pragma: no cover - each client defines it
        raise NotImplementedError

    def _pool_options(self, target: str, name: str) -> dict[str, Any]:
        """The options of a pool for ``target`` (its name: ``name`` and the redacted URL),
        opened by the caller."""
        kwargs: dict[str, Any] = {"autocommit": True}
        if not self.prepared_statements:
            kwargs["prepare_threshold"] = None  # a transaction-mode pooler cannot keep them
        return {
            "min_size": 1,
            "max_size": self.pool_size,
            "kwargs": kwargs,
            "open": False,
            "name": f"{name}-{connections.redact(target)}",
            "timeout": availability.CHECKOUT_TIMEOUT_S,
        }

    def _known_pool(self, role: str) -> Any:
        """The pool open for ``role`` (None: one must be made). Raises once closed."""
        if self._closed:
            raise AvengersError(f"this {type(self).__name__} is closed: make a new one")
        pool = self._pools.get(role) or self._pools.get(self._pool_role(role))
        if pool is not None:
            self._pools[role] = pool
        return pool

    def _keep(self, role: str, pool: Any) -> Any:
        """``pool``, made for ``role``, kept for every role it serves."""
        self._pools[self._pool_role(role)] = self._pools[role] = pool
        return pool

    def _pool_role(self, role: str) -> str:
        """The pool that serves ``role``: reads share the primary's when there is no replica."""
        return "read" if role == "read" and self.read_url is not None else "write"

    def _routed_role(self, role: str) -> str:
        """``role``, or ``write`` for a read while the replica is down."""
        if role == "read" and self.read_url is not None and not self._replica.usable():
            return "write"
        return role

    def _falls_back(self, role: str) -> bool:
        """Whether a call of ``role`` that found its server unavailable goes to the primary
        instead (a read from a replica); the replica is then marked down for a moment."""
        if role != "read" or self.read_url is None:
            return False
        self._replica.failed()
        return True

    def _drop(self, pool: Any) -> None:
        """Stop handing out ``pool``, under every role it serves."""
        for role in [r for r, p in self._pools.items() if p is pool]:
            del self._pools[role]

    def _lost(self, pool: Any, role: str, exc: BaseException) -> StoreUnavailable:
        """``pool``'s server was lost during a call of ``role``: forget the pool (and the
        replica for a moment) and say what is unavailable."""
        self._forget(pool)
        if role == "read" and self.read_url is not None:
            self._replica.failed()
        return self._unavailable(role, exc)

    @contextmanager
    def _watching(self, pool: Any, role: str, conn: Any) -> Iterator[None]:
        """Run a call on ``conn`` (of ``pool``, for ``role``): losing its server raises
        StoreUnavailable, and the pool is forgotten."""
        try:
            yield
        except (psycopg.OperationalError, ConnectionFailed) as exc:
            if not availability.is_lost(exc, conn):
                raise
            raise self._lost(pool, role, exc) from exc

    def _unavailable(self, role: str, exc: BaseException) -> StoreUnavailable:
        if role == "read" and self.read_url is not None:
            return availability.unavailable(self.read_url, exc, role="replica")
        return availability.unavailable(self.url, exc)
