"""Writing route-log rows in the background: off the response's critical path, nothing lost.

``RouteLogWriter`` takes rows (``route_log.entry``) into a bounded queue and one task writes them
in batches, one transaction per batch. A full queue makes ``submit`` wait (back-pressure rather
than dropping rows); ``flush`` waits until every row submitted so far is written (feedback on an
answer needs its row), ``aclose`` writes everything queued before it returns. A batch that fails is
retried with backoff; after the last retry its rows are counted in ``dropped`` and logged by count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from avengers_store.errors import ConfigurationError

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
_STOP = object()


class RouteLogWriter:
    """Background writer. ``write`` stores one batch (e.g. ``route_log.awrite`` on a pooled
    connection); ``max_queue`` bounds rows waiting; ``batch`` caps rows per transaction."""

    def __init__(
        self,
        write: Callable[[Sequence[Row]], Awaitable[object]],
        *,
        max_queue: int = 10_000,
        batch: int = 256,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if max_queue < 1 or batch < 1:
            raise ConfigurationError("max_queue and batch must be >= 1")
        self._write = write
        self._queue: asyncio.Queue[Any] = asyncio.Queue(max_queue)
        self._batch = batch
        self._retries = retries
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.submitted = 0
        self._settled: asyncio.Condition | None = None
        self.on_written: Callable[[int], None] | None = None

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

    async def flush(self) -> None:
        """Wait until every row submitted before the call is written (or given up on)."""
        target = self.submitted
        if self._settled is None:
            self._settled = asyncio.Condition()
        async with self._settled:
            await self._settled.wait_for(lambda: self.written + self.dropped >= target)

    async def aclose(self) -> None:
        """Write every queued row, then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is None:
            return
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
        for attempt in range(self._retries + 1):
            try:
                await self._write(rows)
            except Exception as exc:  # a database error of any kind: retry, then count
                if attempt == self._retries:
                    self.dropped += len(rows)
                    log.error("route_log: %d row(s) not written: %s", len(rows), exc)
                    return
                await asyncio.sleep(self._backoff * 2**attempt)
            else:
                self.written += len(rows)
                if self.on_written is not None:
                    self.on_written(len(rows))
                return
