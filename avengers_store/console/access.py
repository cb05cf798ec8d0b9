"""Who may read the console: with auth on, a live API key (any key, or one made with
``--console-only``), sent as ``Authorization: Bearer`` or kept in an HttpOnly cookie by the
login form; with ``--no-auth`` (loopback binds only) everyone on the machine.

Looking a key up here only reads it: the console never counts against a key's limits."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import psycopg

from avengers_store.gateway.keys import KEY_PREFIX, key_hash

COOKIE = "avengers_console"
# A browser session keeps the key at most this long (seconds) before the form asks again.
COOKIE_MAX_AGE = 8 * 3600

LOOKUP_SQL = """
SELECT name, console_only FROM avengers.api_keys WHERE key_hash = %s AND revoked_at IS NULL
"""


@dataclass(frozen=True)
class ConsoleState:
    """What the console's pages need: a way to a read connection, whether keys are required,
    and the gateway's defaults to show (None: a console without a gateway)."""

    connection: Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection]]
    auth: bool
    gateway_defaults: dict[str, Any] | None = None


def presented_key(headers: Any, cookies: Any) -> str | None:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    return cookies.get(COOKIE) or None


async def reader(conn: psycopg.AsyncConnection, key: str | None) -> str | None:
    """The name of the live key ``key`` (None: no such key)."""
    if not key or not key.startswith(KEY_PREFIX):
        return None
    cursor = await conn.execute(LOOKUP_SQL, (key_hash(key),))
    row = await cursor.fetchone()
    return row[0] if row else None
