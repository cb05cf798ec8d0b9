"""The Responses API (``POST /v1/responses``), stateless: a request is read as the chat request it
amounts to (``to_chat``), answered by the recipe or a pool model like any chat request (the same
routing, votes, headers, route-log rows and feedback by route id), and its answer written back
as a ``response`` object or its typed stream events (``ResponsesWire``).

Translated: ``input`` (a text, or messages and ``function_call`` / ``function_call_output``
items), ``instructions`` (a system message first), function ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``text.format`` (``json_object`` / ``json_schema`` as a
``response_format``), ``max_output_tokens``, ``temperature``, ``top_p``, ``top_logprobs``,
``user``, ``metadata``, ``stream`` and the recipe's options. Refused, naming the field: what
needs stored state (``previous_response_id``, ``conversation``, ``store: true``, ``background:
true``, ``prompt``), ``include``, ``reasoning``, tools other than functions and input parts
other than text. Other fields are passed to the model, as for a chat request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import ConfigDict, Field

from avengers_store.gateway import streaming
from avengers_store.gateway.errors import bad_request
from avengers_store.gateway.protocol import OpenObject, RecipeOptions

# Responses fields that need state this gateway does not keep, or outputs it does not make.
REFUSED = {
    "previous_response_id": "the gateway keeps no responses: send the whole conversation",
    "conversation": "the gateway keeps no conversations: send the whole conversation",
    "prompt": "stored prompts are not kept: send instructions and input",
    "include": "no extra output (reasoning, sources, ...) is produced",
    "reasoning": "reasoning options are not routed",
}
# Fields the translation reads; the others go to the model as they are.
TRANSLATED = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
        "max_output_tokens", "temperature", "top_p", "top_logprobs", "user", "metadata",
        "stream", "store", "background", *REFUSED,
    }
)  # fmt: skip


class ResponsesFunction(OpenObject):
    """A function tool, the Responses way (flat: no ``function`` object)."""

    type: str
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(OpenObject):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(OpenObject):
    format: TextFormat | None = None


class ResponsesRequest(RecipeOptions):
    """``POST /v1/responses``'s body (and the recipe's options, as for chat)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    tools: list[ResponsesFunction] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    user: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    stream: bool = False
    store: bool | None = None
    background: bool | None = None


def to_chat(req: ResponsesRequest, body: dict[str, Any]) -> dict[str, Any]:
    """The chat request a Responses request amounts to (400 naming the field it cannot be)."""
    for name, why in REFUSED.items():
        if body.get(name) not in (None, [], {}):
            raise bad_request(f"{name}: {why}", param=name)
    for name in ("store", "background"):
        if body.get(name):
            raise bad_request(f"{name}: the gateway answers at once and keeps nothing", param=name)
    chat: dict[str, Any] = {
        k: v for k, v in body.items() if k not in TRANSLATED and v is not None
    }  # recipe options and fields for the model
    messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
    messages += input_messages(req.input)
    chat.update(model=req.model, messages=messages, stream=req.stream)
    if req.stream:
        chat["stream_options"] = {"include_usage": True}
    if req.tools:
        chat["tools"] = [chat_tool(t, i) for i, t in enumerate(req.tools)]
    if req.tool_choice is not None:
        chat["tool_choice"] = chat_tool_choice(req.tool_choice)
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.name is None or fmt.schema_ is None:
            raise bad_request(
                "text.format: a json_schema format needs a name and a schema", param="text.format"
            )
        spec = {"name": fmt.name, "schema": fmt.schema_}
        spec.update({k: v for k, v in (("strict", fmt.strict), ("description", fmt.description))
                     if v is not None})  # fmt: skip
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
    for ours, theirs in (
        ("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"), ("user", "user"),
        ("metadata", "metadata"),
    ):  # fmt: skip
        if getattr(req, ours) is not None:
            chat[theirs] = getattr(req, ours)
    if req.top_logprobs is not None:
        chat.update(logprobs=True, top_logprobs=req.top_logprobs)
    return chat


