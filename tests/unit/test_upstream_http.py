"""The asyncio upstream transport tells a refused connection, a server that hangs up mid-answer
and a silent one apart, as httpx does (a refused connection once arrived as a timeout)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from avengers_store.redaction import async_client


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(reply: bytes | None):
    """A server on loopback that reads a request and sends ``reply`` then hangs up (None: says
    nothing and keeps the connection open)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if reply is None:
            await asyncio.sleep(5)
            return
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_refused_connection_is_a_connect_error_not_a_timeout():
    async def main() -> None:
        async with async_client(timeout=5) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{_closed_port()}/")

    asyncio.run(main())


def test_a_hang_up_mid_body_is_a_protocol_error_and_silence_a_read_timeout():
    async def main() -> None:
        cut, cut_port = await _serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\nshort"
        )
        silent, silent_port = await _serve(None)
        async with cut, silent, async_client(timeout=0.3) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"http://127.0.0.1:{cut_port}/")
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"http://127.0.0.1:{silent_port}/")

    asyncio.run(main())
