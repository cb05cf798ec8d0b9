"""The model pool: adding, changing, listing, (de)activating and removing models.

An endpoint is checked before it is stored: an ``http`` or ``https`` base URL with a host, and no
credentials in it (a key goes in an environment variable named by ``api_key_env``; the store
keeps only that name).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from avengers_store.arguments import as_list, check_name
from avengers_store.errors import InputError, NotFound
from avengers_store.store import connections
from avengers_store.store.refresh import refresh_profiles

COLUMNS = (
    "id, name, endpoint, served_name, api_key_env, cost_in_per_m, cost_out_per_m, active, added_at"
)
SHOWN_NAMES = 10
ENDPOINT_SCHEMES = ("http", "https")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Fields ``set_model`` can clear (set to NULL), by library parameter name.
CLEARABLE = ("endpoint", "served_name", "api_key_env", "cost_in", "cost_out")
_COLUMN = {
    "endpoint": "endpoint",
    "served_name": "served_name",
    "api_key_env": "api_key_env",
    "cost_in": "cost_in_per_m",
    "cost_out": "cost_out_per_m",
}


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


def check_endpoint(endpoint: str, parameter: str = "endpoint") -> str:
    """``endpoint`` as it is stored: an http(s) base URL with a host, without credentials.
    Anything else is an ``InputError`` naming ``parameter``; a URL with credentials is never
    repeated in the message."""
    value = endpoint.strip()
    if not value:
        raise InputError(
            "an endpoint must not be empty: give the base URL of an OpenAI-compatible API, "
            "e.g. http://vllm:8000/v1 (to remove one, clear the field instead)",
            location=parameter,
        )
    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise InputError(
            "credentials in the URL (user:password@) are never stored: put the API key in an "
            "environment variable and name it with `api_key_env`",
            location=parameter,
        )
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise InputError(f"{value!r} contains spaces or control characters", location=parameter)
    if parts.scheme.lower() not in ENDPOINT_SCHEMES:
        raise InputError(
            f"{value!r} is not an http or https URL: give the base URL of an OpenAI-compatible "
            "API, e.g. http://vllm:8000/v1",
            location=parameter,
        )
    if not parts.hostname:
        raise InputError(f"{value!r} has no host, e.g. http://vllm:8000/v1", location=parameter)
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        raise InputError(f"{value!r} has an invalid port", location=parameter) from None
    if parts.query or parts.fragment:
        raise InputError(
            f"{value!r}: a base URL takes no ?query or #fragment (requests go to "
            "<base URL>/chat/completions)",
            location=parameter,
        )
    return value


def check_api_key_env(name: str, parameter: str = "api_key_env") -> str:
    """An environment variable name. The value is not repeated in the error: a key pasted here
    by mistake must not end up in a terminal log."""
    if not ENV_NAME.fullmatch(name):
        raise InputError(
            "expected the NAME of an environment variable that holds the API key (letters, "
            "digits and _, e.g. VLLM_API_KEY), not the key itself",
            location=parameter,
        )
    return name


def _checked_fields(
    endpoint: str | None,
    served_name: str | None,
    api_key_env: str | None,
    cost_in: float | None,
    cost_out: float | None,
) -> dict[str, Any]:
    """The pool fields a caller gave, checked and as they are stored, by library parameter name
    (None: not given). A blank served name is refused: requests would name no model."""
    if endpoint is not None:
        endpoint = check_endpoint(endpoint)
    if api_key_env is not None:
        api_key_env = check_api_key_env(api_key_env)
    if served_name is not None and not served_name.strip():
        raise InputError("a served name must not be blank", location="served_name")
    _check_cost(cost_in, "cost_in")
    _check_cost(cost_out, "cost_out")
    return {
        "endpoint": endpoint,
        "served_name": served_name,
        "api_key_env": api_key_env,
        "cost_in": cost_in,
        "cost_out": cost_out,
    }


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
    check_name(name, "model", "name")
    values = _checked_fields(endpoint, served_name, api_key_env, cost_in, cost_out)
    with connections.connection(url, conn=conn) as c:
        cur = c.cursor(row_factory=class_row(Model))
        model = cur.execute(
            f"""INSERT INTO avengers.models
                  (name, endpoint, served_name, api_key_env, cost_in_per_m, cost_out_per_m)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (name) DO NOTHING
                RETURNING {COLUMNS}""",
            (name, *(values[f] for f in _COLUMN)),
        ).fetchone()
        if model is None:
            raise InputError(
                f"model {name!r} already exists: `avengers models list` shows it; change it "
                f"with `avengers models set {name} ...` (its outcomes stay)"
            )
        return model


def set_model(
    name: str,
    *,
    endpoint: str | None = None,
    served_name: str | None = None,
    api_key_env: str | None = None,
    cost_in: float | None = None,
    cost_out: float | None = None,
    clear: Collection[str] = (),
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> Model:
    """Change fields of an existing model; its outcomes, active flag and profiles stay.

    A field left None is unchanged; ``clear`` names fields to remove (``CLEARABLE``: e.g.
    ``clear=("endpoint",)`` makes the model outcomes-only). The served routing data follows
    ``avengers.models`` by trigger, in the same transaction.
    """
    unknown = sorted(set(clear) - set(CLEARABLE))
    if unknown:
        raise InputError(
            f"cannot clear {', '.join(unknown)}: clearable fields are {', '.join(CLEARABLE)}",
            location="clear",
        )
    values = _checked_fields(endpoint, served_name, api_key_env, cost_in, cost_out)
    both = [f for f in CLEARABLE if f in clear and values[f] is not None]
    if both:
        raise InputError(f"{', '.join(both)} given and cleared at once", location="clear")
    changes = {_COLUMN[f]: values[f] for f in CLEARABLE if values[f] is not None or f in clear}
    if not changes:
        raise InputError(
            f"nothing to change for model {name!r}: give a new endpoint, served name, API key "
            "variable or cost, or fields to clear"
        )
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
        for column in changes
    )
    with connections.connection(url, conn=conn) as c:
        cur = c.cursor(row_factory=class_row(Model))
        model = cur.execute(
            sql.SQL("UPDATE avengers.models SET {} WHERE name = {} RETURNING {}").format(
                assignments, sql.Placeholder("name"), sql.SQL(COLUMNS)
            ),
            {**changes, "name": name},
        ).fetchone()
        if model is None:
            raise NotFound(f"no model {name!r}; {_known(c)}")
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
    ``create`` adds them (no endpoint: outcomes only until ``avengers models set`` gives one)."""
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
            f"NAME` or pass `create_models`; {_known(conn)}"
        )
    return found


def _known(conn: psycopg.Connection) -> str:
    names = [r[0] for r in conn.execute("SELECT name FROM avengers.models ORDER BY name")]
    if not names:
        return "the pool is empty"
    shown = ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")
    return f"known models: {shown}"
