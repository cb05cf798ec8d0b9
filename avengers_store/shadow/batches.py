"""The shadow items waiting for the background worker of a client, taken in batches: one
``avengers.shadow_decide`` statement per batch, whatever the driver (a thread for the sync
client, a task for the async one).

A batch is taken when ``batch`` items wait or the oldest has waited ``linger`` seconds (or a
flush asks for it), not as soon as one arrives: under steady traffic a shadow statement per
request would run beside every next request, sharing the store's and the host's CPU with it,
and each statement pays its fixed cost again. Lingering puts the shadow's work into one
statement per second or so, between the responses rather than beside each one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from avengers_store.shadow.work import ShadowItem

log = logging.getLogger(__name__)

# Seconds the oldest queued item waits for others before its batch is taken.
LINGER_S = 1.0


class ShadowBatches:
    """Items queued for shadowing, at most ``max_items`` (more are dropped and counted:
    shadowing is an observation, never back-pressure on the served requests), taken
    ``batch`` at a time by one worker once ``batch`` wait or the oldest has waited
    ``linger`` seconds (``due``)."""

    def __init__(
        self,
        max_items: int = 10_000,
        batch: int = 256,
        linger: float = LINGER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._items: list[ShadowItem] = []
        self._lock = threading.Condition()
        self._running = False
        self._oldest: float | None = None  # when the oldest queued item arrived
        self._hurry = 0  # flushes waiting: batches are due at once
        self._clock = clock
        self.max_items = max_items
        self.batch = batch
        self.linger = linger
        self.dropped = 0
        self.done = 0

    def add(self, items: Sequence[ShadowItem]) -> bool:
        """Queue ``items``; True when no worker is running and the caller must start one."""
        with self._lock:
            room = max(0, self.max_items - len(self._items))
            if len(items) > room:
                self.dropped += len(items) - room
                log.warning(
                    "shadow: %d request(s) not shadowed, the queue is full", len(items) - room
                )
            if room and items and not self._items:
                self._oldest = self._clock()
            self._items.extend(items[:room])
            if len(self._items) >= self.batch:
                self._lock.notify_all()
            if self._running or not self._items:
                return False
            self._running = True
            return True

    def due(self) -> float:
        """Seconds until the next batch is due (0: take it now, or nothing waits)."""
        with self._lock:
            return self._due()

    def _due(self) -> float:
        if not self._items or self._hurry or len(self._items) >= self.batch:
            return 0.0
        assert self._oldest is not None
        return max(0.0, self._oldest + self.linger - self._clock())

    def wait_due(self) -> None:
        """Block (threads) until the next batch is due."""
        with self._lock:
            while (left := self._due()) > 0:
                self._lock.wait(left)

    def take(self) -> list[ShadowItem]:
        """The next batch; empty when there is none, and the worker must stop."""
        with self._lock:
            found, self._items = self._items[: self.batch], self._items[self.batch :]
            if not found:
                self._running = False
                self._oldest = None
                self._lock.notify_all()
            return found

    def finished(self, count: int) -> None:
        with self._lock:
            self.done += count

    def idle(self) -> bool:
        with self._lock:
            return not self._running and not self._items

    def hurry(self, on: bool) -> None:
        """A flush begins (``on``) or ends: while one waits, batches are due at once."""
        with self._lock:
            self._hurry += 1 if on else -1
            self._lock.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait (threads) until every queued item is handled; False when ``timeout`` passed."""
        end = None if timeout is None else time.monotonic() + timeout
        self.hurry(True)
        try:
            with self._lock:
                while self._running or self._items:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._lock.wait(left)
                return True
        finally:
            self.hurry(False)
