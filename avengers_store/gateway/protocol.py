"""The OpenAI wire format the gateway speaks, declared once: request and response bodies of
``/v1/chat/completions`` (plain and streamed), ``/v1/models``, ``/v1/route``, ``/v1/feedback``
and error bodies (the Responses API's are in ``responses``).

Every field of a chat request is honoured or refused with a 400 naming it, never dropped. The
OpenAI sampling and output fields (``tools``, ``tool_choice``, ``parallel_tool_calls``,
``response_format``, ``logprobs``, ``top_logprobs``, ``top_p``, ``presence_penalty``,
``frequency_penalty``, ``stop``, ``seed``, ``user``) and fields the gateway does not know (a
server's own, such as vLLM's ``top_k``) are sent to the model as the caller gave them;
``max_completion_tokens`` is the token cap (sent as ``max_tokens``), ``metadata`` is kept in the
request's route-log row. The legacy ``functions`` / ``function_call`` are refused for
``avengers`` (send ``tools``). The recipe's options (``samples``, ``strategy``, ``top_n``,
``method``, ``threshold``, ``route_on``, ``task_type``, ``tradeoff``, ``max_cost``,
``ood_policy``, ...) are extra body fields, which OpenAI SDKs send with ``extra_body``; a
request naming a pool model (a passthrough) is refused them, and sent the rest as it is.
"""

from __future__ import annotations

import copy
import math
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from avengers_store.answering.prompts import TASK_TYPES
from avengers_store.answering.strategies import STRATEGIES

if TYPE_CHECKING:
    from avengers_store.routing import RouteDecision

MAX_SAMPLES = 64
MAX_TOP_N = 16
Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]
TaskType = Literal[TASK_TYPES]  # type: ignore[valid-type]
RouteOn = Literal["last_user", "conversation"]
OodPolicy = Literal["flag", "best-overall", "widen"]


class OpenObject(BaseModel):
    """An object of a request: fields the gateway does not know are kept, and sent to the model
    as the caller gave them."""

    model_config = ConfigDict(extra="allow")


class ContentPart(OpenObject):
    type: str
    text: str | None = None


class ChatMessage(OpenObject):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The text of the message (text parts joined; other parts ignored)."""
        if isinstance(self.content, list):
            return "\n".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(OpenObject):
    include_usage: bool = False


class FunctionSpec(OpenObject):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenObject):
    """A tool the model may call (OpenAI's chat format: a function and its JSON Schema)."""

    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(OpenObject):
    name: str = Field(min_length=1)


class NamedToolChoice(OpenObject):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(OpenObject):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(OpenObject):
    """``text``, ``json_object`` or ``json_schema`` (with its ``json_schema`` object)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# Recipe options: meaningful for ``model: "avengers"`` only, refused on a passthrough.
RECIPE_ONLY = (
    "samples", "strategy", "top_n", "threshold", "route_on", "task_type", "method",
    "ood_policy", "tradeoff", "max_cost", "max_latency_ms", "latency_weight", "exploration",
    "exploration_share", "exploration_overlap", "production_weight", "models",
)  # fmt: skip
# Fields the gateway reads itself and does not send to a routed model as they are.
OWN_FIELDS = frozenset(
    {
        *RECIPE_ONLY, "timeout", "model", "messages", "stream", "stream_options", "n",
        "temperature", "max_tokens", "max_completion_tokens", "metadata",
    }
)  # fmt: skip


class PolicyOptions(BaseModel):
    """A request's routing policy fields (``routing.Policy``; None: the server's)."""

    method: Literal["avengers", "paper"] | None = None
    ood_policy: OodPolicy | None = None
    tradeoff: float | None = Field(None, ge=0.0, le=1.0)
    max_cost: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    max_latency_ms: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    latency_weight: float | None = Field(None, ge=0.0, le=1.0)
    exploration: Literal["off", "targeted", "thompson", "epsilon"] | None = None
    exploration_share: float | None = Field(None, ge=0.0, le=1.0)
    exploration_overlap: float | None = Field(None, ge=0.0, lt=1.0)
    production_weight: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    models: list[str] | None = Field(None, min_length=1)

    def policy_changes(self) -> dict[str, Any]:
        """The policy fields the request set, by name."""
        return {
            name: value
            for name in PolicyOptions.model_fields
            if (value := getattr(self, name)) is not None
        }


class RecipeOptions(PolicyOptions):
    """The recipe's per-request options (None: the server's default)."""

    samples: int | None = Field(None, ge=1, le=MAX_SAMPLES)
    strategy: Strategy | None = None
    top_n: int | None = Field(None, ge=1, le=MAX_TOP_N)
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
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    user: str | None = None
    n: int | None = Field(None, ge=1, le=1)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    def passed_on(self, body: dict[str, Any]) -> dict[str, Any]:
        """The fields sent to a routed model as the caller gave them (in ``body``, the request
        as it came): OpenAI's sampling and output fields and those the gateway does not know."""
        return {k: v for k, v in body.items() if k not in OWN_FIELDS and v is not None}

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


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
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = "stop"
    logprobs: dict[str, Any] | None = None


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
    novelty: float | None = None
    ood: bool | None = None
    ood_policy: str | None = None
    exploration: str | None = None
    explored: bool | None = None
    expected_cost: float | None = None  # of the request on the first candidate
    over_budget: bool = False


