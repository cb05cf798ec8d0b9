"""Fixtures for every test. Real PostgreSQL: one server and one migrated template database per
session, started only when a test asks for a database; each test module gets a fresh database
cloned from the template (CREATE DATABASE ... TEMPLATE), so modules never see each other's rows
and nobody waits for migrations twice. Real model servers: llama.cpp's (SmolLM2-135M) once per
session, and a scripted HTTP server per test. Helpers live in ``avengers_store.testing``.

Set AVENGERS_TEST_DATABASE_URL to run against another server (it needs pgvector and CREATEDB).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from avengers_store import testing
from avengers_store.answering.chat import Endpoint
from avengers_store.store import connections


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin URL of the test server (database ``postgres``)."""
    with testing.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def template_db(pg_admin_url) -> Iterator[str]:
    """Name of a database migrated to head, used as a template."""
    with testing.throwaway_database(pg_admin_url, migrate=True, prefix="avengers_tpl") as url:
        yield psycopg.conninfo.conninfo_to_dict(url)["dbname"]


@pytest.fixture(scope="module")
def db_url(pg_admin_url, template_db) -> Iterator[str]:
    """A fresh, migrated database for this test module."""
    with testing.throwaway_database(pg_admin_url, template=template_db) as url:
        yield url


@pytest.fixture(scope="module")
def empty_db_url(pg_admin_url) -> Iterator[str]:
    """A fresh database with nothing in it (not even pgvector)."""
    with testing.throwaway_database(pg_admin_url, prefix="avengers_e") as url:
        yield url


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


@pytest.fixture(scope="session")
def smol_server() -> Iterator[Endpoint]:
    """An Endpoint for SmolLM2-135M served by xllamacpp on a free loopback port."""
    try:
        with testing.serve_smol() as endpoint:
            yield endpoint
    except testing.SmolUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def scripted_server() -> Iterator[testing.ScriptedServer]:
    """A real HTTP server on a free loopback port answering as each test scripts it."""
    with testing.scripted_server() as server:
        yield server


@pytest.fixture
def closed_port_url() -> str:
    """A loopback base URL where nothing listens (connections are refused)."""
    return testing.closed_port_url()
