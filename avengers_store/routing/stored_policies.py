"""Routing policies stored under a name (``avengers.policies``) and the two roles one can hold:
``served`` (what clients and the gateway route with unless a call or key sets its own fields)
and ``shadow`` (what every decision is also computed under, off the response path).

A policy is stored as ``Policy.to_dict``'s JSON, so the type can grow; ``avengers.policy_from_json``
reads it in SQL. A policy naming a clustering version makes the profile and routing views cover
that version (``avengers.routed_clusterings``): storing, replacing or removing one refreshes them
in the same transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from avengers_store.errors import InputError, NotFound, StoreStateError
from avengers_store.routing.policy import Policy
from avengers_store.store.connections import connection
from avengers_store.store.driver_errors import translated
from avengers_store.store.queries import query

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

ROLES_SQL = query("shadow", "roles")


@dataclass(frozen=True)
class StoredPolicy:
    """A named policy, and the roles it holds (``served``, ``shadow``)."""

    name: str
    policy: Policy
    note: str | None
    created_at: datetime
    updated_at: datetime
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Roles:
    """What routing reads of the roles: the served policy (None: none stored, the client's own
    default applies) and the shadow policy with its sampling settings (None: not shadowing)."""

    served: Policy | None = None
    served_name: str | None = None
    shadow: Policy | None = None
    shadow_name: str | None = None
    sample_share: float = 0.0
    max_spend_per_day: float | None = None


def roles_from_rows(rows: list[tuple[Any, ...]]) -> Roles:
    """``Roles`` from ``ROLES_SQL`` rows."""
    found: dict[str, Any] = {}
    for role, name, policy, share, cap in rows:
        if role == "served":
            found.update(served=Policy.from_dict(policy), served_name=name)
        elif role == "shadow":
            found.update(
                shadow=Policy.from_dict(policy), shadow_name=name, sample_share=float(share),
                max_spend_per_day=cap,
            )  # fmt: skip
    return Roles(**found)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InputError(
            f"a policy name is 1-64 letters, digits, '.', '-' or '_' starting with a letter or "
            f"digit, got {name!r}",
            location="name",
        )
    return name


def create(
    name: str,
    policy: Policy,
    *,
    note: str | None = None,
    replace: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> StoredPolicy:
    """Store ``policy`` under ``name`` (``replace``: over one of that name, even the served one;
    otherwise an existing name is refused). A clustering it names must be ready or active."""
    check_name(name)
    with connection(url, conn=conn) as c, translated("policy"), c.transaction():
        if policy.clustering_id is not None:
            row = c.execute(
                "SELECT status FROM avengers.clusterings WHERE id = %s", (policy.clustering_id,)
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"clustering {policy.clustering_id} does not exist (see `avengers "
                    "clusterings list`)"
                )
            if row[0] not in ("ready", "active"):
                raise StoreStateError(
                    f"clustering {policy.clustering_id} is {row[0]}: a policy may name a ready "
                    "or active clustering"
                )
        sql = (
            "INSERT INTO avengers.policies (name, policy, note) VALUES (%s, %s, %s)"
            + (
                " ON CONFLICT (name) DO UPDATE SET policy = excluded.policy, "
                "note = coalesce(excluded.note, avengers.policies.note), updated_at = now()"
                if replace
                else " ON CONFLICT (name) DO NOTHING"
            )
            + " RETURNING name"
        )
        if c.execute(sql, (name, Jsonb(policy.to_dict()), note)).fetchone() is None:
            raise StoreStateError(
                f"a policy named {name!r} exists: choose another name or replace it"
            )
        _refresh_if_routed_changed(c)
        return _show(c, name)


def list_policies(
    url: str | None = None, *, conn: psycopg.Connection | None = None
) -> list[StoredPolicy]:
    """Every stored policy, by name."""
    with connection(url, conn=conn) as c:
        names = [r[0] for r in c.execute("SELECT name FROM avengers.policies ORDER BY name")]
        return [_show(c, n) for n in names]


def show(
    name: str, url: str | None = None, *, conn: psycopg.Connection | None = None
) -> StoredPolicy:
    """The stored policy ``name``."""
    with connection(url, conn=conn) as c:
        return _show(c, name)


def remove(name: str, url: str | None = None, *, conn: psycopg.Connection | None = None) -> None:
    """Remove a stored policy; the served or shadowed one is refused (promote another, or stop
    the shadow, first)."""
    with connection(url, conn=conn) as c, c.transaction():
        held = c.execute(
            "SELECT role FROM avengers.policy_roles WHERE name = %s ORDER BY role", (name,)
        ).fetchall()
        if held:
            raise StoreStateError(
                f"policy {name!r} is the {held[0][0]} one: "
                + ("promote another first" if held[0][0] == "served" else "stop the shadow first")
            )
        if (
            c.execute(
                "DELETE FROM avengers.policies WHERE name = %s RETURNING 1", (name,)
            ).fetchone()
            is None
        ):
            raise NotFound(f"no policy named {name!r} (see `avengers policies list`)")
        _refresh_if_routed_changed(c)


def promote(
    name: str | None = None,
    *,
    back: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> StoredPolicy:
    """Serve the stored policy ``name`` (``back``: the one served before the last promotion),
    in one transaction: every decision after the commit routes with it, none with a mix."""
    with connection(url, conn=conn) as c, c.transaction():
        # Serialises promotions: two at once would both read the same previous policy.
        c.execute("LOCK TABLE avengers.policy_roles IN SHARE ROW EXCLUSIVE MODE")
        current = c.execute(
            "SELECT name, previous FROM avengers.policy_roles WHERE role = 'served'"
        ).fetchone()
        if back:
            if current is None or current[1] is None:
                raise StoreStateError("no policy was served before this one: nothing to go back to")
            name = current[1]
        if name is None:
            raise InputError("name the policy to promote", location="name")
        _show(c, name)  # NotFound names it
        c.execute(
            """INSERT INTO avengers.policy_roles (role, name, previous) VALUES ('served', %s, NULL)
               ON CONFLICT (role) DO UPDATE SET name = excluded.name,
                 previous = avengers.policy_roles.name, since = now()
               WHERE avengers.policy_roles.name IS DISTINCT FROM excluded.name""",
            (name,),
        )
        return _show(c, name)


def roles(url: str | None = None, *, conn: psycopg.Connection | None = None) -> Roles:
    """The served and the shadow policy (``Roles``)."""
    with connection(url, conn=conn) as c:
        return roles_from_rows(c.execute(ROLES_SQL).fetchall())


def _show(c: psycopg.Connection, name: str) -> StoredPolicy:
    row = c.execute(
        """SELECT p.name, p.policy, p.note, p.created_at, p.updated_at,
                  ARRAY(SELECT r.role FROM avengers.policy_roles r WHERE r.name = p.name
                        ORDER BY r.role)
           FROM avengers.policies p WHERE p.name = %s""",
        (name,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no policy named {name!r} (see `avengers policies list`)")
    return StoredPolicy(row[0], Policy.from_dict(row[1]), row[2], row[3], row[4], tuple(row[5]))


def _refresh_if_routed_changed(c: psycopg.Connection) -> None:
    """Refresh the profile and routing views when the clusterings they cover changed (a
    policy naming another version was stored or removed)."""
    routed = [r[0] for r in c.execute("SELECT id FROM avengers.routed_clusterings ORDER BY id")]
    built = [r[0] for r in c.execute("SELECT clustering_id FROM avengers.routing_state ORDER BY 1")]
    if routed != built:
        c.execute("CALL avengers.refresh_profiles()")
