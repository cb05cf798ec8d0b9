"""Routing reads from a real streaming replica (a hot standby of a throwaway embedded server,
made with ``pg_basebackup -R``) given as ``read_url``: writes (the route log) go to the primary,
reads fall back to the primary while the replica is down and return to it once it is back."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from avengers_store import AvengersClient, client_core
from avengers_store.async_client import AsyncAvengersClient
from avengers_store.store import availability, connections
from avengers_store.store.statement import Statement
from avengers_store.testing import (
    RANKED_MODELS,
    add_scripted_store,
    own_postgres_server,
    scripted_server,
    streaming_replica,
)

pytestmark = pytest.mark.timeout(180)

QUESTION = "What is 6 times 7? Answer with a number."


@pytest.fixture(scope="module")
def llm():
    with scripted_server() as server:
        for name in RANKED_MODELS:
            server.answers(name, r"\boxed{42}")
        yield server


@pytest.fixture(scope="module")
def servers(llm):
    with own_postgres_server(prefix="avengers-primary-") as primary:
        with connections.connect(primary.url) as conn:
            add_scripted_store(conn, llm.base_url)
            conn.commit()
        with streaming_replica(primary) as replica:
            replica.wait_for(primary.url)
            yield primary, replica


def logged(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM avengers.route_log").fetchone()[0]


def reads_from_replica(client: AvengersClient) -> bool:
    with client._connection(None, "read") as c:
        return c.execute("SELECT pg_is_in_recovery()").fetchone()[0]


def test_sync_client_reads_the_replica_writes_the_primary_and_falls_back(servers, record):
    primary, replica = servers
    replica.start()
    before = logged(primary.url)
    with AvengersClient(primary.url, read_url=replica.url) as client:
        assert client.ask(QUESTION, samples=1).answer == "42"
        assert reads_from_replica(client)
        replica.stop()
        began = time.perf_counter()
        decision = client.route(QUESTION, 2)
        fallback_s = time.perf_counter() - began
        assert [c.model for c in decision.candidates] == ["alpha", "bravo"]
        assert not reads_from_replica(client)
        assert client.ask(QUESTION, samples=1).answer == "42"
        replica.start()
        started = time.perf_counter()
        while not reads_from_replica(client):
            assert time.perf_counter() - started < availability.REPLICA_RETRY_S + 1
            time.sleep(0.05)
        back_s = time.perf_counter() - started
        assert client.route(QUESTION, 2).candidates
    assert logged(primary.url) - before == 2
    record("replica stopped: reads on the primary", measured_s=round(fallback_s, 3))
    record(
        "replica back: reads on it again",
        bound_s=availability.REPLICA_RETRY_S + 1,
        measured_s=round(back_s, 3),
    )


def test_async_client_falls_back_to_the_primary_and_returns(servers):
    primary, replica = servers
    replica.start()

    async def in_recovery(client: AsyncAvengersClient) -> bool:
        async with client.connection("read") as c:
            return (await (await c.execute("SELECT pg_is_in_recovery()")).fetchone())[0]

    async def go() -> None:
        async with AsyncAvengersClient(primary.url, read_url=replica.url) as client:
            assert (await client.ask(QUESTION, samples=1)).answer == "42"
            assert await in_recovery(client)
            await asyncio.to_thread(replica.stop)
            assert (await client.route(QUESTION, 2)).candidates
            assert not await in_recovery(client)
            assert (await client.ask(QUESTION, samples=1)).answer == "42"
            await asyncio.to_thread(replica.start)
            started = time.perf_counter()
            while not await in_recovery(client):
                assert time.perf_counter() - started < availability.REPLICA_RETRY_S + 1
                await asyncio.sleep(0.05)

    before = logged(primary.url)
    asyncio.run(go())
    assert logged(primary.url) - before == 2


def test_the_replica_serves_what_the_primary_writes(servers):
    primary, replica = servers
    replica.start()
    with psycopg.connect(primary.url, autocommit=True) as c:
        c.execute("UPDATE avengers.models SET served_name = served_name")
    replica.wait_for(primary.url)
    with psycopg.connect(replica.url) as r:
        assert r.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            r.execute("INSERT INTO avengers.datasets (name) VALUES ('x')")


def test_a_split_batch_reads_one_snapshot_on_the_replica(servers, monkeypatch):
    primary, replica = servers
    replica.start()
    replica.wait_for(primary.url)
    monkeypatch.setattr(client_core, "BATCH_PART", 2)
    texts = [f"{QUESTION} ({i})" for i in range(8)]
    with AvengersClient(primary.url, read_url=replica.url, pool_size=3) as client:
        split = client.route_many(texts, 2)
        with psycopg.connect(primary.url, autocommit=True) as conn:
            whole = client.route_many(texts, 2, conn=conn)
        found = client._run_parts(
            client_core.RunParts(
                (Statement("SELECT pg_is_in_recovery(), pg_current_snapshot()::text"),) * 3
            )
        )
    assert [(d.cluster, d.candidates) for d in split] == [(d.cluster, d.candidates) for d in whole]
    assert all(rows[0][0] for rows in found)  # the standby's
    assert len({rows[0][1] for rows in found}) == 1  # exported there, shared
