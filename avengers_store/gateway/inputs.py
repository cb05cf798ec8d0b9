"""What a request asks for, read against the server's defaults: the text the router embeds, the
deadline it must be answered by, its quality-cost trade-off and cost ceiling."""

from __future__ import annotations

import time
from collections.abc import Sequence

from avengers_store.answering.sampling import Deadline
from avengers_store.gateway.errors import bad_request
from avengers_store.gateway.protocol import ChatCompletionRequest, ChatMessage
from avengers_store.gateway.settings import GatewaySettings


def request_deadline(
    req: ChatCompletionRequest, settings: GatewaySettings, started: float
) -> Deadline:
    """When the request must be answered by: the gateway's ``timeout_s`` from its arrival
    (``started``, a ``perf_counter`` reading), or the request's shorter ``timeout``."""
    seconds = settings.timeout_s
    if req.timeout is not None:
        if req.timeout > settings.timeout_s:
            raise bad_request(
                f"timeout: at most {settings.timeout_s:g} seconds (the gateway's --timeout), "
                f"got {req.timeout:g}",
                param="timeout",
            )
        seconds = req.timeout
    elapsed = time.perf_counter() - started
    return Deadline(time.monotonic() - elapsed + seconds, seconds)


def routed_text(messages: Sequence[ChatMessage], route_on: str) -> str:
    """The text the router embeds: the last user message, or the conversation."""
    if route_on == "conversation":
        text = "\n".join(m.text() for m in messages if m.role in ("system", "user", "assistant"))
        if any(m.role == "user" and m.text().strip() for m in messages):
            return text
    else:
        for message in reversed(messages):
            if message.role == "user" and message.text().strip():
                return message.text()
    raise bad_request("the conversation has no user message with text", param="messages")
