"""API keys of the gateway: created once and shown once, stored only as a sha256 hash, with
created / last-used / revoked times and a policy (``avengers.api_keys``). ``avengers keys`` is
the CLI twin.

A key's policy (``KeyPolicy``) is enforced by the gateway before any model is called: a spend
limit per UTC day and per calendar month (what its logged requests cost at the models' prices,
``avengers.key_spend``), the models it may use, a samples ceiling, requests per minute, and
default routing options its requests route with unless they set their own. One statement per
request admits it (``avengers.admit_key``), so a changed policy applies to the next request.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from avengers_store.arguments import check_name
from avengers_store.errors import InputError, NotFound
from avengers_store.gateway.protocol import PolicyOptions
from avengers_store.store import connections
from avengers_store.store.queries import query

KEY_PREFIX = "avk-"
_SHOWN = 8  # characters of a key kept to tell keys apart (the prefix and 4 random ones)
PERIODS = ("day", "month")
# The routing options a key may default (the request fields of ``PolicyOptions`` but the model
# list, which a key sets as ``KeyPolicy.models``).
ROUTING_FIELDS = tuple(name for name in PolicyOptions.model_fields if name != "models")


@dataclass(frozen=True)
class KeyPolicy:
    """What a key may do (None: no limit). ``spend_limit_day`` / ``spend_limit_month``: most it
    may spend per UTC day / calendar month, in the models' price currency; ``models``: the pool
    models it may use (by name, or routed among by ``avengers``); ``max_samples``: most samples
    a request may draw per model; ``requests_per_minute``; ``routing``: default routing options
    (``ROUTING_FIELDS``: ``tradeoff``, ``max_cost``, ``method``, ...)."""

    spend_limit_day: float | None = None
    spend_limit_month: float | None = None
    models: tuple[str, ...] | None = None
    max_samples: int | None = None
    requests_per_minute: int | None = None
    routing: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("spend_limit_day", "spend_limit_month"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value >= 0):
                raise InputError(f"{name} must be a number >= 0, got {value!r}", location=name)
            if value is not None and not math.isfinite(value):
                raise InputError(f"{name} must be finite, got {value!r}", location=name)
        for name in ("max_samples", "requests_per_minute"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"{name} must be a whole number, got {value!r}", location=name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be >= 1, got {value}", location=name)
        if self.models is not None:
            if isinstance(self.models, str) or not self.models:
                raise InputError("models: give a non-empty list of model names", location="models")
            object.__setattr__(self, "models", tuple(dict.fromkeys(str(m) for m in self.models)))
        object.__setattr__(self, "routing", check_routing(self.routing))

    def to_dict(self) -> dict[str, Any]:
        return {
            "spend_limit_day": self.spend_limit_day,
            "spend_limit_month": self.spend_limit_month,
            "models": list(self.models) if self.models is not None else None,
            "max_samples": self.max_samples,
            "requests_per_minute": self.requests_per_minute,
            "routing": dict(self.routing),
        }

    def changed(self, changes: Mapping[str, Any]) -> KeyPolicy:
        """This policy with ``changes``: a field of the policy, or a routing option by its name
        (``tradeoff``, ...), set to its value or removed with None."""
        own = {f.name for f in fields(self)} - {"routing"}
        unknown = sorted(set(changes) - own - set(ROUTING_FIELDS))
        if unknown:
            raise InputError(
                f"unknown key policy field {unknown[0]!r}; expected one of "
                f"{', '.join(sorted(own | set(ROUTING_FIELDS)))}",
                location=unknown[0],
            )
        routing = dict(self.routing)
        for name in ROUTING_FIELDS:
            if name in changes:
                if changes[name] is None:
                    routing.pop(name, None)
                else:
                    routing[name] = changes[name]
        return replace(self, **{k: v for k, v in changes.items() if k in own}, routing=routing)


def check_routing(routing: Mapping[str, Any] | None) -> dict[str, Any]:
    """Default routing options, checked as a request's would be (InputError naming the field)."""
    routing = dict(routing or {})
    unknown = sorted(set(routing) - set(ROUTING_FIELDS))
    if unknown:
        raise InputError(
            f"{unknown[0]!r} is not a routing option a key can default; expected one of "
            f"{', '.join(ROUTING_FIELDS)}",
            location=unknown[0],
        )
    try:
        PolicyOptions.model_validate(routing)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "routing"
        raise InputError(f"{where}: {first.get('msg')}", location=where) from None
    return {k: v for k, v in routing.items() if v is not None}


@dataclass(frozen=True)
class ApiKey:
    """A key's record (never the key itself)."""

    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    policy: KeyPolicy = field(default_factory=KeyPolicy)
    console_only: bool = False

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
            "console_only": self.console_only,
            **self.policy.to_dict(),
        }


_COLUMNS = (
    "id, name, prefix, created_at, last_used_at, revoked_at, spend_limit_day, "
    "spend_limit_month, models, max_samples, requests_per_minute, routing, console_only"
)


def _record(row: Sequence[Any]) -> ApiKey:
    day, month, models, samples, rpm, routing, console_only = row[6:]
    policy = KeyPolicy(
        day, month, tuple(models) if models is not None else None, samples, rpm, routing or {}
    )
    return ApiKey(*row[:6], policy=policy, console_only=console_only)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check_models(c: psycopg.Connection, policy: KeyPolicy) -> None:
    """Models a policy names must be in the pool (a typo would lock the key out silently)."""
    if policy.models is None:
        return
    known = {
        r[0]
        for r in c.execute(
            "SELECT name FROM avengers.models WHERE name = ANY(%s)", (list(policy.models),)
        ).fetchall()
    }
    missing = [m for m in policy.models if m not in known]
    if missing:
        raise InputError(
            f"models: no model named {missing[0]!r} in the pool (see `avengers models list`)",
            location="models",
        )


