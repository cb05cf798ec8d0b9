"""Embedding from asyncio: off the event loop, one worker thread, concurrent texts in one batch.

While the worker embeds one batch, the texts of requests that arrive meanwhile wait together and
go in the next batch (micro-batching without a timer: a lone request never waits for company).
A local model runs with ``threads`` compute threads (default 1; ``Embedder.set_threads``): for
one short query on a shared CPU, one thread was 4x faster than two (bench/embedding_throughput.py);
torch's setting is process-wide, ONNX Runtime's is the session's.

One request's bad input never fails its batch-mates: texts are checked when they arrive
(``check_texts``: a lone surrogate is refused before it joins a batch), and a batch that still
fails is embedded again one request at a time, so the error reaches only the request it belongs
to.

An embedder that says it is ``inline`` (a fixed vector, a lookup) is called on the event loop
at once: the thread's hop would cost more than its embedding.
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avengers_store.calibration.embedders import Embedder, check_texts
from avengers_store.errors import ConfigurationError


@dataclass
class _Request:
    embedder: Embedder
    texts: list[str]
    future: asyncio.Future[np.ndarray] = field(repr=False)


class EmbeddingBatcher:
    """``await batcher.embed(embedder, texts)``: the vectors, embedded in a worker thread
    together with other requests' texts. ``max_batch`` caps the texts of one batch."""

    def __init__(self, *, threads: int | None = 1, max_batch: int = 64) -> None:
        if threads is not None and threads < 1:
            raise ConfigurationError(f"embedding threads must be >= 1, got {threads}")
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch}")
        self.threads = threads
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="avengers-embed")
        self._pending: list[_Request] = []
        self._running = False
        # Embedders whose threads were set: ONNX Runtime's count is per embedder (its session).
        self._threaded: weakref.WeakSet = weakref.WeakSet()
        self.batches = 0  # batches embedded, for callers that want to see the batching

    async def embed(self, embedder: Embedder, texts: list[str]) -> np.ndarray:
        checked = check_texts(texts, "text")
        if getattr(embedder, "inline", False):
            self.batches += 1
            return embedder.embed(checked, batch_size=max(len(checked), 1))
        loop = asyncio.get_running_loop()
        request = _Request(embedder, checked, loop.create_future())
        self._pending.append(request)
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await request.future

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._take()
                if not await self._settle(loop, batch) and len(batch) > 1:
                    # Which request's texts made it fail is unknown: each is tried alone.
                    for request in batch:
                        await self._settle(loop, [request])
        finally:
            self._running = False

    async def _settle(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> bool:
        """Embed ``batch`` in one call and give each request its vectors; False when the call
        failed (a lone request then gets the error, a batch of several is left waiting)."""
        texts = [t for r in batch for t in r.texts]
        try:
            vectors = await loop.run_in_executor(
                self._executor, self._embed, batch[0].embedder, texts
            )
        except Exception as exc:
            if len(batch) > 1:
                return False
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return True
        self.batches += 1
        start = 0
        for r in batch:
            if not r.future.done():
                r.future.set_result(vectors[start : start + len(r.texts)])
            start += len(r.texts)
        return True

    def _take(self) -> list[_Request]:
        """The oldest request and the ones after it with the same embedder, up to max_batch
        texts (a request larger than that goes alone)."""
        first = self._pending[0]
        batch, rest, size = [first], [], len(first.texts)
        for r in self._pending[1:]:
            if r.embedder is first.embedder and size + len(r.texts) <= self.max_batch:
                batch.append(r)
                size += len(r.texts)
            else:
                rest.append(r)
        self._pending = rest
        return batch

    def _embed(self, embedder: Embedder, texts: list[str]) -> Any:
        if self.threads and embedder not in self._threaded:
            # An embedder given to a client needs only ``embed``; local models have set_threads.
            set_threads = getattr(embedder, "set_threads", None)
            if set_threads is not None:
                set_threads(self.threads)
            self._threaded.add(embedder)
        return embedder.embed(texts, batch_size=max(len(texts), 1))
