"""The background route-log writer's retry policy, on scripted ``write`` callables: an outage of
any length loses no row, a bad row is dropped alone, shutdown is bounded, flush cuts a backoff
short."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from avengers_store.answering.route_log_writer import RouteLogWriter
from avengers_store.errors import StoreUnavailable


def rows(n: int) -> list[dict[str, object]]:
    return [{"route_id": uuid.uuid4(), "i": i} for i in range(n)]


class Store:
    """Stores batches; ``down`` calls fail first as an unreachable store; rows with ``bad`` set
    are refused as a value the table does not take (with their whole batch)."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.calls = 0
        self.stored: list[dict[str, object]] = []

    async def write(self, batch) -> None:
        self.calls += 1
        if self.down:
            self.down -= 1
            raise StoreUnavailable("the store is not running")
        if any(r.get("bad") for r in batch):
            raise psycopg.DataError("value out of range")
        self.stored.extend(batch)


def test_an_outage_longer_than_the_retries_loses_no_row():
    store = Store(down=40)

    async def go() -> RouteLogWriter:
        writer = RouteLogWriter(store.write, retries=3, backoff=0.001, max_backoff=0.002)
        await writer.submit(rows(5))
        await writer.aclose()
        return writer

    writer = asyncio.run(go())
    # Forty failed attempts, ten times the retries a bad row gets: all five rows written.
    assert store.calls > 40 and store.down == 0
    assert (writer.written, writer.dropped) == (5, 0)
    assert [r["i"] for r in store.stored] == list(range(5))


def test_a_bad_row_is_dropped_alone(caplog):
    store = Store()
    batch = rows(4)
    batch[2]["bad"] = True

    async def go() -> RouteLogWriter:
        writer = RouteLogWriter(store.write, retries=1, backoff=0.001)
        await writer.submit(batch)
        await writer.aclose()
        return writer

    writer = asyncio.run(go())
    assert (writer.written, writer.dropped) == (3, 1)
    assert [r["i"] for r in store.stored] == [0, 1, 3]
    assert str(batch[2]["route_id"]) in caplog.text and "value out of range" in caplog.text


def test_shutdown_during_an_outage_is_bounded_and_counts_what_it_left(caplog):
    store = Store(down=10**9)

    async def go() -> RouteLogWriter:
        writer = RouteLogWriter(store.write, backoff=0.01, max_backoff=0.05, close_timeout=0.3)
        await writer.submit(rows(3))
        await asyncio.wait_for(writer.aclose(), 10)
        return writer

    writer = asyncio.run(go())
    assert (writer.written, writer.dropped) == (0, 3)
    assert "unreachable at shutdown" in caplog.text


def test_flush_retries_a_waiting_batch_at_once():
    store = Store(down=1)

    async def go() -> tuple[bool, RouteLogWriter]:
        # A minute's backoff after the first failure: only flush's wake-up writes the row soon.
        writer = RouteLogWriter(store.write, backoff=60, max_backoff=60)
        await writer.submit(rows(1))
        while store.calls == 0:
            await asyncio.sleep(0.01)
        settled = await writer.flush(timeout=10)
        await writer.aclose()
        return settled, writer

    settled, writer = asyncio.run(go())
    assert settled and (writer.written, writer.dropped) == (1, 0)


def test_flush_gives_up_after_its_timeout_while_the_store_is_down():
    store = Store(down=10**9)

    async def go() -> bool:
        writer = RouteLogWriter(store.write, backoff=0.01, max_backoff=0.01, close_timeout=0.05)
        await writer.submit(rows(1))
        settled = await writer.flush(timeout=0.2)
        await writer.aclose()
        return settled

    assert asyncio.run(go()) is False


@pytest.mark.parametrize("max_queue, batch", [(0, 1), (1, 0)])
def test_sizes_below_one_are_refused(max_queue, batch):
    from avengers_store.errors import ConfigurationError

    async def make() -> None:
        RouteLogWriter(Store().write, max_queue=max_queue, batch=batch)

    with pytest.raises(ConfigurationError):
        asyncio.run(make())