def _policy_values(policy: KeyPolicy) -> tuple[Any, ...]:
    return (
        policy.spend_limit_day,
        policy.spend_limit_month,
        list(policy.models) if policy.models is not None else None,
        policy.max_samples,
        policy.requests_per_minute,
        Jsonb(dict(policy.routing)),
    )


def create_key(
    name: str,
    policy: KeyPolicy | None = None,
    *,
    console_only: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> tuple[ApiKey, str]:
    """A new key for ``name`` with ``policy`` (default: no limits): (its record, the key). The
    key is not stored and cannot be shown again. A ``console_only`` key opens the console's
    pages and nothing else."""
    name = name.strip()
    if not name:
        raise InputError("the key needs a name", location="name")
    check_name(name, "key", "name")
    policy = policy or KeyPolicy()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with connections.connection(url, conn=conn) as c:
        try:
            with c.transaction():
                _check_models(c, policy)
                row = c.execute(
                    f"""INSERT INTO avengers.api_keys
                          (name, key_hash, prefix, spend_limit_day, spend_limit_month, models,
                           max_samples, requests_per_minute, routing, console_only)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
                    (name, key_hash(key), key[:_SHOWN], *_policy_values(policy), console_only),
                ).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            raise InputError(
                f"a live key named {name!r} exists: revoke it first "
                f"(`avengers keys revoke {name}`) or choose another name",
                location="name",
            ) from exc
    return _record(row), key


def set_policy(
    name: str,
    changes: Mapping[str, Any],
    *,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> ApiKey:
    """Change the live key ``name``'s policy (``KeyPolicy.changed``: each field set, or removed
    with None); the gateway applies it from the key's next request, without a restart."""
    with connections.connection(url, conn=conn) as c, c.transaction():
        row = c.execute(
            f"""SELECT {_COLUMNS} FROM avengers.api_keys
                WHERE name = %s AND revoked_at IS NULL FOR UPDATE""",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no live key named {name!r} (see `avengers keys list`)")
        policy = _record(row).policy.changed(changes)
        _check_models(c, policy)
        row = c.execute(
            f"""UPDATE avengers.api_keys
                SET spend_limit_day = %s, spend_limit_month = %s, models = %s, max_samples = %s,
                    requests_per_minute = %s, routing = %s
                WHERE id = %s RETURNING {_COLUMNS}""",
            (*_policy_values(policy), row[0]),
        ).fetchone()
    return _record(row)


def list_keys(
    *,
    include_revoked: bool = True,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> list[ApiKey]:
    where = "" if include_revoked else "WHERE revoked_at IS NULL"
    with connections.connection(url, conn=conn) as c:
        rows = c.execute(f"SELECT {_COLUMNS} FROM avengers.api_keys {where} ORDER BY id").fetchall()
    return [_record(r) for r in rows]


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
    return _record(row)


# -- spend -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyUsage:
    """What a key used in one period (``avengers.key_spend``)."""

    key: str
    period: str
    period_start: date
    requests: int
    tokens_in: int
    tokens_out: int
    cost: float
    spend_limit: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "period": self.period,
            "period_start": self.period_start.isoformat(),
            "requests": self.requests,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost": self.cost,
            "spend_limit": self.spend_limit,
        }


USAGE_SQL = query("gateway", "key_usage")


def key_usage(
    name: str | None = None,
    period: str = "month",
    *,
    since: date | None = None,
    include_revoked: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> list[KeyUsage]:
    """What keys (or the key ``name``) spent per ``period`` (``day`` or ``month``, UTC), latest
    first, from ``since`` on; revoked keys only with ``include_revoked``."""
    if period not in PERIODS:
        raise InputError(f"period must be day or month, got {period!r}", location="period")
    with connections.connection(url, conn=conn) as c:
        if (
            name is not None
            and not c.execute("SELECT 1 FROM avengers.api_keys WHERE name = %s", (name,)).fetchone()
        ):
            raise NotFound(f"no key named {name!r} (see `avengers keys list`)")
        rows = c.execute(
            USAGE_SQL,
            {"period": period, "name": name, "since": since, "revoked": include_revoked},
        ).fetchall()
    return [KeyUsage(*r) for r in rows]


# -- admission (the gateway) -------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """A live key presented with a request, and whether its policy admits it now:
    ``refused`` is None, ``day`` or ``month`` (its spend in that period, ``spent``, reached its
    limit, ``quota``) or ``rate`` (its requests this minute reached ``quota``);
    ``retry_after``: seconds until the period ends. ``console_only``: the key may read the
    console and nothing else (never counted against its limits)."""

    key_id: int
    name: str
    policy: KeyPolicy
    refused: str | None = None
    spent: float | None = None
    quota: float | None = None
    retry_after: int | None = None
    console_only: bool = False


ADMIT_SQL = "SELECT * FROM avengers.admit_key(%s, %s)"


async def admit(
    conn: psycopg.AsyncConnection, key: str, *, calls_models: bool = True
) -> Admission | None:
    """The admission of a request presenting ``key`` (None: no live key is ``key``); a request
    that ``calls_models`` is checked against the key's limits and counted in its minute."""
    if not key.startswith(KEY_PREFIX):
        return None
    cursor = await conn.execute(ADMIT_SQL, (key_hash(key), calls_models))
    row = await cursor.fetchone()
    if row is None:
        return None
    key_id, name, models, max_samples, routing, refused, spent, quota, retry_after, console = row
    policy = KeyPolicy(
        models=tuple(models) if models is not None else None,
        max_samples=max_samples,
        routing=routing or {},
    )
    return Admission(key_id, name, policy, refused, spent, quota, retry_after, console)
