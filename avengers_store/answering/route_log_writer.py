"""Writing route-log rows in the background: off the response's critical path, nothing lost.

``RouteLogWriter`` takes rows (``route_log.entry``) into a bounded queue and one task writes them
in batches, one transaction per batch. A full queue makes ``submit`` wait (back-pressure rather
than dropping rows); ``flush`` waits until every row submitted so far is written (feedback on an
answer needs its row), ``aclose`` writes everything queued before it returns.

Failures are of two kinds. The store being unreachable (``StoreUnavailable``, a lost connection)
says nothing about the rows: the batch is retried with backoff, capped at ``max_backoff``, for as
long as the outage lasts, so an answer given while the store was down (a replica serving the
routing reads, or a request already past its routing) keeps its row; ``flush`` retries at once.
Only ``aclose`` bounds it (``close_timeout``): a process that must exit counts what it could not
write in ``dropped`` and logs the count. Any other error is the rows' own (a value the table
refuses): the batch is retried ``retries`` times, then written row by row so one bad row does not
take the others with it, and only the rows that still fail are dropped, each logged by route id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import psycopg

from avengers_store.errors import ConfigurationError, StoreUnavailable

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
_STOP = object()


class RouteLogWriter:
    """Background writer. ``write`` stores one batch (e.g. ``route_log.awrite`` on a pooled
    connection); ``max_queue`` bounds rows waiting; ``batch`` caps rows per transaction; the
    retry policy is the module's."""

    def __init__(
        self,
        write: Callable[[Sequence[Row]], Awaitable[object]],
        *,
        max_queue: int = 10_000,
        batch: int = 256,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 5.0,
        close_timeout: float = 10.0,
    ) -> None:
        if max_queue < 1 or batch < 1:
            raise ConfigurationError("max_queue and batch must be >= 1")
        self._write = write
        self._queue: asyncio.Queue[Any] = asyncio.Queue(max_queue)
        self._batch = batch
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._close_timeout = close_timeout
        self._close_by: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.submitted = 0
        self._settled: asyncio.Condition | None = None
        # Told how many rows were written / given up on (metrics).
        self.on_written: Callable[[int], None] | None = None
        self.on_dropped: Callable[[int], None] | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="avengers-route-log-writer"
            )

    async def submit(self, rows: Sequence[Row]) -> None:
        """Queue rows (waits while the queue is full)."""
        if self._closed:
            raise ConfigurationError("the route-log writer is closed")
        self.start()
        for row in rows:
            await self._queue.put(row)
            self.submitted += 1

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row submitted before the call is written (or given up on), at most
        ``timeout`` seconds; a batch waiting out a backoff is retried at once. True when they
        are."""
        target = self.submitted
        if self._settled is None:
            self._settled = asyncio.Condition()
        self._wake.set()

        async def settled() -> None:
            assert self._settled is not None
            async with self._settled:
                await self._settled.wait_for(lambda: self.written + self.dropped >= target)

        try:
            await asyncio.wait_for(settled(), timeout)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Write every queued row, then stop; while the store is unreachable, for at most
        ``close_timeout`` seconds (what is left is counted in ``dropped``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is None:
            return
        self._close_by = time.monotonic() + self._close_timeout
        self._wake.set()
        await self._queue.put(_STOP)
        await self._task

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            rows: list[Row] = []
            if first is _STOP:
                stopping = True
            else:
                rows.append(first)
            while len(rows) < self._batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stopping = True
                    continue
                rows.append(item)
            if rows:
                await self._write_batch(rows)
                if self._settled is not None:
                    async with self._settled:
                        self._settled.notify_all()

    async def _write_batch(self, rows: list[Row]) -> None:
        failures = 0
        while True:
            try:
                await self._write(rows)
            except (StoreUnavailable, psycopg.OperationalError) as exc:
                if self._close_by is not None and time.monotonic() >= self._close_by:
                    self._drop(rows, f"the store is unreachable at shutdown: {exc}")
                    return
                if failures == 0:
                    log.warning(
                        "route_log: %d row(s) waiting for the store (%s); retrying until it "
                        "is back",
                        len(rows),
                        exc,
                    )
                failures += 1
                await self._pause(failures)
            except Exception as exc:  # the rows' own error: retry, then isolate the bad rows
                failures += 1
                if failures > self._retries:
                    if len(rows) > 1:
                        for row in rows:
                            await self._write_batch([row])
                    else:
                        self._drop(rows, str(exc))
                    return
                await self._pause(failures)
            else:
                if failures:
                    log.info("route_log: %d row(s) written after %d retries", len(rows), failures)
                self.written += len(rows)
                if self.on_written is not None:
                    self.on_written(len(rows))
                return

    async def _pause(self, failures: int) -> None:
        """Back off before the next attempt; ``flush`` and ``aclose`` cut it short."""
        delay = min(self._backoff * 2 ** (failures - 1), self._max_backoff)
        if self._close_by is not None:
            delay = max(0.0, min(delay, self._close_by - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
        self._wake.clear()

    def _drop(self, rows: Sequence[Row], reason: str) -> None:
        self.dropped += len(rows)
        if self.on_dropped is not None:
            self.on_dropped(len(rows))
        ids = ", ".join(str(r.get("route_id", "?")) for r in rows[:10])
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        log.error("route_log: %d row(s) not written (%s%s): %s", len(rows), ids, more, reason)
