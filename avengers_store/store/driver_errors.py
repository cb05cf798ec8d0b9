"""Database errors as the library's errors, decided in one place.

A psycopg error becomes an ``AvengersError`` subclass by its SQLSTATE and, for integrity errors, by
the constraint it names, never by its message text. The store's own PL/pgSQL ``RAISE``s carry the
SQLSTATEs below (listed in sql/README.md). Library boundaries use ``translated()`` (a context
manager and decorator) or, on paths too hot for a generator, ``reraise`` in an ``except`` clause;
the original exception is chained as ``__cause__``. Errors with no meaning for the library (a
syntax error, a deadlock) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import psycopg

from avengers_store.errors import (
    AvengersError,
    ExtensionMissing,
    InputError,
    NotFound,
    StoreStateError,
    StoreUnavailable,
)

# SQLSTATEs raised by the store's functions and procedures (class VA: implementation-defined).
NOT_FOUND = "VA404"  # a named object (e.g. a clustering version) does not exist
WRONG_STATE = "VA409"  # the store's state does not allow the operation
INVALID_INPUT = "VA422"  # an argument is invalid (e.g. a query vector of the wrong dimension)

_BY_SQLSTATE: dict[str, type[AvengersError]] = {
    NOT_FOUND: NotFound,
    WRONG_STATE: StoreStateError,
    INVALID_INPUT: InputError,
    "57P01": StoreUnavailable,  # admin_shutdown
    "57P02": StoreUnavailable,  # crash_shutdown
    "57P03": StoreUnavailable,  # cannot_connect_now
}
_BY_CLASS: dict[str, type[AvengersError]] = {
    "08": StoreUnavailable,  # connection exception
    "22": InputError,  # data exception: a value the caller passed
    "23": InputError,  # integrity constraint violation (named below when the store knows it)
}
# Constraints whose violation has a meaning in the store's terms.
_BY_CONSTRAINT: dict[str, tuple[type[AvengersError], str]] = {
    "outcomes_query_id_fkey": (InputError, "an outcome names a query that is not in the store"),
    "outcomes_model_id_fkey": (InputError, "an outcome names a model that is not in the pool"),
    "models_name_key": (InputError, "a model of that name is already in the pool"),
    "datasets_name_key": (InputError, "a dataset of that name is already in the store"),
    "clusterings_one_active_idx": (
        StoreStateError,
        "another clustering is active: switch versions with avengers.activate_clustering",
    ),
    "embedding_spaces_one_active_idx": (StoreStateError, "another embedding space is active"),
}
# CREATE EXTENSION vector: not installed on the server, or not this user's to enable.
_EXTENSION_NOT_INSTALLED = frozenset({"0A000", "58P01"})  # feature_not_supported, undefined_file
_INSUFFICIENT_PRIVILEGE = "42501"


def translate(exc: psycopg.Error, *, location: str | None = None) -> AvengersError | None:
    """The library error that ``exc`` means, or None when it has no meaning for the library.
    ``location`` names the argument an ``InputError`` is about when the store does not (its
    own RAISEs name the field they refuse, which wins)."""
    state = exc.sqlstate or ""
    diag = exc.diag
    known = _BY_CONSTRAINT.get(diag.constraint_name or "")
    if known is not None:
        cls, message = known
        if diag.message_detail:
            message = f"{message}: {diag.message_detail}"
    else:
        cls = _BY_SQLSTATE.get(state) or _BY_CLASS.get(state[:2])
        if cls is None:
            return None
        message = diag.message_primary or str(exc).strip() or type(exc).__name__
        if diag.message_hint:
            message = f"{message}. {diag.message_hint}"
    if cls is InputError:
        # The store's own RAISEs name the argument they refuse (USING COLUMN = ...).
        return InputError(message, location=diag.column_name or location)
    return cls(message)


def reraise(exc: psycopg.Error, *, location: str | None = None) -> NoReturn:
    """Raise what ``exc`` means to the library (chained from it), else ``exc`` itself."""
    error = translate(exc, location=location)
    if error is None:
        raise exc
    raise error from exc


@contextmanager
def translated(location: str | None = None) -> Iterator[None]:
    """Translate the psycopg errors raised inside (``with translated():`` or ``@translated()``)."""
    try:
        yield
    except psycopg.Error as exc:
        reraise(exc, location=location)


def missing_extension(exc: psycopg.Error, server: str) -> ExtensionMissing | None:
    """What a failed ``CREATE EXTENSION vector`` on ``server`` (a redacted URL) means."""
    if exc.sqlstate in _EXTENSION_NOT_INSTALLED:
        return ExtensionMissing(
            f"the server at {server} has no pgvector extension: install pgvector on it "
            "(e.g. the pgvector/pgvector image from docker-compose.yml), then rerun "
            "`avengers db upgrade`."
        )
    if exc.sqlstate == _INSUFFICIENT_PRIVILEGE:
        return ExtensionMissing(
            f"pgvector is not enabled in {server} and this user may not enable it: "
            "ask an administrator to run CREATE EXTENSION vector in that database, then rerun "
            "`avengers db upgrade`."
        )
    return None