def input_messages(given: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages of a Responses ``input``: a text is one user message; items are messages
    (text parts only), ``function_call`` items (an assistant message's tool calls; consecutive
    ones share a message) and ``function_call_output`` items (tool messages)."""
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(given):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise bad_request(f"{where}.role: expected user, system, developer or assistant",
                                  param=f"{where}.role")  # fmt: skip
            out.append({"role": role, "content": message_text(item.get("content"), where)})
        elif kind == "function_call":
            call = {
                "id": _text(item, "call_id", where),
                "type": "function",
                "function": {
                    "name": _text(item, "name", where),
                    "arguments": _text(item, "arguments", where),
                },
            }
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = message_text(output, where)
            out.append(
                {"role": "tool", "tool_call_id": _text(item, "call_id", where), "content": output}
            )
        else:
            raise bad_request(
                f"{where}.type: {kind!r} items are not supported (message, function_call, "
                "function_call_output)",
                param=f"{where}.type",
            )
    if not any(m["role"] == "user" for m in out):
        raise bad_request("input: the conversation has no user message", param="input")
    return out


def message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: expected a text or a list of parts",
                          param=f"{where}.content")  # fmt: skip
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(
            part.get("text"), str
        ):
            raise bad_request(
                f"{where}.content[{j}].type: only text parts are routed, got {kind!r}",
                param=f"{where}.content[{j}].type",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _text(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise bad_request(f"{where}.{name}: expected a string", param=f"{where}.{name}")
    return value


def chat_tool(tool: ResponsesFunction, i: int) -> dict[str, Any]:
    if tool.type != "function" or tool.name is None:
        raise bad_request(
            f"tools[{i}].type: only function tools are routed, got {tool.type!r}",
            param=f"tools[{i}].type",
        )
    function: dict[str, Any] = {"name": tool.name}
    for name in ("description", "parameters", "strict"):
        if getattr(tool, name) is not None:
            function[name] = getattr(tool, name)
    return {"type": "function", "function": function}


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request(
        "tool_choice: expected none, auto, required or {type: function, name}",
        param="tool_choice",
    )


# -- the answer ---------------------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


class ResponsesWire:
    """The Responses API on the wire: a ``response`` object for a chat completion, and for a
    stream of chunks the typed events (``response.created``, ``response.in_progress``,
    ``response.output_item.added``, ``response.content_part.added``,
    ``response.output_text.delta`` / ``.done``, ``response.function_call_arguments.delta`` /
    ``.done``, ``response.content_part.done``, ``response.output_item.done``, then
    ``response.completed``, ``response.incomplete`` when cut at ``max_output_tokens`` or
    ``response.failed``)."""

    name = "responses"

    def __init__(self, req: ResponsesRequest, body: dict[str, Any]) -> None:
        self.req, self.given = req, body
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())

    def bind(self, route_id: uuid.UUID) -> None:
        """Name the response after the request's route id (feedback takes either)."""
        self.id = f"resp_{route_id.hex}"

    def response(self, **fields: Any) -> dict[str, Any]:
        fmt = (self.given.get("text") or {}).get("format") or {"type": "text"}
        base = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": "in_progress",
            "model": self.req.model,
            "output": [],
            "error": None,
            "incomplete_details": None,
            "instructions": self.req.instructions,
            "max_output_tokens": self.req.max_output_tokens,
            "temperature": self.req.temperature,
            "top_p": self.req.top_p,
            "parallel_tool_calls": self.req.parallel_tool_calls is not False,
            "tool_choice": self.given.get("tool_choice") or "auto",
            "tools": self.given.get("tools") or [],
            "text": {"format": fmt},
            "metadata": self.req.metadata or {},
            "user": self.req.user,
            "store": False,
            "usage": None,
        }
        return {**base, **fields}

    def body(self, completion: dict[str, Any]) -> dict[str, Any]:
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        output = []
        reason = choice.get("finish_reason")
        item_status = "incomplete" if reason == "length" else "completed"
        if message.get("content"):
            logprobs = (choice.get("logprobs") or {}).get("content") or []
            output.append(self.message_item(message["content"], item_status, logprobs))
        for i, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            output.append(
                self.call_item(i, call.get("id"), function.get("name"), function.get("arguments"))
            )
        used = completion.get("usage") or {}
        return self.response(
            model=completion.get("model", self.req.model),
            output=output,
            **self.ending(reason),
            usage=usage(used.get("prompt_tokens") or 0, used.get("completion_tokens") or 0),
            **({"avengers": completion["avengers"]} if completion.get("avengers") else {}),
        )

    @staticmethod
    def ending(reason: str | None) -> dict[str, Any]:
        if reason == "length":
            return {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
        return {"status": "completed", "completed_at": int(time.time())}

    def message_item(self, text: str, status: str, logprobs: list[Any]) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
        return {
            "id": f"msg_{self.id[5:]}",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part],
        }

    def call_item(
        self,
        i: int,
        call_id: str | None,
        name: str | None,
        arguments: str | None,
        status: str = "completed",
    ) -> dict[str, Any]:
        return {
            "id": f"fc_{self.id[5:]}_{i}",
            "type": "function_call",
            "status": status,
            "call_id": call_id or f"call_{self.id[5:]}_{i}",
            "name": name or "",
            "arguments": arguments or "",
        }

    async def events(self, chunks: streaming.Chunks) -> AsyncIterator[bytes]:
        stream = _EventStream(self)
        for item in stream.start():
            yield item
        async for chunk in chunks:
            if chunk is None:
                yield streaming.KEEPALIVE
                continue
            for item in stream.add(chunk):
                yield item
            if stream.failed:
                return
        for item in stream.end():
            yield item


