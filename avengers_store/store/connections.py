"""Connecting: one way, in one order — argument, ``AVENGERS_DATABASE_URL``, libpq ``PG*`` variables,
then the embedded server. Driver errors become ``AvengersError``s here, once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from avengers_store.errors import ConnectionFailed, ExtensionMissing
from avengers_store.store import config, embedded

MIN_SERVER_VERSION = 150000


def resolve_url(url: str | None = None) -> str:
    """The URL to use; starts the embedded server when nothing else is configured."""
    if url is not None:
        return url
    configured = config.database_url()
    if configured is not None:
        return configured
    return embedded.start()


def redact(url: str) -> str:
    """The URL with any password replaced, for error messages and logs."""
    if not url:
        return "(libpq PG* environment variables)"
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def sqlalchemy_url(url: str) -> str:
    """SQLAlchemy spelling of a libpq URL (psycopg 3 driver)."""
    return (
        re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)
        if url
        else "postgresql+psycopg://"
    )


def connect(
    url: str | None = None, *, autocommit: bool = False, vector: bool = True
) -> psycopg.Connection:
    """Open one connection. With ``vector=True`` pgvector types are registered (numpy in/out)."""
    target = resolve_url(url)
    try:
        conn = psycopg.connect(target, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise ConnectionFailed(
            f"cannot connect to {redact(target)}: {reason}. Check that the server is running and "
            f"that {config.DATABASE_URL_ENV} is right (unset it to use the embedded server)."
        ) from exc
    try:
        check_server(conn, target)
        if vector:
            register_vector(conn, target)
    except BaseException:
        conn.close()
        raise
    return conn


def check_server(conn: psycopg.Connection, url: str) -> None:
    if conn.info.server_version < MIN_SERVER_VERSION:
        raise ConnectionFailed(
            f"{redact(url)} runs PostgreSQL {conn.info.server_version // 10000}; "
            "avengers-store needs PostgreSQL 15 or newer with pgvector."
        )


def pgvector_version(conn: psycopg.Connection) -> tuple[str | None, str | None]:
    """(installed version, available version) of the vector extension."""
    row = conn.execute(
        "SELECT installed_version, default_version FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def require_pgvector(conn: psycopg.Connection, url: str) -> None:
    installed, available = pgvector_version(conn)
    if installed:
        return
    if available:
        raise ExtensionMissing(
            f"pgvector is available but not installed in {redact(url)}: "
            "run `avengers db upgrade` (it runs CREATE EXTENSION vector)."
        )
    raise ExtensionMissing(
        f"the server at {redact(url)} has no pgvector extension: install pgvector on it "
        "(e.g. use the pgvector/pgvector image from docker-compose.yml), then run `avengers db upgrade`."
    )


def register_vector(conn: psycopg.Connection, url: str = "") -> None:
    from pgvector.psycopg import register_vector as _register

    require_pgvector(conn, url)
    _register(conn)


@contextmanager
def connection(
    url: str | None = None, *, conn: psycopg.Connection | None = None, autocommit: bool = False
) -> Iterator[psycopg.Connection]:
    """Use ``conn`` if the caller passed one (their transaction), else open and close our own."""
    if conn is not None:
        yield conn
        return
    own = connect(url, autocommit=autocommit)
    try:
        yield own
        if not autocommit:
            own.commit()
    finally:
        own.close()
