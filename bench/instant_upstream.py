"""An OpenAI-compatible upstream that answers at once: ``POST .../chat/completions`` gets a
fixed one-word reply (``n`` choices when asked for), HTTP/1.1 keep-alive, on loopback. What
``bench/gateway.py``'s tail phase puts behind the gateway and its floor, so that no model queue
hides the gateway's own latency. asyncio streams, its own process; not part of the product.

Example:
    python bench/instant_upstream.py --port 8098
"""

from __future__ import annotations

import argparse
import asyncio
import json


def completion(body: dict) -> bytes:
    n = body.get("n") or 1
    return json.dumps(
        {
            "id": "chatcmpl-instant",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "instant"),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "42"},
                    "finish_reason": "stop",
                }
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n},
        }
    ).encode()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b"{}"
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            payload = completion(body if isinstance(body, dict) else {})
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(serve(ap.parse_args().port))


if __name__ == "__main__":
    main()