class _EventStream:
    """The typed events of one streamed response, from its chat chunks."""

    def __init__(self, wire: ResponsesWire) -> None:
        self.wire = wire
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # finished items, in output order
        self.text: list[str] | None = None  # the open message's text
        self.logprobs: list[Any] = []
        self.calls: dict[int, dict[str, Any]] = {}  # open function calls by chat index
        self.reason: str | None = None
        self.used = usage(0, 0)
        self.model = wire.req.model
        self.failed = False

    def event(self, kind: str, **fields: Any) -> bytes:
        self.sequence += 1
        return streaming.event({"type": kind, "sequence_number": self.sequence, **fields}, kind)

    def start(self) -> list[bytes]:
        response = self.wire.response()
        return [
            self.event("response.created", response=response),
            self.event("response.in_progress", response=response),
        ]

    @property
    def next_index(self) -> int:
        return len(self.output) + (self.text is not None) + len(self.calls)

    def add(self, chunk: dict[str, Any]) -> list[bytes]:
        if "error" in chunk:
            return self.fail(chunk["error"])
        out: list[bytes] = []
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            u = chunk["usage"]
            self.used = usage(u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                out += self.open_text()
                logprobs = (choice.get("logprobs") or {}).get("content") or []
                self.logprobs += logprobs
                self.text.append(content)  # type: ignore[union-attr]
                out.append(
                    self.event(
                        "response.output_text.delta", item_id=self.message_id,
                        output_index=self.text_index, content_index=0, delta=content,
                        logprobs=logprobs,
                    )
                )  # fmt: skip
            for call in delta.get("tool_calls") or []:
                out += self.add_call(call)
            if choice.get("finish_reason"):
                self.reason = choice["finish_reason"]
        return out

    @property
    def message_id(self) -> str:
        return f"msg_{self.wire.id[5:]}"

    def open_text(self) -> list[bytes]:
        if self.text is not None:
            return []
        self.text_index = self.next_index
        self.text = []
        item = {"id": self.message_id, "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}  # fmt: skip
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self.event("response.output_item.added", output_index=self.text_index, item=item),
            self.event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=self.text_index,
                content_index=0,
                part=part,
            ),  # fmt: skip
        ]

    def close_text(self, status: str) -> list[bytes]:
        if self.text is None:
            return []
        text = "".join(self.text)
        item = self.wire.message_item(text, status, self.logprobs)
        part = item["content"][0]
        self.text = None
        self.output.append(item)
        return [
            self.event(
                "response.output_text.done", item_id=item["id"], output_index=self.text_index,
                content_index=0, text=text, logprobs=self.logprobs,
            ),
            self.event(
                "response.content_part.done", item_id=item["id"], output_index=self.text_index,
                content_index=0, part=part,
            ),
            self.event("response.output_item.done", output_index=self.text_index, item=item),
        ]  # fmt: skip

    def add_call(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = delta.get("index", len(self.calls))
        function = delta.get("function") or {}
        call = self.calls.get(index)
        if call is None:
            out += self.close_text("completed")
            position = self.next_index
            item = self.wire.call_item(
                position, delta.get("id"), function.get("name"), "", status="in_progress"
            )
            call = self.calls[index] = {"item": item, "output_index": position}
            out.append(self.event("response.output_item.added", output_index=position, item=item))
        elif function.get("name"):
            call["item"]["name"] += function["name"]
        if function.get("arguments"):
            call["item"]["arguments"] += function["arguments"]
            out.append(
                self.event(
                    "response.function_call_arguments.delta", item_id=call["item"]["id"],
                    output_index=call["output_index"], delta=function["arguments"],
                )
            )  # fmt: skip
        return out

    def close_calls(self) -> list[bytes]:
        out: list[bytes] = []
        for index in sorted(self.calls):
            call = self.calls[index]
            item = {**call["item"], "status": "completed"}
            out += [
                self.event(
                    "response.function_call_arguments.done", item_id=item["id"],
                    output_index=call["output_index"], name=item["name"],
                    arguments=item["arguments"],
                ),
                self.event("response.output_item.done", output_index=call["output_index"],
                           item=item),
            ]  # fmt: skip
            self.output.append(item)
        self.calls = {}
        return out

    def end(self) -> list[bytes]:
        cut = self.reason == "length"
        out = self.close_text("incomplete" if cut else "completed") + self.close_calls()
        response = self.wire.response(
            model=self.model, output=self.output, usage=self.used, **self.wire.ending(self.reason)
        )
        kind = "response.incomplete" if cut else "response.completed"
        return [*out, self.event(kind, response=response)]

    def fail(self, error: dict[str, Any]) -> list[bytes]:
        self.failed = True
        out = self.close_text("incomplete") + self.close_calls()
        response = self.wire.response(
            model=self.model,
            output=self.output,
            usage=self.used,
            status="failed",
            error={"code": error.get("code") or "server_error", "message": error.get("message")},
        )
        return [*out, self.event("response.failed", response=response)]
