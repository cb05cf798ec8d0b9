"""Real PostgreSQL for every test: one embedded server and one migrated template database per
session; each test module gets a fresh database cloned from the template (CREATE DATABASE ...
TEMPLATE), so modules never see each other's rows and nobody waits for migrations twice.

Set AVENGERS_TEST_DATABASE_URL to run against another server (it needs pgvector and CREATEDB).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from avengers_store.store import connections, embedded, schema

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROUTERDC = SHARED_DATA / "routerdc_7models"
LLMROUTER = SHARED_DATA / "llmrouter_9models"

pytest_plugins: list[str] = ["tests.llm_server"]  # fixture modules


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin URL of the test server (database ``postgres``)."""
    external = os.environ.get("AVENGERS_TEST_DATABASE_URL")
    if external:
        yield make_conninfo(external, dbname="postgres")
        return
    # Not under pytest's basetemp: pytest resets its root to mode 0700 whenever a session starts,
    # which would lock out the unprivileged user the embedded server runs as (when we are root).
    home = Path(tempfile.mkdtemp(prefix="avengers-test-home-"))
    url = embedded.start(home)
    try:
        yield make_conninfo(url, dbname="postgres")
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


def _create_database(admin_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return make_conninfo(admin_url, dbname=name)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_db(pg_admin_url) -> Iterator[str]:
    """Name of a database migrated to head, used as a template."""
    name = f"avengers_tpl_{uuid.uuid4().hex[:8]}"
    url = _create_database(pg_admin_url, name)
    schema.upgrade(url)
    yield name
    _drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def db_url(pg_admin_url, template_db) -> Iterator[str]:
    """A fresh, migrated database for this test module."""
    name = f"avengers_t_{uuid.uuid4().hex[:10]}"
    url = _create_database(pg_admin_url, name, template=template_db)
    yield url
    _drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def empty_db_url(pg_admin_url) -> Iterator[str]:
    """A fresh database with nothing in it (not even pgvector)."""
    name = f"avengers_e_{uuid.uuid4().hex[:10]}"
    url = _create_database(pg_admin_url, name)
    yield url
    _drop_database(pg_admin_url, name)


@pytest.fixture
def conn(db_url) -> Iterator[psycopg.Connection]:
    """A connection to the module's database with pgvector registered; rolled back after."""
    connection = connections.connect(db_url)
    try:
        yield connection
    finally:
        connection.rollback()
        connection.close()


@pytest.fixture
def cli_env(db_url, monkeypatch) -> str:
    """Point the CLI at the module's database; returns the URL."""
    monkeypatch.setenv("AVENGERS_DATABASE_URL", db_url)
    return db_url
