"""The OpenAI wire format the gateway speaks, declared once: request and response bodies of
``/v1/chat/completions`` (plain and streamed), ``/v1/models``, ``/v1/route`` and error bodies.

Unknown request fields are accepted and ignored, as OpenAI-compatible servers do; the recipe's
options (``samples``, ``strategy``, ``top_n``, ``method``, ``threshold``, ``route_on``,
``task_type``, ``timeout``) are extra body fields, which OpenAI SDKs send with ``extra_body``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from avengers_store.answering.prompts import TASK_TYPES
from avengers_store.answering.strategies import STRATEGIES

MAX_SAMPLES = 64
MAX_TOP_N = 16
Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]
TaskType = Literal[TASK_TYPES]  # type: ignore[valid-type]
RouteOn = Literal["last_user", "conversation"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The text of the message (text parts joined; other parts ignored)."""
        if isinstance(self.content, list):
            return "\n".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class RecipeOptions(BaseModel):
    """The recipe's per-request options (None: the server's default)."""

    samples: int | None = Field(None, ge=1, le=MAX_SAMPLES)
    strategy: Strategy | None = None
    top_n: int | None = Field(None, ge=1, le=MAX_TOP_N)
    method: Literal["avengers", "paper"] | None = None
    threshold: float | None = Field(None, gt=0.0, le=1.0)
    route_on: RouteOn | None = None
    task_type: TaskType | None = None
    timeout: float | None = Field(None, gt=0.0)  # seconds, at most the gateway's own


class ChatCompletionRequest(RecipeOptions):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    n: int | None = Field(None, ge=1, le=1)

    def passed_on(self) -> dict[str, Any]:
        """Sampling fields sent to the models as the caller gave them."""
        return {k: v for k, v in (("stop", self.stop), ("seed", self.seed)) if v is not None}

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = "stop"
    logprobs: None = None


class RouteInfo(BaseModel):
    """What the router decided and how the vote went (also in the x-avengers-* headers)."""

    route_id: str
    clustering: int | None = None
    cluster: int | None = None
    distance: float | None = None
    candidates: list[str] = []
    models: list[str] = []
    vote_share: float | None = None
    votes: dict[str, int] = {}
    fallbacks: list[str] = []
    strategy: str | None = None
    samples: int = 0


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    avengers: RouteInfo | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    avengers: RouteInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "avengers"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RouteRequest(BaseModel):
    """``/v1/route``: a text (``input``), a conversation (``messages``, routed like a chat
    request) or a vector already in the serving space (``vector``)."""

    model_config = ConfigDict(extra="allow")
    input: str | None = None
    messages: list[ChatMessage] | None = None
    vector: list[float] | None = None
    top_n: int = Field(3, ge=1, le=MAX_TOP_N)
    method: Literal["avengers", "paper"] | None = None
    route_on: RouteOn | None = None


class RouteCandidate(BaseModel):
    model: str
    rank: int
    score: float | None
    mean_score: float | None
    n: int | None
    wilson_low: float | None
    wilson_high: float | None


class RouteResponse(BaseModel):
    object: Literal["avengers.route"] = "avengers.route"
    route_id: str
    clustering: int
    cluster: int
    distance: float
    candidates: list[RouteCandidate]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
