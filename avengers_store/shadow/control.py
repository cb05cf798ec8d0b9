"""``avengers shadow start | stop | status``: which stored policy every decision is also
computed under, and how much of its disagreement is sampled."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import psycopg

from avengers_store.errors import InputError, NotFound
from avengers_store.store.connections import connection
from avengers_store.store.queries import query


@dataclass(frozen=True)
class ShadowStatus:
    """The shadow policy (None: not shadowing), since when, its sampling settings, and what it
    has stored: decisions, samples and today's sampled spend."""

    name: str | None
    since: datetime | None
    sample_share: float
    max_spend_per_day: float | None
    decisions: int
    samples: int
    spent_today: float


def start(
    name: str,
    *,
    sample_share: float = 0.0,
    max_spend_per_day: float | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> ShadowStatus:
    """Shadow the stored policy ``name`` from now on (replacing another shadow): every decision
    a client or the gateway makes is also computed under it, and ``sample_share`` of the
    requests where the two disagree are asked of its top model, at most ``max_spend_per_day``
    a UTC day (None: no cap)."""
    if not 0.0 <= sample_share <= 1.0:
        raise InputError(
            f"sample_share must be in [0, 1], got {sample_share}", location="sample_share"
        )
    if max_spend_per_day is not None and not (
        max_spend_per_day >= 0 and math.isfinite(max_spend_per_day)
    ):
        raise InputError(
            f"max_spend_per_day must be a finite number >= 0, got {max_spend_per_day}",
            location="max_spend_per_day",
        )
    with connection(url, conn=conn) as c, c.transaction():
        if c.execute("SELECT 1 FROM avengers.policies WHERE name = %s", (name,)).fetchone() is None:
            raise NotFound(f"no policy named {name!r} (see `avengers policies list`)")
        c.execute(
            """INSERT INTO avengers.policy_roles (role, name, sample_share, max_spend_per_day)
               VALUES ('shadow', %s, %s, %s)
               ON CONFLICT (role) DO UPDATE SET name = excluded.name,
                 sample_share = excluded.sample_share,
                 max_spend_per_day = excluded.max_spend_per_day, since = now()""",
            (name, sample_share, max_spend_per_day),
        )
        return _status(c)


def stop(url: str | None = None, *, conn: psycopg.Connection | None = None) -> ShadowStatus:
    """Stop shadowing (what was stored stays)."""
    with connection(url, conn=conn) as c, c.transaction():
        c.execute("DELETE FROM avengers.policy_roles WHERE role = 'shadow'")
        return _status(c)


def status(url: str | None = None, *, conn: psycopg.Connection | None = None) -> ShadowStatus:
    """What is shadowed now, and what shadowing has stored."""
    with connection(url, conn=conn) as c:
        return _status(c)


def _status(c: psycopg.Connection) -> ShadowStatus:
    role = c.execute(
        "SELECT name, since, sample_share, max_spend_per_day FROM avengers.policy_roles "
        "WHERE role = 'shadow'"
    ).fetchone()
    decisions, samples, spent = c.execute(
        query("shadow", "status_counts"),
        {"n": role[0] if role else None},
    ).fetchone()
    if role is None:
        return ShadowStatus(None, None, 0.0, None, 0, 0, float(spent))
    return ShadowStatus(role[0], role[1], float(role[2]), role[3], decisions, samples, float(spent))
