"""The shadow queue's batching rule: a batch is due when it is full, when its oldest item has
lingered long enough, or at once while a flush waits; a sync worker thread follows it."""

from __future__ import annotations

import threading

import pytest

from avengers_store.shadow.batches import ShadowBatches
from avengers_store.shadow.work import ShadowItem


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def items(n: int, start: int = 0) -> list[ShadowItem]:
    return [ShadowItem(str(i), [0.0], None, None, "m", {}, None) for i in range(start, start + n)]


def test_a_batch_lingers_until_full_or_old_enough():
    clock = Clock()
    q = ShadowBatches(batch=4, linger=1.0, clock=clock)
    assert q.due() == 0.0  # nothing waits: the worker may stop
    assert q.add(items(1)) is True  # the caller starts the worker
    assert q.due() == pytest.approx(1.0)
    clock.now += 0.4
    assert q.add(items(2, 1)) is False  # a worker runs already
    assert q.due() == pytest.approx(0.6)  # counted from the oldest item
    clock.now += 0.6
    assert q.due() == 0.0
    assert [i.route_id for i in q.take()] == ["0", "1", "2"]
    assert q.add(items(4, 3)) is False
    assert q.due() == 0.0  # full: no lingering
    assert len(q.take()) == 4
    assert q.take() == [] and q.idle()


def test_a_flush_makes_the_batch_due_at_once():
    clock = Clock()
    q = ShadowBatches(batch=4, linger=1.0, clock=clock)
    q.add(items(1))
    q.hurry(True)
    assert q.due() == 0.0
    q.hurry(False)
    assert q.due() == pytest.approx(1.0)


def test_a_worker_thread_is_woken_by_a_flush():
    q = ShadowBatches(batch=100, linger=3600.0)
    taken: list[int] = []

    def worker() -> None:
        while True:
            q.wait_due()
            if not (batch := q.take()):
                return
            taken.append(len(batch))
            q.finished(len(batch))

    assert q.add(items(3))
    thread = threading.Thread(target=worker)
    thread.start()
    # An hour's linger: only the flush's hurry lets the worker take the batch.
    assert q.wait_idle(30.0)
    thread.join(30.0)
    assert taken == [3] and q.done == 3 and not thread.is_alive()
