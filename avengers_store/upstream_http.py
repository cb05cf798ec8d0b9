"""The asyncio transport to upstreams: aiohttp's connections behind httpx's API
(``httpx_aiohttp``, as the openai SDK's ``DefaultAioHttpClient`` uses them), with its errors told
apart as httpx tells them.

httpx's own async pool slows down as concurrent requests grow (encode/httpx#3215): in front of
an upstream that answers at once, 32 clients got fewer requests/s through it than 8 did, and the
tail was the pool's. aiohttp's pool does not. ``httpx_aiohttp`` maps aiohttp's errors by their
broadest class, so a refused connection or a server that hung up mid-answer arrived as a
``ConnectTimeout``, and the gateway answered 504 (timed out) where the upstream was down (502);
``_translated`` maps them by the narrowest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

# Narrowest first: the first class an error is an instance of decides.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.ReadError),
    (OSError, httpx.ReadError),
)


def _translated(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """The httpx error for what aiohttp raised (``exc`` or the cause ``httpx_aiohttp`` chained
    to its own mapping); None when it was not aiohttp's."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    for source, target in _ERRORS:
        if isinstance(cause, source):
            return target(str(cause) or type(cause).__name__, request=request)
    return None


class _Stream(httpx.AsyncByteStream):
    """A response body whose read errors are translated as the request's are."""

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (httpx.TransportError, aiohttp.ClientError, OSError) as exc:
            translated = _translated(exc, self._request)
            if translated is None:
                raise
            raise translated from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


class UpstreamTransport(AiohttpTransport):
    """``httpx_aiohttp.AiohttpTransport`` with errors translated (module docstring)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError, OSError) as exc:
            translated = _translated(exc, request)
            if translated is None:
                raise
            raise translated from exc
        response.stream = _Stream(response.stream, request)
        return response
