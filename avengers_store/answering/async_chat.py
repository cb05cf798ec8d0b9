"""Calling models from asyncio: ``AsyncChatClient``, the async twin of ``ChatClient``.

Same protocol (``answering.sampling``: request bodies, retries, ``n`` top-up and limits, response
checks), driven by one pooled ``httpx.AsyncClient``. It also opens streamed completions
(``stream``) and relays a request body as is (``forward``), for the gateway.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from avengers_store import redaction
from avengers_store.answering.sampling import (
    DEFAULT_MAX_TOKENS,
    Deadline,
    Endpoint,
    Messages,
    Post,
    SampleBatch,
    SamplingClient,
    adrive,
    attempt_timeout,
    auth_headers,
    bounded,
    has_content,
    post_steps,
    without_credentials,
)
from avengers_store.errors import ConfigurationError, EndpointError


class AsyncChatClient(SamplingClient):
    """Async client with one pooled ``httpx.AsyncClient``; use it from one event loop.

    Settings as ``ChatClient``: ``timeout`` per HTTP request (for a stream: between chunks),
    ``max_retries``, ``backoff``, ``max_connections`` (the connection pool), ``max_n``.
    Constructing it opens no connection; ``aclose()`` (or ``async with``) releases the pool.
    """

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_connections: int = 64,
        max_n: int | None = None,
    ) -> None:
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be >= 1, got {max_connections}")
        super().__init__(timeout=timeout, max_retries=max_retries, backoff=backoff, max_n=max_n)
        # Every answer, stream and error is read through the redacting transport: no key leaves.
        self._http = redaction.async_client(timeout=timeout, max_connections=max_connections)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def sample(
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
        """Draw ``n`` completions of ``messages`` from ``endpoint`` (see ``ChatClient.sample``)."""
        steps = self._sample_steps(endpoint, messages, n, temperature, max_tokens, extra, deadline)
        return await adrive(steps, self._http)

    async def forward(
        self, endpoint: Endpoint, body: Mapping[str, Any], *, deadline: Deadline | None = None
    ) -> httpx.Response:
        """POST ``body`` (its ``model`` replaced by the served name) with the client's retries,
        all by ``deadline``; the accepted response, or EndpointError."""
        steps = post_steps(
            endpoint, _served(endpoint, body), auth_headers(endpoint), self.policy,
            deadline=deadline,
        )  # fmt: skip
        return await adrive(steps, self._http)

    @asynccontextmanager
    async def stream(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        *,
        deadline: Deadline | None = None,
        first_token_by: Deadline | None = None,
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """A streamed completion: the events (``chat.completion.chunk`` objects) as they arrive.

        Connecting is retried like any request, and the first event with content
        (``sampling.has_content``) must come, by ``first_token_by`` (default: ``deadline``);
        a failure mid-stream, a body that is not server-sent JSON events, a stream closed before
        ``data: [DONE]`` or the ``deadline`` passing raises EndpointError (``timed_out`` for the
        deadlines)."""
        payload = {**_served(endpoint, body), "stream": True}
        first_by = _earliest(first_token_by, deadline)
        steps = post_steps(
            endpoint, payload, auth_headers(endpoint), self.policy, stream=True,
            deadline=first_by,
        )  # fmt: skip
        response = await self._open(steps)
        try:
            yield _events(endpoint, response, deadline, first_by)
        finally:
            await response.aclose()

    async def _open(self, steps: Any) -> httpx.Response:
        return await adrive(steps, self._http, self._open_attempt)

    async def _open_attempt(self, action: Post) -> httpx.Response:
        """One attempt at opening a stream: the response with its body unread, unless it is an
        error (the protocol reads the error text, so it is read and closed here)."""
        request = self._http.build_request(
            "POST", action.url, json=action.body, headers=action.headers,
            timeout=attempt_timeout(action),
        )  # fmt: skip
        async with bounded(action.timeout):
            response = await self._http.send(request, stream=True)
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
        return response


def _served(endpoint: Endpoint, body: Mapping[str, Any]) -> dict[str, Any]:
    return {**body, "model": endpoint.served_name}


def _earliest(*deadlines: Deadline | None) -> Deadline | None:
    given = [d for d in deadlines if d is not None]
    return min(given, key=lambda d: d.at) if given else None


async def _events(
    endpoint: Endpoint,
    response: httpx.Response,
    deadline: Deadline | None,
    first_by: Deadline | None,
) -> AsyncIterator[dict[str, Any]]:
    lines = response.aiter_lines()
    started = False  # an event with content came: the rest is bounded by ``deadline`` only
    try:
        while True:
            bound = deadline if started else first_by
            try:
                async with bounded(bound.remaining() if bound else None):
                    line = await anext(lines)
            except StopAsyncIteration:
                # OpenAI-compatible servers end every stream with [DONE]: without it the
                # connection was closed on a partial completion.
                raise EndpointError(
                    f"{endpoint.describe()} closed the stream before its end (no data: [DONE])"
                ) from None
            if not line.startswith("data:"):
                continue  # blank separators, comments (keep-alives), event names
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except json.JSONDecodeError as exc:
                raise EndpointError(
                    f"{endpoint.describe()} sent a malformed stream event: {data[:200]!r}"
                ) from exc
            if not isinstance(event, dict):
                raise EndpointError(
                    f"{endpoint.describe()} sent a malformed stream event: {data[:200]!r}"
                )
            started = started or has_content(event)
            yield event
    except httpx.TimeoutException as exc:
        what = "finish the stream" if started else "send the answer's first token"
        raise EndpointError(
            f"{endpoint.describe()} did not {what} in time ({type(exc).__name__}: {exc})",
            timed_out=True,
        ) from exc
    except httpx.TransportError as exc:
        raise EndpointError(
            f"{endpoint.describe()} broke off the stream "
            f"({type(exc).__name__}: {without_credentials(str(exc), endpoint.chat_url)})"
        ) from exc
