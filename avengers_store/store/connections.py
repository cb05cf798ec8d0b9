"""Connecting: one way, in one order — argument, ``AVENGERS_DATABASE_URL``, libpq ``PG*`` variables,
then the embedded server. Driver errors become ``AvengersError``s here, once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import conninfo

from avengers_store.errors import ConfigurationError, ConnectionFailed, ExtensionMissing
from avengers_store.store import config, embedded

MIN_SERVER_VERSION = 150000


def resolve_url(url: str | None = None) -> str:
    """The URL to use; starts the embedded server when nothing else is configured (unless
    ``avengers db stop`` stopped it). Raises only ``StoreUnavailable`` when it cannot."""
    if url is not None:
        return url
    configured = config.database_url()
    if configured is not None:
        return configured
    return embedded.autostart()


# Connection parameters whose values are secrets (libpq names).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
MASK = "***"
UNPARSEABLE = "(a connection string that cannot be shown safely: it may hold a password)"


def redact(url: str) -> str:
    """The connection string with every password shown as ``***``, for messages and logs.

    Every form libpq accepts is covered: ``user:pw@`` and ``?password=`` in a URL, and
    ``password=`` in a ``key=value`` string. A string libpq cannot parse is not shown at all.
    """
    if not url:
        return "(libpq PG* environment variables)"
    return _rewrite_secrets(url, MASK) or UNPARSEABLE


def without_password(url: str) -> str:
    """The connection string with its passwords removed: still usable by psql and libpq, which
    then take the password from ``PGPASSWORD`` or ``~/.pgpass`` (or prompt for it)."""
    if not url:
        return url
    out = _rewrite_secrets(url, None)
    if out is None:
        raise ConfigurationError(
            f"{UNPARSEABLE}: check {config.DATABASE_URL_ENV} or the URL passed"
        )
    return out


def has_password(url: str) -> bool:
    """Whether the connection string itself carries a password."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return True  # cannot tell: treat it as secret
    return any(params.get(key) for key in SECRET_PARAMETERS)


def _rewrite_secrets(url: str, replacement: str | None) -> str | None:
    """``url`` with each secret value replaced by ``replacement`` (None: removed), or None when
    that cannot be done safely. Parsed by libpq's own rules; the result is checked to hold none
    of the secret values."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return None
    secrets = [v for k, v in params.items() if k in SECRET_PARAMETERS and v]
    if not secrets:
        return url
    if re.match(r"^postgres(ql)?://", url):
        out = _rewrite_uri(url, replacement)
    else:
        kept = {k: v for k, v in params.items() if k not in SECRET_PARAMETERS}
        if replacement is not None:
            kept.update({k: replacement for k in SECRET_PARAMETERS if params.get(k)})
        out = conninfo.make_conninfo("", **kept)
    # A secret that also spells another part (a host named like the password) would survive.
    return None if any(secret in out for secret in secrets) else out


def _rewrite_uri(url: str, replacement: str | None) -> str:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:{replacement}" if colon and replacement is not None else user
        netloc = f"{userinfo}@{hosts}" if userinfo else hosts
    else:
        netloc = parts.netloc
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        key = pair.partition("=")[0]
        if unquote(key) in SECRET_PARAMETERS:
            if replacement is None:
                continue
            pair = f"{key}={replacement}"
        pairs.append(pair)
    # Built by hand: urlunsplit would drop the empty host of postgresql:///db?host=/socket.
    query = "&".join(pairs)
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


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
    except psycopg.ProgrammingError:
        # libpq's syntax errors quote the string around the fault, which may be the password.
        raise ConnectionFailed(
            f"the connection string is not valid libpq syntax (not shown, as it may hold a "
            f"password): check {config.DATABASE_URL_ENV} or the URL passed"
        ) from None
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
