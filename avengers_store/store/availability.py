"""Losing the store's database while in use: which errors mean it, and what to tell the user.

The clients' pools use these: a checked-out connection is checked (one empty round trip) and a
dead one makes the pool be replaced; an error that means the server is gone becomes
``StoreUnavailable`` saying how to start or reach the store; and a read replica that is down is
left for a moment (``ReplicaState``) while reads go to the primary.
"""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg_pool import PoolTimeout

from avengers_store.errors import ConnectionFailed, StoreUnavailable
from avengers_store.store import config, connections

# How long a checkout may wait for a free connection before the server is probed.
CHECKOUT_TIMEOUT_S = 5.0
# How long a read replica found down is left before it is tried again.
REPLICA_RETRY_S = 1.0
# SQLSTATEs of a server going away: admin_shutdown, crash_shutdown, cannot_connect_now.
_SHUTDOWN = frozenset({"57P01", "57P02", "57P03"})


def is_lost(exc: BaseException, conn: psycopg.Connection | psycopg.AsyncConnection | None) -> bool:
    """Whether ``exc`` (raised using ``conn``) means the connection to the server is gone."""
    if isinstance(exc, StoreUnavailable | PoolTimeout):
        return True
    if isinstance(exc, ConnectionFailed):
        return True
    if conn is not None and (conn.broken or conn.closed):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _SHUTDOWN
    return False


def unavailable(url: str | None, exc: BaseException, *, role: str = "primary") -> StoreUnavailable:
    """The StoreUnavailable for ``exc`` on the store at ``url`` (None: the embedded server)."""
    if isinstance(exc, StoreUnavailable) and url is None and config.database_url() is None:
        return StoreUnavailable(str(exc))  # the embedded server's own word (stopped, starting)
    reason = _reason(exc)
    if role == "replica":
        where = (
            f"the read replica {connections.redact(url or '')} is unavailable ({reason}). "
            f"Check that it is running, or unset {config.REPLICA_URL_ENV} to read from the primary."
        )
    elif url is None and config.database_url() is None:
        where = (
            f"the embedded database server is unavailable ({reason}). The next call starts it "
            "again (unless `avengers db stop` stopped it: then `avengers db start`)."
        )
    else:
        target = url if url is not None else config.database_url() or ""
        where = (
            f"the store at {connections.redact(target)} is unavailable ({reason}). Check that the "
            f"server is running and reachable and that {config.DATABASE_URL_ENV} names it; the "
            "client reconnects by itself once it is back."
        )
    return StoreUnavailable(where)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PoolTimeout):
        return f"no connection could be had within {CHECKOUT_TIMEOUT_S:g} s"
    if isinstance(exc, ConnectionFailed):
        text = str(exc)
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = lines[0] if lines else ""
    # Server messages never hold the password, but a connection string in them might.
    text = text.split(". Check that", 1)[0]
    return text or type(exc).__name__


class ReplicaState:
    """Whether the read replica is worth trying now: after a failure it is left alone for
    ``REPLICA_RETRY_S`` seconds (reads go to the primary), then tried again."""

    def __init__(self) -> None:
        self._down_until = 0.0
        self._lock = threading.Lock()

    def usable(self) -> bool:
        with self._lock:
            return time.monotonic() >= self._down_until

    def failed(self) -> None:
        with self._lock:
            self._down_until = time.monotonic() + REPLICA_RETRY_S
