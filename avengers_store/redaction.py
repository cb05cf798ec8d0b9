"""No key leaves the process: every byte an upstream (a model or embedding endpoint) sends is
read through one HTTP transport that takes out the API keys this process has configured and
anything shaped like a credential, before any code can quote it to a caller, a log or a table.

Upstreams quote what they were sent: a careless server echoes the ``Authorization`` header in an
error, a proxy in a 200 body that is not JSON. So the redaction sits where their text enters,
not where it leaves (answers, errors, route-log rows, CLI messages, the gateway's responses and
its streamed events all start from these bytes): ``sync_client`` and ``async_client`` make the
``httpx`` clients every upstream call uses, and a test checks no other is made.

What is taken out, replaced by ``***``:

- every key value configured in this process: the value of each ``api_key_env`` variable an
  ``Endpoint`` or embedder names (``remember_env``), as sent and as JSON escapes it;
- ``Bearer <token>``, and the shapes of OpenAI keys (``sk-...``) and of the gateway's own
  (``avk-...``), whoever they belong to.

Bodies are redacted as they stream: text is passed on up to the last point where no secret can
straddle the cut (a run of token characters, or a configured key's length, is held back until
it ends), so a streamed answer is not delayed by more than a token.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator

import httpx

from avengers_store.upstream_http import UpstreamTransport

MASK = b"***"
# Characters a token (bearer token, API key) is made of.
_TOKEN = rb"A-Za-z0-9._~+/=\-"
_TOKEN_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=-")
_SPACE_BYTES = frozenset(b" \t\r\n")
_SHAPES = (
    rb"(?P<bearer>(?i:\bbearer\s+))[" + _TOKEN + rb"]{8,}",
    rb"(?<![A-Za-z])(?:sk|avk)-[A-Za-z0-9_\-]{8,}",
)
# Past this much held-back text the stream is passed on anyway (a run of token characters this
# long is data, not a key).
_HOLD_MAX = 8192
_MIN_KEY = 6  # shorter values are not keys (and would mask ordinary words)


class _Keys:
    """The key values configured in this process, and the pattern that finds them."""

    def __init__(self) -> None:
        self._values: set[bytes] = set()
        self._lock = threading.Lock()
        self.longest = 0
        self.pattern = re.compile(b"|".join(_SHAPES))

    def add(self, value: str) -> None:
        value = value.strip()
        if len(value) < _MIN_KEY:
            return
        forms = {value.encode("utf-8"), json.dumps(value)[1:-1].encode("utf-8")}
        with self._lock:
            if forms <= self._values:
                return
            self._values |= forms
            self.longest = max(len(f) for f in self._values)
            keys = sorted(self._values, key=len, reverse=True)
            self.pattern = re.compile(b"|".join([*(re.escape(k) for k in keys), *_SHAPES]))


_KEYS = _Keys()


def remember(value: str | None) -> None:
    """Treat ``value`` (an API key) as a secret from now on."""
    if value:
        _KEYS.add(value)


def remember_env(name: str | None) -> None:
    """Treat the value of environment variable ``name`` (an ``api_key_env``) as a secret."""
    if name:
        remember(os.environ.get(name))


def _mask(match: re.Match[bytes]) -> bytes:
    return (match.group("bearer") or b"") + MASK  # "Bearer ***" still says what was there


def redact_bytes(data: bytes) -> bytes:
    return _KEYS.pattern.sub(_mask, data)


def redact(text: str) -> str:
    """``text`` with every configured key and credential-shaped token replaced by ``***``."""
    return redact_bytes(text.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass")


class Redactor:
    """Redacts a byte stream piece by piece: ``feed`` returns what is safe to pass on now,
    ``finish`` the rest. The output is ``redact_bytes`` of the whole, however it is cut."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._held + data
        cut = self._safe_cut(buffer)
        self._held = buffer[cut:]
        return redact_bytes(buffer[:cut])

    def finish(self) -> bytes:
        out, self._held = redact_bytes(self._held), b""
        return out

    @staticmethod
    def _safe_cut(buffer: bytes) -> int:
        """Where ``buffer`` can be cut so that no secret straddles the cut: before a trailing
        run of token characters (and a ``Bearer`` before it), a configured key's length back,
        and never inside a match or a token."""
        end = len(buffer)
        floor = max(0, end - _HOLD_MAX)
        cut = end
        while cut > floor and buffer[cut - 1] in _TOKEN_BYTES:
            cut -= 1
        space = cut
        while space > floor and buffer[space - 1] in _SPACE_BYTES:
            space -= 1
        if space < cut and buffer[max(floor, space - 6) : space].lower() == b"bearer":
            cut = space - 6
        cut = min(cut, end - max(0, _KEYS.longest - 1))
        while floor < cut < end and {buffer[cut - 1], buffer[cut]} <= _TOKEN_BYTES:
            cut -= 1
        for match in _KEYS.pattern.finditer(buffer):
            if match.start() < cut < match.end():
                cut = match.start()
                break
        return max(cut, floor)


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    # The body below is decoded and may change length: encoding and length no longer hold.
    return [
        (name, redact(value))
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length")
    ]


class _Body:
    """A response's body, redacted as it is read (``_SyncBody`` and ``_AsyncBody`` read it)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @staticmethod
    def _passed_on(redactor: Redactor, piece: bytes | None) -> tuple[bytes, ...]:
        """What ``redactor`` passes on for ``piece`` (None: the body's end); never an empty
        piece."""
        out = redactor.finish() if piece is None else redactor.feed(piece)
        return (out,) if out else ()


class _SyncBody(_Body, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        redactor = Redactor()
        for piece in self._response.iter_bytes():
            yield from self._passed_on(redactor, piece)
        yield from self._passed_on(redactor, None)

    def close(self) -> None:
        self._response.close()


class _AsyncBody(_Body, httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        redactor = Redactor()
        async for piece in self._response.aiter_bytes():
            for out in self._passed_on(redactor, piece):
                yield out
        for out in self._passed_on(redactor, None):
            yield out

    async def aclose(self) -> None:
        await self._response.aclose()


def _redacted(response: httpx.Response, request: httpx.Request, body: type) -> httpx.Response:
    """``response`` with its headers redacted and its body read through ``body`` (the sync or
    async redacting stream)."""
    response.request = request
    return httpx.Response(
        response.status_code,
        headers=_headers(response),
        stream=body(response),
        extensions=response.extensions,
        request=request,
    )


class RedactingTransport(httpx.BaseTransport):
    """An ``httpx`` transport whose responses come redacted (headers and body)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return _redacted(self._inner.handle_request(request), request, _SyncBody)

    def close(self) -> None:
        self._inner.close()


class AsyncRedactingTransport(httpx.AsyncBaseTransport):
    """``RedactingTransport`` for ``httpx.AsyncClient``."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return _redacted(await self._inner.handle_async_request(request), request, _AsyncBody)

    async def aclose(self) -> None:
        await self._inner.aclose()


def sync_client(*, timeout: float, max_connections: int = 4) -> httpx.Client:
    """The ``httpx.Client`` for calling upstreams: redacted responses, a pool of
    ``max_connections``."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    inner = httpx.HTTPTransport(limits=limits)
    return httpx.Client(timeout=httpx.Timeout(timeout), transport=RedactingTransport(inner))


def async_client(*, timeout: float, max_connections: int = 64) -> httpx.AsyncClient:
    """``sync_client`` for asyncio, on aiohttp's connections (``upstream_http``: httpx's own
    async pool slows down as concurrent requests grow)."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    inner = UpstreamTransport(limits=limits)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout), transport=AsyncRedactingTransport(inner)
    )
