"""Server-sent events as OpenAI streams them: ``data: {json}`` events, ``: keep-alive`` comments
while the answer is being voted, and ``data: [DONE]`` at the end."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MEDIA_TYPE = "text/event-stream"


def event(data: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(exclude_none=True)
    else:
        text = json.dumps(data, separators=(",", ":"))
    return b"data: " + text.encode("utf-8") + b"\n\n"


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
