"""A large batch through a pooled client is split into parts, each on a pooled connection of its
own, in one snapshot: the same decisions as one statement on one connection, and every part
reads the snapshot the first exported while other sessions commit."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import numpy as np
import psycopg
import pytest

from avengers_store import AsyncAvengersClient, AvengersClient, client_pools
from avengers_store import client_core as core
from avengers_store.errors import InputError
from avengers_store.store import snapshots
from avengers_store.store.statement import Statement
from avengers_store.testing import two_cluster_store

SPACE = "test-space-4"
PARTS = 3
# A pool that lends a batch PARTS connections: one more stays with the client's other callers.
POOL = PARTS + client_pools.RESERVED

# Each part: the backend that ran it and the snapshot it read, after a moment for others to commit.
PART_SQL = "SELECT pg_backend_pid(), pg_current_snapshot()::text FROM pg_sleep(0.05)"


@pytest.fixture(scope="module")
def store(db_url) -> str:
    return two_cluster_store(db_url, SPACE)


@pytest.fixture
def small_parts(monkeypatch) -> None:
    monkeypatch.setattr(core, "BATCH_PART", 8)


def keys(decisions) -> list[tuple]:
    return [(d.cluster, d.candidates, d.novelty) for d in decisions]


def test_part_bounds_cover_the_batch_in_parts_of_at_least_batch_part():
    part = core.BATCH_PART
    for count, most in ((10_000, 4), (4 * part - 1, 8), (4 * part, 8), (2 * part - 1, 4), (1, 4)):
        bounds = core.part_bounds(count, most)
        assert bounds[0][0] == 0 and bounds[-1][1] == count
        assert all(a < b and b == c for (a, b), (c, _) in itertools.pairwise(bounds))
        assert len(bounds) <= most
        assert len(bounds) == 1 or min(b - a for a, b in bounds) >= core.BATCH_PART
    assert len(core.part_bounds(100 * part, 4)) == 4
    assert len(core.part_bounds(4 * part, 8)) == 4
    assert core.part_bounds(2 * part - 1, 8) == [(0, 2 * part - 1)]


def test_shares_give_every_part_once_and_in_order_restores_them():
    shares = snapshots.shares(7, 3)
    assert sorted(i for s in shares for i in s) == list(range(7))
    done = [[f"r{i}" for i in s] for s in shares]
    assert snapshots.in_order(shares, done, 7) == [f"r{i}" for i in range(7)]


def test_a_split_batch_routes_as_one_statement(store, small_parts, monkeypatch):
    seen: list[int] = []
    run_parts = AvengersClient._run_parts

    def counted(self, step):
        seen.append(len(step.statements))
        return run_parts(self, step)

    monkeypatch.setattr(AvengersClient, "_run_parts", counted)
    vectors = np.random.default_rng(3).standard_normal((70, 4)).astype(np.float32)
    seeds = list(range(70))
    with (
        psycopg.connect(store, autocommit=True) as conn,
        AvengersClient(store, pool_size=POOL) as client,
    ):
        whole = client.route_many(vectors, 2, seeds=seeds, conn=conn)
        split = client.route_many(vectors, 2, seeds=seeds)
    assert seen == [2 * PARTS]  # two per connection the batch may take
    assert len(split) == 70
    assert keys(split) == keys(whole)


def test_the_async_client_splits_alike(store, small_parts):
    vectors = np.random.default_rng(4).standard_normal((40, 4)).astype(np.float32)
    seeds = list(range(40))
    with AvengersClient(store, pool_size=1) as sync:
        whole = sync.route_many(vectors, 2, seeds=seeds)

    async def go():
        async with AsyncAvengersClient(store, pool_size=POOL) as client:
            return await client.route_many(vectors, 2, seeds=seeds)

    assert keys(asyncio.run(go())) == keys(whole)


class Committer:
    """Another session committing a transaction (a new xid) every moment, until stopped: a
    snapshot taken later than another sees a larger xmax."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                conn.execute("SELECT pg_current_xact_id()")
                time.sleep(0.001)

    def __enter__(self) -> Committer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def xmax(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())").fetchone()[0])


def grown(pool, size: int) -> None:
    deadline = time.monotonic() + 10
    while pool.get_stats()["pool_size"] < size and time.monotonic() < deadline:
        time.sleep(0.02)


def check_one_snapshot(store: str, found: list[list[tuple]], before: int) -> None:
    pids = {rows[0][0] for rows in found}
    snaps = {rows[0][1] for rows in found}
    assert len(pids) == PARTS  # a connection each
    assert len(snaps) == 1  # one snapshot
    assert xmax(store) > before + 10  # others committed meanwhile: unshared snapshots would differ


def test_the_parts_read_one_snapshot_on_connections_of_their_own(store):
    step = core.RunParts(tuple(Statement(PART_SQL) for _ in range(PARTS)))
    with AvengersClient(store, pool_size=POOL) as client:
        client._run_parts(step)  # the pool opens its connections
        grown(client._pools["read"], PARTS)
        with Committer(store):
            before = xmax(store)
            found = client._run_parts(step)
    check_one_snapshot(store, found, before)


def test_the_async_parts_read_one_snapshot_on_connections_of_their_own(store):
    step = core.RunParts(tuple(Statement(PART_SQL) for _ in range(PARTS)))

    async def go():
        async with AsyncAvengersClient(store, pool_size=POOL) as client:
            await client._run_parts(step)
            deadline = time.monotonic() + 10
            pool = client._pools["read"]
            while pool.get_stats()["pool_size"] < PARTS and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            with Committer(store):
                before = xmax(store)
                return await client._run_parts(step), before

    found, before = asyncio.run(go())
    check_one_snapshot(store, found, before)


def test_a_part_that_fails_names_the_query_and_leaves_the_pool_clean(store, small_parts):
    wrong = np.ones((50, 5), dtype=np.float32)  # the store's space has 4 dimensions
    vectors = np.random.default_rng(5).standard_normal((50, 4)).astype(np.float32)
    with AvengersClient(store, pool_size=POOL) as client:
        with pytest.raises(InputError, match="query vector 1\\b"):
            client.route_many(wrong)
        assert len(client.route_many(vectors)) == 50
        pool = client._pools["read"]
        for _ in range(pool.get_stats()["pool_size"]):
            with pool.connection() as c:
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_batch_leaves_a_connection_to_the_clients_other_callers(store):
    slow = core.RunParts(tuple(Statement("SELECT pg_sleep(2)") for _ in range(POOL)))
    with AvengersClient(store, pool_size=POOL) as client:
        client._run_parts(core.RunParts(tuple(Statement("SELECT 1") for _ in range(POOL))))
        grown(client._pools["read"], POOL)
        batch = threading.Thread(target=client._run_parts, args=(slow,))
        batch.start()
        time.sleep(0.3)  # the batch holds its connections
        began = time.perf_counter()
        assert client.route_many([[1.0, 0.1, 0, 0]])[0].cluster == 0
        waited = time.perf_counter() - began
        batch.join()
    assert waited < 1.0  # not the batch's 2 s
