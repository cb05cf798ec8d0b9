"""The sampling protocol without I/O: what to send to an OpenAI-compatible chat endpoint, when to
retry, and how to read the answer, written once for the sync and the async chat clients.

``sample_steps`` is a generator that yields actions (``Post``: send this request; ``Sleep``: back
off) and is sent their outcomes (an ``httpx.Response``, or the ``httpx.TransportError`` the send
raised; None after a sleep); it returns a ``SampleBatch``. ``drive`` and ``adrive`` run it with an
``httpx.Client`` / ``httpx.AsyncClient``. Repeated sampling asks for ``n`` choices in one request;
a server that returns fewer is topped up, and a server that refuses ``n`` above its limit
(llama.cpp caps it at its slot count) is asked again within the limit it names, remembered per
endpoint. Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; other
4xx and malformed bodies are not, because asking again would get the same answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from avengers_store.errors import ConfigurationError, EndpointError

Message = Mapping[str, str]
Messages = Sequence[Message]

DEFAULT_MAX_TOKENS = 512
_MAX_BACKOFF_S = 8.0
_RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class Endpoint:
    """One callable model: its pool name, API base URL and the name the server knows it by.

    ``base_url`` is the OpenAI-style base (``http://vllm-qwen:8000/v1``); a bare host
    (``http://vllm-qwen:8000``) gets ``/v1`` appended. ``api_key_env`` names the environment
    variable holding the key (sent as ``Authorization: Bearer``); the key itself is never stored.
    """

    model: str
    base_url: str
    served_name: str
    api_key_env: str | None = None

    @property
    def chat_url(self) -> str:
        base = self.base_url.rstrip("/")
        if urlsplit(base).path in ("", "/"):
            base += "/v1"
        return base + "/chat/completions"

    def describe(self) -> str:
        """How messages and logs name the endpoint: never with credentials from its URL."""
        return f"model {self.model!r} ({self.served_name} at {without_userinfo(self.chat_url)})"


def without_userinfo(url: str) -> str:
    """``url`` without any ``user:password@`` part. The store refuses such URLs, but one can
    still reach the client directly (an ``Endpoint`` built by hand)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def without_credentials(text: str, url: str) -> str:
    """``text`` (e.g. a transport error) with the credentials of ``url`` taken out."""
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    if not userinfo:
        return text
    return text.replace(userinfo + "@", "").replace(userinfo, "***")


@dataclass(frozen=True)
class SampleBatch:
    """The completions drawn from one endpoint for one conversation."""

    endpoint: Endpoint
    texts: tuple[str, ...]
    tokens_in: int
    tokens_out: int
    latency_ms: float
    requests: int
    retries: int = 0
    finish_reasons: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """``timeout`` per HTTP request in seconds; ``max_retries`` after the first attempt;
    backoff sleeps ``backoff * 2**k`` seconds (capped at 8 s) before retry ``k``."""

    timeout: float = 120.0
    max_retries: int = 2
    backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff < 0:
            raise ConfigurationError(f"backoff must be >= 0 seconds, got {self.backoff}")


class NLimits:
    """Choices per request: a global cap (``max_n``) and the limits servers named, per endpoint.
    Shared by every request of one client (thread-safe)."""

    def __init__(self, max_n: int | None = None) -> None:
        if max_n is not None and max_n < 1:
            raise ConfigurationError(f"max_n must be >= 1 or None, got {max_n}")
        self.max_n = max_n
        self._learned: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def limit(self, endpoint: Endpoint) -> int:
        learned = self._learned.get((endpoint.chat_url, endpoint.served_name))
        limits = [x for x in (self.max_n, learned) if x is not None]
        return min(limits) if limits else 1_000_000

    def learn(self, endpoint: Endpoint, text: str) -> bool:
        """Recognise 'n is too large' refusals and remember the limit the server names."""
        if not _N_REFUSAL.search(text):
            return False
        numbers = [int(x) for x in _N_LIMIT.findall(text)]
        limit = max(1, min(numbers)) if numbers else 1
        key = (endpoint.chat_url, endpoint.served_name)
        with self._lock:
            current = self._learned.get(key)
            if current is not None and current <= limit:
                limit = max(1, current // 2)  # the named limit did not help: halve
            self._learned[key] = limit
        return True


@dataclass(frozen=True)
class Post:
    """Action: send ``body`` as JSON to ``url`` (``stream``: read it as server-sent events)."""

    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    stream: bool = False


@dataclass(frozen=True)
class Sleep:
    """Action: wait ``seconds`` before the next attempt."""

    seconds: float


Outcome = httpx.Response | httpx.TransportError | None
Steps = Generator[Post | Sleep, Outcome, Any]


@dataclass
class _Attempt:
    """Mutable bookkeeping of one ``sample`` call (requests made, retries spent)."""

    requests: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)


def auth_headers(endpoint: Endpoint) -> dict[str, str]:
    if not endpoint.api_key_env:
        return {}
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise ConfigurationError(
            f"{endpoint.describe()} needs an API key in ${endpoint.api_key_env}, which is not set. "
            f"Export it, or clear the model's api_key_env if the endpoint needs no key."
        )
    return {"Authorization": f"Bearer {key}"}


def sample_steps(
    endpoint: Endpoint,
    messages: Messages,
    n: int,
    *,
    policy: RetryPolicy,
    limits: NLimits,
    temperature: float = 0.7,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    extra: Mapping[str, Any] | None = None,
) -> Steps:
    """Draw ``n`` completions of ``messages`` from ``endpoint`` (returns a SampleBatch).

    ``extra`` is merged into the request body (``top_p``, ``seed``, ``stop``, ...). Raises
    EndpointError when the endpoint still fails after retries or answers malformed."""
    if n < 1:
        raise ConfigurationError(f"n must be >= 1, got {n}")
    headers = auth_headers(endpoint)
    started = time.perf_counter()
    state = _Attempt()
    while len(state.texts) < n:
        ask = min(n - len(state.texts), limits.limit(endpoint))
        body = {
            "model": endpoint.served_name,
            "messages": [dict(m) for m in messages],
            "n": ask,
            "temperature": temperature,
            "max_tokens": max_tokens,
            **(extra or {}),
        }
        response = yield from post_steps(endpoint, body, headers, policy, state, limits=limits)
        if response.status_code >= 400:  # a refusal of n that named a lower limit: learned
            continue
        payload = json_payload(endpoint, response)
        choices = parse_choices(endpoint, payload)
        # Keep only what was asked for: a server may send more than n.
        for text, reason in choices[: n - len(state.texts)]:
            state.texts.append(text)
            state.finish_reasons.append(reason)
        tokens_in, tokens_out = usage_tokens(payload.get("usage"))
        state.tokens_in += tokens_in
        state.tokens_out += tokens_out
    return SampleBatch(
        endpoint=endpoint,
        texts=tuple(state.texts),
        tokens_in=state.tokens_in,
        tokens_out=state.tokens_out,
        latency_ms=(time.perf_counter() - started) * 1000.0,
        requests=state.requests,
        retries=state.retries,
        finish_reasons=tuple(state.finish_reasons),
    )


def post_steps(
    endpoint: Endpoint,
    body: dict[str, Any],
    headers: dict[str, str],
    policy: RetryPolicy,
    state: _Attempt | None = None,
    *,
    limits: NLimits | None = None,
    stream: bool = False,
) -> Steps:
    """One logical request with retries; returns the accepted response. A 400 refusing ``n``
    is returned as is once its limit is learned (the caller asks again within it)."""
    state = state if state is not None else _Attempt()
    url = endpoint.chat_url
    last_problem = ""
    timed_out = False
    for attempt in range(policy.max_retries + 1):
        if attempt:
            state.retries += 1
            yield Sleep(min(policy.backoff * 2 ** (attempt - 1), _MAX_BACKOFF_S))
        state.requests += 1
        outcome = yield Post(url, body, headers, stream)
        if isinstance(outcome, httpx.TimeoutException):
            last_problem = f"timed out after {policy.timeout:g} s ({type(outcome).__name__})"
            timed_out = True
            continue
        if isinstance(outcome, httpx.TransportError):
            reason = without_credentials(str(outcome), url)
            last_problem = f"connection failed ({type(outcome).__name__}: {reason})"
            timed_out = False
            continue
        assert isinstance(outcome, httpx.Response)
        status = outcome.status_code
        if status >= 500 or status in _RETRYABLE_STATUS:
            last_problem = f"HTTP {status}: {_snippet(outcome.text)}"
            timed_out = status in (408, 504)
            continue
        if status >= 400:
            if (
                status == 400
                and int(body.get("n") or 1) > 1
                and (limits or _NO_LIMITS).learn(endpoint, outcome.text)
            ):
                return outcome
            raise EndpointError(
                f"{endpoint.describe()} rejected the request with HTTP {status}: "
                f"{_snippet(outcome.text)}. Check the served model name "
                f"(vLLM --served-model-name), the API key and the request options."
            )
        return outcome
    attempts = policy.max_retries + 1
    error = EndpointError(
        f"{endpoint.describe()} failed after {attempts} attempt{'s' if attempts > 1 else ''}: "
        f"{last_problem}"
    )
    error.timed_out = timed_out  # type: ignore[attr-defined]
    raise error


_NO_LIMITS = NLimits()


def json_payload(endpoint: Endpoint, response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EndpointError(
            f"{endpoint.describe()} sent a malformed response: not JSON "
            f"({_snippet(response.text)!r}). Is base_url an OpenAI-compatible API?"
        ) from exc
    if not isinstance(payload, dict):
        raise EndpointError(
            f"{endpoint.describe()} sent a malformed response: expected a JSON object, "
            f"got {type(payload).__name__}."
        )
    return payload


def parse_choices(endpoint: Endpoint, payload: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        error = payload.get("error")
        detail = f" (error: {_snippet(json.dumps(error))})" if error else ""
        raise EndpointError(
            f"{endpoint.describe()} sent a malformed response: no 'choices' list{detail}."
        )
    # Servers may answer out of order; 'index' restores the order they were generated in.
    if all(isinstance(c, Mapping) and isinstance(c.get("index"), int) for c in choices):
        choices = sorted(choices, key=lambda c: c["index"])
    out: list[tuple[str, str | None]] = []
    for position, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(message, Mapping):
            raise EndpointError(
                f"{endpoint.describe()} sent a malformed response: choices[{position}] has no "
                f"'message' object (is this a /completions rather than /chat/completions API?)."
            )
        content = message.get("content")
        if content is None:
            content = ""  # e.g. a tool call: a sample with no answer, not a protocol error
        if not isinstance(content, str):
            raise EndpointError(
                f"{endpoint.describe()} sent a malformed response: choices[{position}].message"
                f".content is {type(content).__name__}, expected a string."
            )
        reason = choice.get("finish_reason")
        out.append((content, reason if isinstance(reason, str) else None))
    return out


def usage_tokens(usage: object) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of an OpenAI ``usage`` object (0 when absent)."""
    if not isinstance(usage, Mapping):
        return 0, 0
    return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


# -- drivers ----------------------------------------------------------------------------------


def drive(steps: Steps, http: httpx.Client) -> Any:
    """Run ``steps`` with a sync HTTP client; returns what the generator returns."""
    outcome: Outcome = None
    while True:
        try:
            action = steps.send(outcome)
        except StopIteration as stop:
            return stop.value
        if isinstance(action, Sleep):
            time.sleep(action.seconds)
            outcome = None
            continue
        try:
            outcome = http.post(action.url, json=action.body, headers=action.headers)
        except httpx.TransportError as exc:
            outcome = exc


async def adrive(steps: Steps, http: httpx.AsyncClient) -> Any:
    """Run ``steps`` with an async HTTP client; returns what the generator returns."""
    outcome: Outcome = None
    while True:
        try:
            action = steps.send(outcome)
        except StopIteration as stop:
            return stop.value
        if isinstance(action, Sleep):
            await asyncio.sleep(action.seconds)
            outcome = None
            continue
        try:
            outcome = await http.post(action.url, json=action.body, headers=action.headers)
        except httpx.TransportError as exc:
            outcome = exc


# llama.cpp: "Field 'n': Value must be between 1 <= value <= 4, but got 5";
# OpenAI-style: "'n' must be less than or equal to 128".
_N_REFUSAL = re.compile(r"""(?:['"`]n['"`]|\bfield n\b|\bparameter n\b|\bn must\b)""", re.I)
_N_LIMIT = re.compile(r"(?:<=|less than or equal to|at most|maximum(?: of| is)?)\s*(\d+)", re.I)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
