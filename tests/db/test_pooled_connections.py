"""The clients' pooled connections: checked with a round trip only when the server spoke on one
while it sat idle (client_pools.needs_check: a live idle one is used as it is, one whose backend
was terminated is seen without a round trip and replaced), and planning prepared statements
generically when they keep them."""

from __future__ import annotations

import time

import psycopg

from avengers_store.client import AvengersClient
from avengers_store.client_pools import needs_check


def _wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_an_idle_live_connection_needs_no_check_and_a_terminated_one_does(db_url):
    with (
        psycopg.connect(db_url, autocommit=True) as watched,
        psycopg.connect(db_url, autocommit=True) as admin,
    ):
        watched.execute("SELECT 1").fetchone()
        assert not needs_check(watched)
        pid = watched.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The backend's FATAL (or the closed socket) arrives unasked.
        assert _wait_for(lambda: needs_check(watched))


def test_the_client_replaces_a_pooled_connection_whose_backend_was_terminated(db_url):
    client = AvengersClient(db_url, pool_size=1)
    try:
        with client._connection(None, "write") as pooled:
            before = pooled.info.backend_pid
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (before,))
        time.sleep(0.2)
        with client._connection(None, "write") as pooled:
            after = pooled.info.backend_pid
            assert pooled.execute("SELECT 1").fetchone() == (1,)
        assert after != before
    finally:
        client.close()


def test_pooled_connections_plan_prepared_statements_generically_unless_told_not_to(db_url):
    for prepared, expected in ((True, "force_generic_plan"), (False, "auto")):
        client = AvengersClient(db_url, pool_size=1, prepared_statements=prepared)
        try:
            with client._connection(None, "read") as pooled:
                (mode,) = pooled.execute("SHOW plan_cache_mode").fetchone()
            assert mode == expected
        finally:
            client.close()


def test_the_async_client_plans_generically_too(db_url):
    import asyncio

    from avengers_store.async_client import AsyncAvengersClient

    async def main() -> str:
        client = AsyncAvengersClient(db_url, pool_size=1)
        try:
            async with client.connection("read") as pooled:
                cursor = await pooled.execute("SHOW plan_cache_mode")
                return (await cursor.fetchone())[0]
        finally:
            await client.aclose()

    assert asyncio.run(main()) == "force_generic_plan"
