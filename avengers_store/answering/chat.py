"""Calling models: the sync client for OpenAI-compatible chat endpoints (vLLM in production).

The client speaks only the HTTP API (``POST {base_url}/chat/completions``); what it sends, when it
retries and how it reads answers is the sampling protocol (``answering.sampling``), shared with
``AsyncChatClient``. Repeated sampling asks for ``n`` choices in one request; a server that returns
fewer is topped up with further requests, and a server that refuses ``n`` above its limit
(llama.cpp caps it at its slot count) is asked again with the limit it names, remembered per
endpoint. Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; other
4xx and malformed bodies are not, because asking again would get the same answer. A ``Deadline``
bounds one call as a whole, retries and top-ups included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from avengers_store import redaction
from avengers_store.answering.sampling import (
    DEFAULT_MAX_TOKENS,
    Deadline,
    Endpoint,
    Message,
    Messages,
    SampleBatch,
    SamplingClient,
    drive,
)
from avengers_store.errors import ConfigurationError, EndpointError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ChatClient",
    "Deadline",
    "Endpoint",
    "Message",
    "Messages",
    "SampleBatch",
]


class ChatClient(SamplingClient):
    """Sync client with one pooled ``httpx.Client``; safe to share between threads.

    ``timeout`` is per HTTP request in seconds; ``max_retries`` counts retries after the first
    attempt; backoff sleeps ``backoff * 2**k`` seconds (capped at 8 s) before retry ``k``;
    ``max_concurrency`` bounds ``sample_many``'s worker threads and the connection pool;
    ``max_n`` caps choices per request for every endpoint (None: ask for all at once).
    Constructing it opens no connection. Use it as a context manager or call ``close()``.
    """

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_concurrency: int = 8,
        max_n: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {max_concurrency}")
        super().__init__(timeout=timeout, max_retries=max_retries, backoff=backoff, max_n=max_n)
        self.max_concurrency = max_concurrency
        # Every answer and error is read through the redacting transport: no key leaves.
        self._http = redaction.sync_client(timeout=timeout, max_connections=max(max_concurrency, 4))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sample(
        self,
        endpoint: Endpoint,
        messages: Messages,
        n: int = 1,
        *,
        temperature: float | None = 0.7,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        deadline: Deadline | None = None,
        **extra: Any,
    ) -> SampleBatch:
        """Draw ``n`` completions of ``messages`` from ``endpoint``.

        ``temperature`` None sends none (the server's default); ``extra`` is merged into the
        request body (``top_p``, ``seed``, ``stop``, ``tools``, ...). ``deadline`` (e.g. ``Deadline.after(10)``) bounds the call, retries included; when it
        passes after some choices came, the batch holds those. Raises EndpointError when the
        endpoint still fails after retries or by the deadline, answers malformed or has no key.
        """
        steps = self._sample_steps(endpoint, messages, n, temperature, max_tokens, extra, deadline)
        return drive(steps, self._http)

    def sample_many(
        self,
        endpoint: Endpoint,
        conversations: Sequence[Messages],
        n: int = 1,
        *,
        temperature: float | None = 0.7,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        return_exceptions: bool = False,
        on_done: Callable[[int, SampleBatch | EndpointError], None] | None = None,
        deadline: Deadline | None = None,
        **extra: Any,
    ) -> list[SampleBatch | EndpointError]:
        """``sample`` for many conversations, at most ``max_concurrency`` in flight; input order.
        ``deadline`` bounds each of them (and so all of them).

        ``on_done(index, result)`` is called (from the calling thread) as each one finishes, so a
        caller can store results and show progress as they arrive. With ``return_exceptions`` an
        EndpointError takes the failed item's place; otherwise the first failure is raised after
        the in-flight requests finish and nothing further is started.
        """
        results: list[SampleBatch | EndpointError | None] = [None] * len(conversations)
        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {
                pool.submit(
                    self.sample,
                    endpoint,
                    conv,
                    n,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    deadline=deadline,
                    **extra,
                ): i
                for i, conv in enumerate(conversations)
            }
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        result: SampleBatch | EndpointError = future.result()
                    except EndpointError as exc:
                        if not return_exceptions:
                            raise
                        result = exc
                    results[i] = result
                    if on_done is not None:
                        on_done(i, result)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return [r for r in results if r is not None]
