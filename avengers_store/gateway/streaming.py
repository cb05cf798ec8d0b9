"""Streams: server-sent events as OpenAI streams them (``data: {json}`` events, ``: keep-alive``
comments while an answer is voted, ``data: [DONE]`` at the end), and an upstream stream opened
up to its first token.

Every streamed answer is made of ``chat.completion.chunk`` objects first (``None`` stands for a
keep-alive, ``{"error": ...}`` for a failure after the first token); a wire encodes them:
``ChatWire`` as chat completion chunks, ``responses.ResponsesWire`` as the Responses API's typed
events.

A stream is answered only once its first token has come (``open_stream``): until then a model
that fails (refuses, stalls, drips, sends a body that is not server-sent JSON events, or closes
early) is an error the recipe falls back from, within the candidate's share of the request's
deadline. After it, a failure ends the stream with a chunk whose ``finish_reason`` is ``error``
and an OpenAI error event (``broken``).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from avengers_store.answering.async_chat import AsyncChatClient
from avengers_store.answering.sampling import Deadline, Endpoint, has_content
from avengers_store.errors import AvengersError
from avengers_store.gateway.errors import from_library

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"
# The finish reason of a stream an upstream failure ended after its first token.
ERROR_FINISH = "error"
# What the route log says of a stream its caller closed before its end.
CLOSED = "the caller closed the stream before its end"

Chunks = AsyncIterator[dict[str, Any] | None]


def event(data: BaseModel | dict[str, Any], name: str | None = None) -> bytes:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(exclude_none=True)
    else:
        text = json.dumps(data, separators=(",", ":"))
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + text.encode("utf-8") + b"\n\n"


_PIECE = re.compile(r"\S*\s*")


def pieces(text: str, size: int = 24) -> Iterator[str]:
    """A finished completion in chunks of about ``size`` characters, cut after whitespace."""
    buffer = ""
    for match in _PIECE.finditer(text):
        buffer += match.group(0)
        if len(buffer) >= size:
            yield buffer
            buffer = ""
    if buffer:
        yield buffer


class ChatWire:
    """Chat completions on the wire: a completion body as it is; chunks as ``data:`` events
    (the usage chunk only when the caller asked, with ``stream_options.include_usage``), then
    ``data: [DONE]``."""

    name = "chat"

    def __init__(self, include_usage: bool = False) -> None:
        self.include_usage = include_usage

    def bind(self, route_id: uuid.UUID) -> None:
        """Chat completions are named by the recipe (``chatcmpl-<route id>``) or the model."""

    def body(self, completion: dict[str, Any]) -> dict[str, Any]:
        return completion

    async def events(self, chunks: Chunks) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if chunk is None:
                yield KEEPALIVE
                continue
            if "error" not in chunk and not self.include_usage:
                if not chunk.get("choices"):
                    continue  # the usage chunk the caller did not ask for
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
            yield event(chunk)
        yield DONE


def broken(chunk_id: str, model: str, exc: AvengersError) -> list[dict[str, Any]]:
    """How a stream ends when its upstream fails after the first token: a last chunk whose
    finish reason says so, then the error as OpenAI streams one."""
    last = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": ERROR_FINISH}],
    }
    return [last, from_library(exc).body()]


@dataclass
class OpenStream:
    """An upstream stream whose first token has come: ``events`` yields it and what follows;
    closing ``stack`` closes the connection."""

    endpoint: Endpoint
    events: AsyncIterator[dict[str, Any]]
    stack: contextlib.AsyncExitStack
    asked: float  # perf_counter when it was asked


async def open_stream(
    chat: AsyncChatClient,
    endpoint: Endpoint,
    body: dict[str, Any],
    *,
    deadline: Deadline | None,
    first_token_by: Deadline | None,
) -> OpenStream:
    """Open a streamed completion and read it up to its first event with content (or its end),
    by ``first_token_by``; EndpointError when the endpoint fails before that."""
    asked = time.perf_counter()
    stack = contextlib.AsyncExitStack()
    try:
        events = await stack.enter_async_context(
            chat.stream(endpoint, body, deadline=deadline, first_token_by=first_token_by)
        )
        head: list[dict[str, Any]] = []
        async for item in events:
            head.append(item)
            if has_content(item):
                break
    except BaseException:
        await stack.aclose()
        raise
    return OpenStream(endpoint, _chain(head, events), stack, asked)


async def _chain(
    head: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    for item in head:
        yield item
    async for item in rest:
        yield item
