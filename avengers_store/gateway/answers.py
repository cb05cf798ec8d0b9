"""A voted Answer on the wire: the returned sample's message (text, tool calls, logprobs), its
finish reason and the usage of every sample drawn, as a ``chat.completion`` or as the chunks of
a streamed one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from avengers_store.answering import strategies
from avengers_store.gateway import streaming
from avengers_store.gateway.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    Usage,
)


def tool_calls(answer: strategies.Answer) -> list[dict[str, Any]]:
    """The returned sample's tool calls as OpenAI sends them (an id made up when the model
    gave none, since callers answer a call by its id)."""
    out = []
    for call in answer.tool_calls:
        function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
        out.append(
            {
                "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "type": call.get("type") or "function",
                "function": {
                    "name": function.get("name") or "",
                    "arguments": function.get("arguments") or "",
                },
            }
        )
    return out


def finish_reason(answer: strategies.Answer, calls: list[dict[str, Any]]) -> str:
    """The returned sample's own reason (``length`` when it was cut); a model that said none
    stopped, or called tools."""
    return answer.finish_reason or ("tool_calls" if calls else "stop")


def answer_text(answer: strategies.Answer) -> str:
    sample = answer.returned
    return sample.raw if sample is not None else ""


def completion(
    answer: strategies.Answer, completion_id: str, model: str, info: dict[str, Any] | None
) -> dict[str, Any]:
    """The answer as a ``chat.completion`` body: ``ChatCompletion``'s fields, None left out,
    built as the dict it dumps to (the models' validation and dump took more time than the
    rest of the answer's encoding)."""
    calls = tool_calls(answer)
    text = answer_text(answer)
    message: dict[str, Any] = {"role": "assistant"}
    if text or not calls:
        message["content"] = text
    if calls:
        message["tool_calls"] = calls
    message.setdefault("content", None)  # OpenAI sends null beside calls
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": finish_reason(answer, calls),
    }
    if answer.logprobs is not None:
        choice["logprobs"] = dict(answer.logprobs)
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": Usage.of(answer.tokens_in, answer.tokens_out).model_dump(),
    }
    if info is not None:
        body["avengers"] = info
    return body


def chunks(
    answer: strategies.Answer, completion_id: str, model: str, info: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The answer as the chunks of a streamed completion: the role, the text in pieces (in one
    piece with its logprobs when they were asked for), each tool call whole, the finish reason
    with the route info, and the usage (``ChatWire`` drops it unless the caller asked)."""

    def chunk(delta: Delta, reason: str | None = None, **more: Any) -> dict[str, Any]:
        return ChatCompletionChunk(
            id=completion_id,
            model=model,
            choices=[ChunkChoice(delta=delta, finish_reason=reason, **more.pop("choice", {}))],
            **more,
        ).model_dump(exclude_none=True)

    calls = tool_calls(answer)
    text = answer_text(answer)
    out = [chunk(Delta(role="assistant", content=""))]
    if answer.logprobs is not None and text:
        out.append(chunk(Delta(content=text), choice={"logprobs": dict(answer.logprobs)}))
    else:
        out += [chunk(Delta(content=piece)) for piece in streaming.pieces(text)]
    out += [chunk(Delta(tool_calls=[{"index": i, **call}])) for i, call in enumerate(calls)]
    out.append(chunk(Delta(), finish_reason(answer, calls), avengers=info))
    usage = Usage.of(answer.tokens_in, answer.tokens_out)
    out.append(
        ChatCompletionChunk(id=completion_id, model=model, choices=[], usage=usage).model_dump(
            exclude_none=True
        )
    )
    return out