# RouteInfo's numeric and flag fields taken from the decision, as its validation converts them
# (a Decimal cost, an int distance): what ``route_info`` does in its place.
_INFO_KINDS: dict[str, type] = {
    "clustering": int, "cluster": int, "distance": float, "novelty": float,
    "expected_cost": float, "ood": bool, "explored": bool, "over_budget": bool,
}  # fmt: skip


def route_info(fields: dict[str, Any]) -> dict[str, Any]:
    """``RouteInfo(**fields).model_dump(exclude_none=True)`` built directly (a response's
    encoding spent more time validating and dumping the model than on the rest): its fields in
    order, defaults for those not given, None left out."""
    out: dict[str, Any] = {}
    for name, field in RouteInfo.model_fields.items():
        if name in fields:
            value = fields[name]
        else:  # a copy, as the model's own: the default list or dict is the class's
            value = copy.copy(field.get_default(call_default_factory=True))
        if value is None:
            continue
        kind = _INFO_KINDS.get(name)
        out[name] = kind(value) if kind is not None else value
    return out


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
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


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


class RouteRequest(PolicyOptions):
    """``/v1/route``: a text (``input``), a conversation (``messages``, routed like a chat
    request) or a vector already in the serving space (``vector``); ``seed`` makes
    exploration's draws reproducible."""

    model_config = ConfigDict(extra="allow")
    input: str | None = None
    messages: list[ChatMessage] | None = None
    vector: list[float] | None = None
    top_n: int = Field(3, ge=1, le=MAX_TOP_N)
    route_on: RouteOn | None = None
    seed: int | None = None


class RouteCandidate(BaseModel):
    model: str
    rank: int
    score: float | None
    mean_score: float | None
    n: int | None
    wilson_low: float | None
    wilson_high: float | None
    production_n: int | None = None
    production_mean: float | None = None
    expected_cost: float | None = None
    expected_latency_ms: float | None = None
    utility: float | None = None
    over_budget: bool | None = None
    evidence: float | None = None
    propensity: float | None = None


class RouteResponse(BaseModel):
    object: Literal["avengers.route"] = "avengers.route"
    route_id: str
    clustering: int
    cluster: int
    distance: float
    candidates: list[RouteCandidate]
    novelty: float | None = None
    ood: bool | None = None
    ood_policy: str | None = None
    production_weight: float | None = None
    exploration: str | None = None
    explored: bool | None = None
    tradeoff: float | None = None
    max_cost: float | None = None
    over_budget: bool = False


class FeedbackRequest(BaseModel):
    """``/v1/feedback``: a score in [0, 1] for the answer of request ``route_id`` (the
    x-avengers-route-id it got); ``model`` None scores the model whose answer was returned."""

    route_id: str = Field(min_length=1)
    score: float = Field(ge=0.0, le=1.0)
    model: str | None = Field(None, min_length=1)
    source: str = Field("user", min_length=1)


class FeedbackResponse(BaseModel):
    object: Literal["avengers.feedback"] = "avengers.feedback"
    id: int
    route_id: str
    model: str
    score: float
    source: str
    replaced: bool


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def token_counts(usage: dict[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens of an upstream ``usage`` object; 0 for what it leaves out."""
    usage = usage or {}
    return usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0


def finite(value: float | None) -> float | None:
    """``value`` as JSON can carry it: JSON has no infinity, so an infinitely novel query (every
    calibration query sat on its centroid) is sent as a large number."""
    if value is None:
        return None
    return value if math.isfinite(value) else 1e300


def decision_fields(route_id: uuid.UUID, decision: RouteDecision) -> dict[str, Any]:
    """The fields ``RouteInfo`` and ``RouteResponse`` both take from a route decision: where
    the query landed, the loop's flags and whether it is over budget."""
    return {
        "route_id": str(route_id),
        "clustering": decision.clustering_id,
        "cluster": decision.cluster,
        "distance": decision.distance,
        "novelty": finite(decision.novelty),
        "ood": decision.ood,
        "ood_policy": decision.ood_policy,
        "exploration": decision.exploration,
        "explored": decision.explored,
        "over_budget": decision.over_budget,
    }
