"""API keys of the gateway: created once and shown once, stored only as a sha256 hash, with
created / last-used / revoked times (``avengers.api_keys``). ``avengers keys`` is the CLI twin."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg

from avengers_store.arguments import check_name
from avengers_store.errors import InputError, NotFound
from avengers_store.store import connections

KEY_PREFIX = "avk-"
_SHOWN = 8  # characters of a key kept to tell keys apart (the prefix and 4 random ones)


@dataclass(frozen=True)
class ApiKey:
    """A key's record (never the key itself)."""

    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def live(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


_COLUMNS = "id, name, prefix, created_at, last_used_at, revoked_at"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(
    name: str, *, url: str | None = None, conn: psycopg.Connection | None = None
) -> tuple[ApiKey, str]:
    """A new key for ``name``: (its record, the key). The key is not stored and cannot be
    shown again."""
    name = name.strip()
    if not name:
        raise InputError("the key needs a name", location="name")
    check_name(name, "key", "name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with connections.connection(url, conn=conn) as c:
        try:
            with c.transaction():
                row = c.execute(
                    f"""INSERT INTO avengers.api_keys (name, key_hash, prefix)
                        VALUES (%s, %s, %s) RETURNING {_COLUMNS}""",
                    (name, key_hash(key), key[:_SHOWN]),
                ).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            raise InputError(
                f"a live key named {name!r} exists: revoke it first "
                f"(`avengers keys revoke {name}`) or choose another name",
                location="name",
            ) from exc
    return ApiKey(*row), key


def list_keys(
    *,
    include_revoked: bool = True,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> list[ApiKey]:
    where = "" if include_revoked else "WHERE revoked_at IS NULL"
    with connections.connection(url, conn=conn) as c:
        rows = c.execute(f"SELECT {_COLUMNS} FROM avengers.api_keys {where} ORDER BY id").fetchall()
    return [ApiKey(*r) for r in rows]


def revoke_key(
    name: str, *, url: str | None = None, conn: psycopg.Connection | None = None
) -> ApiKey:
    """Revoke the live key called ``name``; requests with it get 401 from then on."""
    with connections.connection(url, conn=conn) as c:
        row = c.execute(
            f"""UPDATE avengers.api_keys SET revoked_at = now()
                WHERE name = %s AND revoked_at IS NULL RETURNING {_COLUMNS}""",
            (name,),
        ).fetchone()
    if row is None:
        raise NotFound(f"no live key named {name!r} (see `avengers keys list`)")
    return ApiKey(*row)


# One round trip: the live key with this hash, and its last-used time refreshed when older than
# a minute (so a busy key does not write a row version per request).
VERIFY_SQL = """
WITH k AS (
  SELECT id, last_used_at FROM avengers.api_keys WHERE key_hash = %s AND revoked_at IS NULL
), touched AS (
  UPDATE avengers.api_keys a SET last_used_at = now() FROM k
  WHERE a.id = k.id AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
)
SELECT id FROM k
"""


async def verify(conn: psycopg.AsyncConnection, key: str) -> int | None:
    """The id of the live key ``key``, or None."""
    if not key.startswith(KEY_PREFIX):
        return None
    cursor = await conn.execute(VERIFY_SQL, (key_hash(key),))
    row = await cursor.fetchone()
    return row[0] if row else None
