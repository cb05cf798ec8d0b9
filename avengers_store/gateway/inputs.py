"""What a request asks for, read against its key's policy and the server's defaults: the text
the router embeds, the deadline it must be answered by, its routing policy (the server's <
the key's defaults < the request's own fields, within the key's models) and its samples."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from avengers_store.answering.sampling import Deadline
from avengers_store.gateway.errors import GatewayError, bad_request
from avengers_store.gateway.keys import Admission
from avengers_store.gateway.protocol import (
    ChatMessage,
    PolicyOptions,
    RecipeOptions,
)
from avengers_store.gateway.settings import GatewaySettings


def policy_changes(req: PolicyOptions, grant: Admission | None) -> dict[str, Any]:
    """The routing policy fields a request routes with over the server's default: its key's
    default routing options, then its own fields; ``models`` kept within the key's models (a
    request naming another is refused, 400 naming ``models``)."""
    changes = {**(grant.policy.routing if grant is not None else {}), **req.policy_changes()}
    allowed = grant.policy.models if grant is not None else None
    if allowed is not None:
        asked = changes.get("models")
        if asked is None:
            changes["models"] = list(allowed)
        elif outside := [m for m in asked if m not in allowed]:
            raise GatewayError(
                400,
                f"models: this key may not use {outside[0]!r} (it may use {', '.join(allowed)})",
                param="models",
                code="model_not_allowed",
            )
    return changes


def check_model(model: str, grant: Admission | None) -> None:
    """A pool model named directly must be one the key may use (400 naming ``model``)."""
    allowed = grant.policy.models if grant is not None else None
    if allowed is not None and model not in allowed:
        raise GatewayError(
            400,
            f"this key may not use the model {model!r} (it may use avengers, routed among "
            f"{', '.join(allowed)}, or one of them by name)",
            param="model",
            code="model_not_allowed",
        )


def samples_for(req: RecipeOptions, settings: GatewaySettings, grant: Admission | None) -> int:
    """The samples a request draws per model: its own, else the server's default, at most its
    key's ceiling (a request asking for more is refused, 400 naming ``samples``)."""
    ceiling = grant.policy.max_samples if grant is not None else None
    if req.samples is not None:
        if ceiling is not None and req.samples > ceiling:
            raise bad_request(
                f"samples: this key may draw at most {ceiling} per model, got {req.samples}",
                param="samples",
                code="samples_not_allowed",
            )
        return req.samples
    return min(settings.samples, ceiling) if ceiling is not None else settings.samples


def request_deadline(req: RecipeOptions, settings: GatewaySettings, started: float) -> Deadline:
    """When the request must be answered by: the gateway's ``timeout_s`` from its arrival
    (``started``, a ``perf_counter`` reading), or the request's shorter ``timeout``."""
    seconds = settings.timeout_s
    if req.timeout is not None:
        if req.timeout > settings.timeout_s:
            raise bad_request(
                f"timeout: at most {settings.timeout_s:g} seconds (the gateway's own timeout), "
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
