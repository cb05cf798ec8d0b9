"""The model pool: adding, listing, (de)activating and removing models."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

from avengers_store.arguments import as_list
from avengers_store.calibration.profiles import refresh_profiles
from avengers_store.errors import InputError, NotFound
from avengers_store.store import connections

COLUMNS = (
    "id, name, endpoint, served_name, api_key_env, cost_in_per_m, cost_out_per_m, active, added_at"
)
SHOWN_NAMES = 10


@dataclass(frozen=True)
class Model:
    id: int
    name: str
    endpoint: str | None
    served_name: str | None
    api_key_env: str | None
    cost_in_per_m: float | None
    cost_out_per_m: float | None
    active: bool
    added_at: dt.datetime


def _check_cost(value: float | None, option: str) -> None:
    if value is not None and not value >= 0:
        raise InputError(f"must be a number >= 0, got {value!r}", location=option)


def add_model(
    name: str,
    endpoint: str | None = None,
    served_name: str | None = None,
    api_key_env: str | None = None,
    cost_in: float | None = None,
    cost_out: float | None = None,
    *,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> Model:
    """Add a model to the pool (active). It routes as soon as it has outcomes: no re-clustering."""
    if not name or not name.strip():
        raise InputError("a model name must not be blank", location="name")
    _check_cost(cost_in, "cost_in")
    _check_cost(cost_out, "cost_out")
    with connections.connection(url, conn=conn) as c:
        cur = c.cursor(row_factory=class_row(Model))
        model = cur.execute(
            f"""INSERT INTO avengers.models
                  (name, endpoint, served_name, api_key_env, cost_in_per_m, cost_out_per_m)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (name) DO NOTHING
                RETURNING {COLUMNS}""",
            (name, endpoint, served_name, api_key_env, cost_in, cost_out),
        ).fetchone()
        if model is None:
            raise InputError(
                f"model {name!r} already exists: `avengers models list` shows it; "
                f"`avengers models remove {name}` first to replace it"
            )
        return model


def get_model(
    name: str, *, url: str | None = None, conn: psycopg.Connection | None = None
) -> Model:
    with connections.connection(url, conn=conn) as c:
        cur = c.cursor(row_factory=class_row(Model))
        model = cur.execute(
            f"SELECT {COLUMNS} FROM avengers.models WHERE name = %s", (name,)
        ).fetchone()
        if model is None:
            raise NotFound(f"no model {name!r}; {_known(c)}")
        return model


def list_models(
    *, active_only: bool = False, url: str | None = None, conn: psycopg.Connection | None = None
) -> list[Model]:
    with connections.connection(url, conn=conn) as c:
        cur = c.cursor(row_factory=class_row(Model))
        where = "WHERE active" if active_only else ""
        return cur.execute(
            f"SELECT {COLUMNS} FROM avengers.models {where} ORDER BY name"
        ).fetchall()


def set_active(
    names: Iterable[str],
    active: bool,
    *,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> list[Model]:
    """Mark models active (routed to) or inactive, and refresh the served profiles, which carry
    the flag. Returns the changed models."""
    names = list(dict.fromkeys(as_list(names, "names", str)))
    with connections.connection(url, conn=conn) as c:
        model_ids(c, names)  # every name must exist
        cur = c.cursor(row_factory=class_row(Model))
        changed = cur.execute(
            f"""UPDATE avengers.models SET active = %s
                WHERE name = ANY(%s) RETURNING {COLUMNS}""",
            (active, names),
        ).fetchall()
        refresh_profiles(c)
        return sorted(changed, key=lambda m: m.name)


def remove_model(
    name: str, *, url: str | None = None, conn: psycopg.Connection | None = None
) -> int:
    """Delete a model and its outcomes; returns the number of outcomes deleted."""
    with connections.connection(url, conn=conn) as c:
        model_id = model_ids(c, [name])[name]
        deleted = c.execute(
            "SELECT count(*) FROM avengers.outcomes WHERE model_id = %s", (model_id,)
        ).fetchone()[0]
        c.execute("DELETE FROM avengers.models WHERE id = %s", (model_id,))
        refresh_profiles(c)
        return deleted


def model_ids(
    conn: psycopg.Connection, names: Sequence[str], *, create: bool = False
) -> dict[str, int]:
    """Ids of the named models. Unknown names are a ``NotFound`` listing the first few, unless
    ``create`` adds them (no endpoint: outcomes only until ``avengers models add`` gives one)."""
    names = list(dict.fromkeys(names))
    rows = conn.execute(
        "SELECT name, id FROM avengers.models WHERE name = ANY(%s)", (names,)
    ).fetchall()
    found = dict(rows)
    missing = [n for n in names if n not in found]
    if missing and create:
        created = conn.execute(
            """INSERT INTO avengers.models (name)
               SELECT unnest(%s::text[]) RETURNING name, id""",
            (missing,),
        ).fetchall()
        found.update(dict(created))
    elif missing:
        shown = ", ".join(repr(n) for n in missing[:SHOWN_NAMES])
        more = f" and {len(missing) - SHOWN_NAMES} more" if len(missing) > SHOWN_NAMES else ""
        raise NotFound(
            f"{len(missing)} unknown model(s): {shown}{more}. Add them with `avengers models add "
            f"NAME` or pass --create-models; {_known(conn)}"
        )
    return found


def _known(conn: psycopg.Connection) -> str:
    names = [r[0] for r in conn.execute("SELECT name FROM avengers.models ORDER BY name")]
    if not names:
        return "the pool is empty"
    shown = ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")
    return f"known models: {shown}"
