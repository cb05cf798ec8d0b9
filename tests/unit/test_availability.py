"""What a lost store is called and what the user is told (no database: the errors are built)."""

from __future__ import annotations

import time

import psycopg
from psycopg_pool import PoolTimeout

from avengers_store.errors import ConnectionFailed, StoreUnavailable
from avengers_store.store import availability


def test_connection_loss_errors_are_lost_and_others_are_not():
    assert availability.is_lost(psycopg.OperationalError("server closed the connection"), None)
    assert availability.is_lost(PoolTimeout("no connection in 5 s"), None)
    assert availability.is_lost(ConnectionFailed("cannot connect"), None)
    assert not availability.is_lost(psycopg.errors.QueryCanceled("statement timeout"), None)
    assert not availability.is_lost(ValueError("unrelated"), None)


def test_embedded_store_message_says_it_restarts(monkeypatch):
    monkeypatch.delenv("AVENGERS_DATABASE_URL", raising=False)
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGDATABASE", raising=False)
    error = availability.unavailable(None, psycopg.OperationalError("terminating connection"))
    assert isinstance(error, StoreUnavailable) and isinstance(error, ConnectionFailed)
    assert "embedded" in str(error) and "avengers db start" in str(error)
    assert "terminating connection" in str(error)


def test_external_store_message_names_the_variable_and_hides_the_password(monkeypatch):
    url = "postgresql://bob:s3cret-pw@db.example:5432/avengers"
    monkeypatch.setenv("AVENGERS_DATABASE_URL", url)
    error = availability.unavailable(None, PoolTimeout("pool timeout"))
    text = str(error)
    assert "AVENGERS_DATABASE_URL" in text and "db.example" in text
    assert "s3cret-pw" not in text


def test_replica_message_says_how_to_read_from_the_primary():
    url = "host=replica.example dbname=avengers password=s3cret-pw"
    text = str(availability.unavailable(url, ConnectionFailed("x"), role="replica"))
    assert "AVENGERS_READ_DATABASE_URL" in text and "s3cret-pw" not in text


def test_a_failed_replica_is_left_alone_for_a_moment(monkeypatch):
    monkeypatch.setattr(availability, "REPLICA_RETRY_S", 0.05)
    state = availability.ReplicaState()
    assert state.usable()
    state.failed()
    assert not state.usable()
    time.sleep(0.06)
    assert state.usable()
