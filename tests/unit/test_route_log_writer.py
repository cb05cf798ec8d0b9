"""The background route-log writer's retry policy, on scripted ``write`` callables: an outage of
any length loses no row, a bad row is dropped alone, shutdown is bounded, flush cuts a backoff
short; with a spool (real files), rows are on disk before ``submit`` returns, replayed once the
store is back or by the next process, once each."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import psycopg
import pytest

from avengers_store.answering.route_log_spool import RouteLogSpool, encode
from avengers_store.answering.route_log_writer import RouteLogWriter
from avengers_store.errors import StoreUnavailable


def rows(n: int) -> list[dict[str, object]]:
    return [{"route_id": str(uuid.uuid4()), "i": i} for i in range(n)]


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


# -- with a spool: rows the store cannot take are kept on disk before submit returns ---------


class IdempotentStore(Store):
    """A store that, like ``route_log.awrite``, skips a route id it holds already."""

    async def write(self, batch) -> None:
        held = {r["route_id"] for r in self.stored}
        await super().write([r for r in batch if r["route_id"] not in held])


def spooled_ids(directory) -> list[str]:
    return [
        json.loads(line)["route_id"]
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def test_during_an_outage_submit_returns_once_the_rows_are_in_the_spool(tmp_path):
    store = IdempotentStore(down=10**9)
    batch = rows(6)

    async def go() -> tuple[list[str], RouteLogWriter]:
        spool = RouteLogSpool(tmp_path, max_bytes=10**6)
        writer = RouteLogWriter(store.write, spool=spool, backoff=60, max_backoff=60)
        for row in batch:
            await writer.submit([row])  # returns: kept on disk, the store still down
        on_disk = spooled_ids(tmp_path)
        store.down = 0
        assert await writer.flush(timeout=10)  # flush tries the store at once
        await writer.aclose()
        return on_disk, writer

    on_disk, writer = asyncio.run(go())
    assert on_disk == [str(r["route_id"]) for r in batch]
    assert [r["route_id"] for r in store.stored] == [r["route_id"] for r in batch]
    assert (writer.spooled, writer.written, writer.dropped) == (6, 6, 0)
    assert list(tmp_path.glob("*.jsonl")) == []  # emptied, and removed on close


def test_what_a_dead_process_spooled_is_replayed_once_by_the_next(tmp_path):
    first, second = rows(3), rows(2)
    store = IdempotentStore(down=10**9)

    async def crashed() -> None:
        spool = RouteLogSpool(tmp_path, max_bytes=10**6)
        writer = RouteLogWriter(store.write, spool=spool, backoff=60, max_backoff=60)
        await writer.submit(first)
        spool.close()  # what a kill -9 leaves: the file, its lock released

    asyncio.run(crashed())
    store.down = 0
    store.stored.append(first[0])  # one row reached the store before the crash too

    async def next_start() -> RouteLogWriter:
        writer = RouteLogWriter(store.write, spool=RouteLogSpool(tmp_path))
        writer.start()
        await writer.submit(second)
        await writer.aclose()
        return writer

    writer = asyncio.run(next_start())
    assert sorted(str(r["route_id"]) for r in store.stored) == sorted(
        str(r["route_id"]) for r in first + second
    )
    assert writer.replayed == 3 and list(tmp_path.glob("*.jsonl")) == []


def test_a_live_process_spool_is_left_alone(tmp_path):
    store = IdempotentStore(down=10**9)

    async def go() -> list[str]:
        held = RouteLogSpool(tmp_path)
        busy = RouteLogWriter(store.write, spool=held, backoff=60, max_backoff=60)
        await busy.submit(rows(2))
        store.down = 0
        other = RouteLogWriter(store.write, spool=RouteLogSpool(tmp_path))
        other.start()
        await other.aclose()
        left = spooled_ids(tmp_path)
        held.close()
        return left

    assert len(asyncio.run(go())) == 2 and store.stored == []


def test_a_write_slower_than_spool_after_is_spooled(tmp_path):
    class Slow(IdempotentStore):
        async def write(self, batch) -> None:
            await asyncio.sleep(0.5)
            await super().write(batch)

    store = Slow()

    async def go() -> tuple[float, int]:
        writer = RouteLogWriter(store.write, spool=RouteLogSpool(tmp_path), spool_after=0.05)
        began = time.perf_counter()
        await writer.submit(rows(1))
        kept_s = time.perf_counter() - began
        spooled = writer.spooled
        await writer.flush(timeout=10)
        await writer.aclose()
        return kept_s, spooled

    kept_s, spooled = asyncio.run(go())
    assert spooled == 1 and kept_s < 0.4
    assert len(store.stored) == 1  # the slow write and the replay: stored once


def test_a_full_spool_keeps_rows_in_memory_and_says_so(tmp_path, caplog):
    store = IdempotentStore(down=10**9)
    batch = rows(5)

    async def go() -> tuple[int, bool, RouteLogWriter]:
        spool = RouteLogSpool(tmp_path, max_bytes=150)  # room for about two rows
        writer = RouteLogWriter(store.write, spool=spool, backoff=60, max_backoff=60)
        for row in batch:
            await writer.submit([row])
        full = writer.spool_full
        store.down = 0
        await writer.flush(timeout=10)
        await writer.aclose()
        return writer.spooled, full, writer

    spooled, full, writer = asyncio.run(go())
    assert full and 0 < spooled < 5
    assert sorted(str(r["route_id"]) for r in store.stored) == sorted(
        str(r["route_id"]) for r in batch
    )
    assert writer.dropped == 0 and "rows wait in memory" in caplog.text


def test_a_line_cut_by_a_crash_is_skipped(tmp_path):
    whole = rows(2)
    spool = RouteLogSpool(tmp_path)
    spool.append(whole)
    spool.close()
    path = next(tmp_path.glob("*.jsonl"))
    with open(path, "ab") as out:
        out.write(encode(rows(1)[0])[:25])  # the next batch, cut mid-line
    reader = RouteLogSpool(tmp_path)
    (found,) = reader.pending()
    assert [r["route_id"] for r in reader.read(found)] == [r["route_id"] for r in whole]
    assert reader.torn == 1
