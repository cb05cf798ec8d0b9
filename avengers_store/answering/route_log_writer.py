"""Writing route-log rows in the background: off the request's work, nothing acknowledged lost.

``RouteLogWriter`` takes rows (``route_log.entry``) into a bounded queue and one task writes them
in batches, one transaction per batch. A full queue makes ``submit`` wait (back-pressure rather
than dropping rows); ``flush`` waits until every row submitted so far is written (feedback on an
answer needs its row), ``aclose`` writes everything queued before it returns.

Failures are of two kinds. The store being unreachable (``StoreUnavailable``, a lost connection)
says nothing about the rows. Without a spool the batch is retried with backoff, capped at
``max_backoff``, for as long as the outage lasts; only ``aclose`` bounds it (``close_timeout``)
and counts what it could not write in ``dropped``. With a spool (``route_log_spool``, the
gateway's) the batch is appended to a local file and fsync'd instead, and ``submit`` returns only
once its rows are in the store or in that file, so a process killed during an outage keeps every
row it answered: the spool is replayed into the store when it is back (retried with the same
backoff), and by the next process that starts. A write that takes longer than ``spool_after``
seconds is spooled too (replaying is idempotent by route id). A full spool keeps nothing: rows
then wait in memory as without one, and ``spool_full`` says so (the gateway refuses new work
meanwhile). Any other error is the rows' own (a value the table refuses): the batch is retried
``retries`` times, then written row by row so one bad row does not take the others with it, and
only the rows that still fail are dropped, each logged by route id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import psycopg

from avengers_store.answering.route_log_spool import RouteLogSpool, SpoolFull
from avengers_store.errors import ConfigurationError, StoreUnavailable

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
_STOP = object()


class _TooSlow(Exception):
    """A write still running after ``spool_after`` seconds."""


_UNREACHABLE = (StoreUnavailable, psycopg.OperationalError, _TooSlow)


class _Ticket:
    """The rows of one ``submit``: done when each is written, spooled or given up on."""

    def __init__(self, rows: int) -> None:
        self.left = rows
        self.kept = True
        self.done = asyncio.get_running_loop().create_future()

    def settle(self, kept: bool) -> None:
        self.kept = self.kept and kept
        self.left -= 1
        if self.left <= 0 and not self.done.done():
            self.done.set_result(self.kept)


_Item = tuple[Row, _Ticket | None]


class RouteLogWriter:
    """Background writer. ``write`` stores one batch (e.g. ``avengers.log_routes`` on a pooled
    connection); ``max_queue`` bounds rows waiting; ``batch`` caps rows per transaction; the
    retry policy is the module's. ``spool``: where rows go while the store cannot take them
    (``submit`` then waits until its rows are kept); ``spool_after``: seconds a write may take
    before its rows are spooled."""

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
        spool: RouteLogSpool | None = None,
        spool_after: float = 1.0,
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
        self.spool = spool
        self._spool_after = spool_after
        self._outage = 0  # consecutive failed attempts to reach the store (spool mode)
        self._retry_at = 0.0
        self._unspooled: list[_Item] = []  # rows a full spool could not keep
        self._strays: set[asyncio.Task[Any]] = set()
        self.written = 0
        self.dropped = 0
        self.submitted = 0
        self.spooled = 0  # rows of this writer put in the spool
        self.replayed = 0  # rows of earlier processes' spools written to the store
        self._settled: asyncio.Condition | None = None
        # Told how many rows were written / given up on / spooled / replayed (metrics).
        self.on_written: Callable[[int], None] | None = None
        self.on_dropped: Callable[[int], None] | None = None
        self.on_spooled: Callable[[int], None] | None = None
        self.on_replayed: Callable[[int], None] | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def spool_full(self) -> bool:
        """Whether the spool is full while the store is unreachable: new rows cannot be kept."""
        return self.spool is not None and self._outage > 0 and self.spool.full

    def start(self) -> None:
        """Start the writing task (``submit`` does it too); with a spool it first replays what
        earlier processes left there."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="avengers-route-log-writer"
            )

    async def submit(self, rows: Sequence[Row]) -> None:
        """Queue rows (waits while the queue is full). With a spool, return once they are in
        the store or the spool (or, the spool being full, waiting in memory)."""
        if self._closed:
            raise ConfigurationError("the route-log writer is closed")
        self.start()
        ticket = _Ticket(len(rows)) if self.spool is not None and rows else None
        for row in rows:
            await self._queue.put((row, ticket))
            self.submitted += 1
        if ticket is not None:
            await ticket.done

    def submit_nowait(self, rows: Sequence[Row]) -> asyncio.Future[bool] | None:
        """``submit`` when the queue has room for every row at once, without a coroutine: a
        future done when they are kept (with a spool; at once without one), True when each is.
        None when the queue has no room or the writer is closed (``submit`` then waits, or
        raises)."""
        if self._closed or self._queue.maxsize - self._queue.qsize() < len(rows):
            return None
        self.start()
        ticket = _Ticket(len(rows)) if self.spool is not None and rows else None
        for row in rows:
            self._queue.put_nowait((row, ticket))
            self.submitted += 1
        if ticket is not None:
            return ticket.done
        done = asyncio.get_running_loop().create_future()
        done.set_result(True)
        return done

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row submitted before the call is written (or given up on), at most
        ``timeout`` seconds; a batch waiting out a backoff (or a spool waiting to be replayed) is
        retried at once. True when they are."""
        target = self.submitted
        if self._settled is None:
            self._settled = asyncio.Condition()
        self._wake.set()
        self._retry_at = 0.0

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
        ``close_timeout`` seconds (rows left are kept in the spool if there is one, else counted
        in ``dropped``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is None:
            return
        self._close_by = time.monotonic() + self._close_timeout
        self._wake.set()
        await self._queue.put(_STOP)
        await self._task

    # -- the writing task ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if self.spool is not None and self.spool.pending():
                await self._replay()
            stopping = False
            while not stopping:
                first = await self._next()
                if first is None:  # time to try the store again
                    await self._replay()
                    continue
                items: list[_Item] = []
                if first is _STOP:
                    stopping = True
                else:
                    items.append(first)
                while len(items) < self._batch and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is _STOP:
                        stopping = True
                        continue
                    items.append(item)
                if items:
                    await self._handle(items)
                await self._notify()
            if self._outage:
                # A last try: what waits goes to the store if it is back, rather than to the
                # next start (rows in memory would be given up).
                await self._replay()
            if self._unspooled:
                items, self._unspooled = self._unspooled, []
                self._drop(items, "the store is unreachable at shutdown and the spool is full")
        finally:
            if self.spool is not None:
                self.spool.close()

    async def _next(self) -> Any:
        """The next queued item; None when, in an outage, the store is due to be tried again
        (or ``flush`` asks for it) before an item comes."""
        if not self._outage:
            return await self._queue.get()
        delay = max(0.0, self._retry_at - time.monotonic())
        getter = asyncio.ensure_future(self._queue.get())
        waker = asyncio.ensure_future(self._wake.wait())
        done, _ = await asyncio.wait({getter, waker}, timeout=delay, return_when="FIRST_COMPLETED")
        waker.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        self._wake.clear()
        return None

    async def _notify(self) -> None:
        if self._settled is not None:
            async with self._settled:
                self._settled.notify_all()

    async def _handle(self, items: list[_Item]) -> None:
        if self.spool is None:
            await self._write_batch(items)
            return
        if self._outage and (time.monotonic() < self._retry_at or not await self._replay()):
            await self._to_spool(items)  # the store is still unreachable
            return
        rows = [r for r, _ in items]
        try:
            await self._bounded_write(rows)
        except _UNREACHABLE as exc:
            self._unreachable(exc, len(rows))
            await self._to_spool(items)
        except Exception:  # the rows' own error: the policy without a spool
            await self._write_batch(items)
        else:
            self._written(items)

    async def _bounded_write(self, rows: Sequence[Row]) -> None:
        """``write(rows)``, given up after ``spool_after`` seconds (it may still finish: a
        replay of the spool then skips the rows by route id)."""
        task = asyncio.ensure_future(self._write(rows))
        done, _ = await asyncio.wait({task}, timeout=self._spool_after)
        if not done:
            self._strays.add(task)
            task.add_done_callback(self._strays.discard)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise _TooSlow(f"no answer from the store within {self._spool_after:g} s")
        task.result()

    def _unreachable(self, exc: BaseException, rows: int) -> None:
        if not self._outage:
            log.warning(
                "route_log: the store is unreachable (%s); rows go to the spool %s until it "
                "is back (%d now)",
                exc,
                self.spool.path if self.spool else "",
                rows,
            )
        self._outage += 1
        delay = min(self._backoff * 2 ** (self._outage - 1), self._max_backoff)
        self._retry_at = time.monotonic() + delay

    async def _to_spool(self, items: list[_Item]) -> None:
        assert self.spool is not None
        rows = [r for r, _ in items]
        try:
            await asyncio.to_thread(self.spool.append, rows)
        except (SpoolFull, OSError) as exc:
            if not self._unspooled:
                log.error("route_log: %s; rows wait in memory until the store is back", exc)
            self._unspooled.extend(items)
            for _, ticket in items:
                if ticket is not None:
                    ticket.settle(False)
            if self.on_spooled is not None:
                self.on_spooled(0)  # nothing kept, but watchers learn the spool is full
            return
        self.spooled += len(rows)
        if self.on_spooled is not None:
            self.on_spooled(len(rows))
        for _, ticket in items:
            if ticket is not None:
                ticket.settle(True)

    async def _replay(self) -> bool:
        """Write what the spool holds (this process's and exited ones') and the rows waiting in
        memory into the store. True when all of it is there (the outage is over)."""
        assert self.spool is not None
        try:
            for path in self.spool.pending():
                ours = path == self.spool.path
                rows = await asyncio.to_thread(self.spool.read, path)
                stored = 0
                for start in range(0, len(rows), self._batch):
                    chunk = rows[start : start + self._batch]
                    stored += await self._write_rows_alone_if_refused(chunk, ours)
                self.spool.replayed(path)
                if ours:
                    self._counted_written(stored)
                    log.info("route_log: %d spooled row(s) written to the store", stored)
                else:
                    self.replayed += stored
                    if self.on_replayed is not None:
                        self.on_replayed(stored)
                    log.info("route_log: %d row(s) replayed from %s", stored, path)
            while self._unspooled:
                items = self._unspooled[: self._batch]
                await self._bounded_write([r for r, _ in items])
                del self._unspooled[: len(items)]
                self._counted_written(len(items))
        except _UNREACHABLE as exc:
            self._unreachable(exc, 0)
            return False
        finally:
            await self._notify()
        if self._outage:
            log.info("route_log: the store is back after %d failed attempt(s)", self._outage)
        self._outage = 0
        return True

    async def _write_rows_alone_if_refused(self, rows: list[Row], ours: bool) -> int:
        """Write spooled ``rows``; a batch the table refuses is written row by row and its bad
        rows dropped (counted in ``dropped`` when ``ours``: this writer's rows). Returns how
        many were written."""
        try:
            await self._bounded_write(rows)
            return len(rows)
        except _UNREACHABLE:
            raise
        except Exception:  # noqa: BLE001 - some row's own error: find which
            pass
        written = 0
        for row in rows:
            try:
                await self._bounded_write([row])
                written += 1
            except _UNREACHABLE:
                raise
            except Exception as exc:  # noqa: BLE001 - the row's own, logged by route id
                if ours:
                    self._drop([(row, None)], str(exc))
                else:
                    log.error("route_log: spooled row %s not written: %s", row["route_id"], exc)
        return written

    # -- without a spool (and a spool's rows the table refuses) ----------------------------

    async def _write_batch(self, items: list[_Item]) -> None:
        rows = [r for r, _ in items]
        failures = 0
        while True:
            try:
                await self._write(rows)
            except (StoreUnavailable, psycopg.OperationalError) as exc:
                if self._close_by is not None and time.monotonic() >= self._close_by:
                    self._drop(items, f"the store is unreachable at shutdown: {exc}")
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
                    if len(items) > 1:
                        for item in items:
                            await self._write_batch([item])
                    else:
                        self._drop(items, str(exc))
                    return
                await self._pause(failures)
            else:
                if failures:
                    log.info("route_log: %d row(s) written after %d retries", len(rows), failures)
                self._written(items)
                return

    async def _pause(self, failures: int) -> None:
        """Back off before the next attempt; ``flush`` and ``aclose`` cut it short."""
        delay = min(self._backoff * 2 ** (failures - 1), self._max_backoff)
        if self._close_by is not None:
            delay = max(0.0, min(delay, self._close_by - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
        self._wake.clear()

    def _written(self, items: Sequence[_Item]) -> None:
        for _, ticket in items:
            if ticket is not None:
                ticket.settle(True)
        self._counted_written(len(items))

    def _counted_written(self, rows: int) -> None:
        self.written += rows
        if self.on_written is not None and rows:
            self.on_written(rows)

    def _drop(self, items: Sequence[_Item], reason: str) -> None:
        self.dropped += len(items)
        for _, ticket in items:
            if ticket is not None:
                ticket.settle(False)
        if self.on_dropped is not None:
            self.on_dropped(len(items))
        ids = ", ".join(str(r.get("route_id", "?")) for r, _ in items[:10])
        more = f" and {len(items) - 10} more" if len(items) > 10 else ""
        log.error("route_log: %d row(s) not written (%s%s): %s", len(items), ids, more, reason)
