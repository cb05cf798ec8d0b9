"""The shadow items waiting for the background worker of a client, taken in batches: one
``avengers.shadow_decide`` statement per batch, whatever the driver (a thread for the sync
client, a task for the async one)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from avengers_store.shadow.work import ShadowItem

log = logging.getLogger(__name__)


class ShadowBatches:
    """Items queued for shadowing, at most ``max_items`` (more are dropped and counted:
    shadowing is an observation, never back-pressure on the served requests), taken
    ``batch`` at a time by one worker."""

    def __init__(self, max_items: int = 10_000, batch: int = 256) -> None:
        self._items: list[ShadowItem] = []
        self._lock = threading.Condition()
        self._running = False
        self.max_items = max_items
        self.batch = batch
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
            self._items.extend(items[:room])
            if self._running or not self._items:
                return False
            self._running = True
            return True

    def take(self) -> list[ShadowItem]:
        """The next batch; empty when there is none, and the worker must stop."""
        with self._lock:
            found, self._items = self._items[: self.batch], self._items[self.batch :]
            if not found:
                self._running = False
                self._lock.notify_all()
            return found

    def finished(self, count: int) -> None:
        with self._lock:
            self.done += count

    def idle(self) -> bool:
        with self._lock:
            return not self._running and not self._items

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait (threads) until every queued item is handled; False when ``timeout`` passed."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._running or self._items:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
            return True
