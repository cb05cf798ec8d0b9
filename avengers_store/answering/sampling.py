"""The sampling protocol without I/O: what to send to an OpenAI-compatible chat endpoint, when to
retry, and how to read the answer, written once for the sync and the async chat clients.

``sample_steps`` is a generator that yields actions (``Post``: send this request; ``Sleep``: back
off) and is sent their outcomes (an ``httpx.Response``, or the ``httpx.TransportError`` the send
raised; None after a sleep); it returns a ``SampleBatch``. ``drive`` and ``adrive`` run it with an
``httpx.Client`` / ``httpx.AsyncClient``. Repeated sampling asks for ``n`` choices in one request;
a server that returns fewer is topped up, and a server that refuses ``n`` above its limit
(llama.cpp caps it at its slot count) is asked again within the limit it names, remembered per
endpoint. Connection errors, timeouts, 429 and 5xx are retried with exponential backoff (a 429's
``Retry-After`` is honoured when it is short, else the endpoint fails at once so the caller can
fall back); other 4xx and malformed bodies are not, because asking again would get the same answer.

A ``Deadline`` bounds one call as a whole: each attempt's HTTP timeout is cut to the time left, a
backoff that would outlast it is not slept, and when it passes the call fails as timed out. A
response that has already brought some of the ``n`` choices is kept (a short batch) rather than
lost to a top-up that ran out of time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from avengers_store import redaction
from avengers_store.errors import ConfigurationError, EndpointError
from avengers_store.flows import Done, advance

Message = Mapping[str, str]
Messages = Sequence[Message]

DEFAULT_MAX_TOKENS = 512
_MAX_BACKOFF_S = 8.0
_RETRYABLE_STATUS = frozenset({408, 429})
# A 429 asking for a longer wait than this fails the endpoint at once: the next model is better
# than sleeping.
MAX_RETRY_AFTER_S = _MAX_BACKOFF_S


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock by which a call must be over; ``seconds`` is the whole
    span it was set for (for messages)."""

    at: float
    seconds: float | None = None

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        if not seconds > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {seconds}")
        return cls(time.monotonic() + seconds, seconds)

    def describe(self) -> str:
        return f"the {self.seconds:g} s deadline" if self.seconds else "the deadline"

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.remaining() <= 0

    def share(self, parts: int) -> Deadline:
        """The deadline of the first of ``parts`` equal shares of the time left."""
        left = max(0.0, self.remaining())
        return Deadline(time.monotonic() + left / max(1, parts), self.seconds)


def deadline_after(seconds: float | None) -> Deadline | None:
    """``Deadline.after(seconds)``, or None for no deadline."""
    return None if seconds is None else Deadline.after(seconds)


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

    def __post_init__(self) -> None:
        # Its key is a secret from the moment the endpoint is known, whoever echoes it.
        redaction.remember_env(self.api_key_env)

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
class Completion:
    """One choice of a chat completion: its text (``""`` when it only calls tools), why it
    stopped (``stop``, ``length``, ``tool_calls``, ...), the tool calls it asks for (OpenAI's
    ``message.tool_calls`` objects, as the model sent them) and its ``logprobs`` object."""

    text: str
    finish_reason: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    logprobs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SampleBatch:
    """The completions drawn from one endpoint for one conversation."""

    endpoint: Endpoint
    completions: tuple[Completion, ...]
    tokens_in: int
    tokens_out: int
    latency_ms: float
    requests: int
    retries: int = 0

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(c.text for c in self.completions)

    @property
    def finish_reasons(self) -> tuple[str | None, ...]:
        return tuple(c.finish_reason for c in self.completions)


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
    """Action: send ``body`` as JSON to ``url`` within ``timeout`` seconds (``stream``: read it
    as server-sent events; the timeout then bounds opening it)."""

    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    stream: bool = False
    timeout: float | None = None


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
    completions: list[Completion] = field(default_factory=list)


def api_key(endpoint: Endpoint) -> str | None:
    """The endpoint's key from its environment variable (None when it needs none).

    A missing key is an EndpointError like any other failure of the endpoint, so an ensemble
    falls back to the next model instead of giving up."""
    if not endpoint.api_key_env:
        return None
    key = os.environ.get(endpoint.api_key_env)
    redaction.remember(key)
    if not key:
        raise EndpointError(
            f"{endpoint.describe()} needs an API key in ${endpoint.api_key_env}, which is not set. "
            f"Export it, or clear the model's api_key_env if the endpoint needs no key."
        )
    return key


def auth_headers(endpoint: Endpoint) -> dict[str, str]:
    key = api_key(endpoint)
    return {"Authorization": f"Bearer {key}"} if key else {}


def sample_steps(
    endpoint: Endpoint,
    messages: Messages,
    n: int,
    *,
    policy: RetryPolicy,
    limits: NLimits,
    temperature: float | None = 0.7,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    extra: Mapping[str, Any] | None = None,
    deadline: Deadline | None = None,
) -> Steps:
    """Draw ``n`` completions of ``messages`` from ``endpoint`` (returns a SampleBatch).

    ``temperature`` None sends none (the server's default applies); ``extra`` is merged into
    the request body (``top_p``, ``seed``, ``stop``, ``tools``, ``response_format``, ...);
    ``deadline`` bounds the whole call (retries and top-ups included). Raises EndpointError
    when the endpoint still fails after retries, answers malformed or has no key; when the
    deadline passes after some choices arrived, returns those."""
    if n < 1:
        raise ConfigurationError(f"n must be >= 1, got {n}")
    headers = auth_headers(endpoint)
    started = time.perf_counter()
    state = _Attempt()
    while len(state.completions) < n:
        ask = min(n - len(state.completions), limits.limit(endpoint))
        body = {
            "model": endpoint.served_name,
            "messages": [dict(m) for m in messages],
            "n": ask,
            "max_tokens": max_tokens,
            **({"temperature": temperature} if temperature is not None else {}),
            **(extra or {}),
        }
        try:
            response = yield from post_steps(
                endpoint, body, headers, policy, state, limits=limits, deadline=deadline
            )
        except EndpointError as exc:
            if exc.timed_out and state.completions and deadline is not None and deadline.passed:
                break  # out of time during a top-up: vote with the choices that came
            raise
        if response.status_code >= 400:  # a refusal of n that named a lower limit: learned
            continue
        payload = json_payload(endpoint, response)
        choices = parse_choices(endpoint, payload)
        # Keep only what was asked for: a server may send more than n.
        state.completions.extend(choices[: n - len(state.completions)])
        tokens_in, tokens_out = response_tokens(payload, len(choices))
        state.tokens_in += tokens_in
        state.tokens_out += tokens_out
    return SampleBatch(
        endpoint=endpoint,
        completions=tuple(state.completions),
        tokens_in=state.tokens_in,
        tokens_out=state.tokens_out,
        latency_ms=(time.perf_counter() - started) * 1000.0,
        requests=state.requests,
        retries=state.retries,
    )


class SamplingClient:
    """What the sync and async chat clients hold of the protocol: the retry policy, the choice
    limits learned per endpoint, and the steps of one ``sample`` call under them; each client
    adds only its HTTP client and the driver that runs the steps."""

    def __init__(
        self, *, timeout: float, max_retries: int, backoff: float, max_n: int | None
    ) -> None:
        self.policy = RetryPolicy(timeout, max_retries, backoff)
        self.limits = NLimits(max_n)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_n = max_n

    def _sample_steps(
        self,
        endpoint: Endpoint,
        messages: Messages,
        n: int,
        temperature: float | None,
        max_tokens: int,
        extra: Mapping[str, Any],
        deadline: Deadline | None,
    ) -> Steps:
        return sample_steps(
            endpoint, messages, n, policy=self.policy, limits=self.limits,
            temperature=temperature, max_tokens=max_tokens, extra=extra, deadline=deadline,
        )  # fmt: skip


def post_steps(
    endpoint: Endpoint,
    body: dict[str, Any],
    headers: dict[str, str],
    policy: RetryPolicy,
    state: _Attempt | None = None,
    *,
    limits: NLimits | None = None,
    stream: bool = False,
    deadline: Deadline | None = None,
) -> Steps:
    """One logical request with retries; returns the accepted response. A 400 refusing ``n``
    is returned as is once its limit is learned (the caller asks again within it). With a
    ``deadline`` each attempt's timeout is cut to the time left, and no attempt starts after it."""
    state = state if state is not None else _Attempt()
    url = endpoint.chat_url
    last_problem = "no attempt was made"
    timed_out = False
    attempts = 0
    wait = 0.0
    for attempt in range(policy.max_retries + 1):
        if attempt:
            wait = max(wait, min(policy.backoff * 2 ** (attempt - 1), _MAX_BACKOFF_S))
            if deadline is not None and wait >= deadline.remaining():
                last_problem += f"; no time left in {deadline.describe()} for another attempt"
                timed_out = True
                break
            state.retries += 1
            yield Sleep(wait)
        timeout = policy.timeout
        if deadline is not None:
            timeout = min(timeout, deadline.remaining())
            if timeout <= 0:
                last_problem = f"{deadline.describe()} passed before it could be asked"
                timed_out = True
                break
        state.requests += 1
        attempts += 1
        wait = 0.0
        outcome = yield Post(url, body, headers, stream, timeout)
        if isinstance(outcome, httpx.TimeoutException):
            cut = timeout < policy.timeout
            last_problem = f"timed out after {timeout:.3g} s" + (
                f" (its share of {deadline.describe()})" if cut and deadline else ""
            )
            timed_out = True
            continue
        if isinstance(outcome, httpx.TransportError):
            reason = without_credentials(str(outcome), url)
            last_problem = f"connection failed ({type(outcome).__name__}: {reason})"
            timed_out = False
            continue
        assert isinstance(outcome, httpx.Response)
        status = outcome.status_code
        if status < 400:
            return outcome
        text = outcome.text  # redacted as it was read (``redaction``)
        if status >= 500 or status in _RETRYABLE_STATUS:
            last_problem = f"HTTP {status}: {_snippet(text)}"
            timed_out = status in (408, 504)
            if status == 429:
                asked = retry_after(outcome)
                if asked is not None and asked > MAX_RETRY_AFTER_S:
                    last_problem += f" (asked to retry after {asked:g} s: not waiting)"
                    break
                wait = asked or 0.0
            continue
        if (
            status == 400
            and int(body.get("n") or 1) > 1
            and (limits or _NO_LIMITS).learn(endpoint, text)
        ):
            return outcome
        raise EndpointError(
            f"{endpoint.describe()} rejected the request with HTTP {status}: "
            f"{_snippet(text)}. Check the served model name "
            f"(vLLM --served-model-name), the API key and the request options."
        )
    raise EndpointError(
        f"{endpoint.describe()} failed after {attempts} attempt{'s' if attempts != 1 else ''}: "
        f"{last_problem}",
        timed_out=timed_out,
    )


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a response's ``Retry-After`` asks to wait (a number or an HTTP date), if any."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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


def parse_choices(endpoint: Endpoint, payload: Mapping[str, Any]) -> list[Completion]:
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
    out: list[Completion] = []
    for position, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(message, Mapping):
            raise EndpointError(
                f"{endpoint.describe()} sent a malformed response: choices[{position}] has no "
                f"'message' object (is this a /completions rather than /chat/completions API?)."
            )
        content = message.get("content")
        if content is None:
            content = ""  # e.g. a tool call: a sample with no text, not a protocol error
        if not isinstance(content, str):
            raise EndpointError(
                f"{endpoint.describe()} sent a malformed response: choices[{position}].message"
                f".content is {type(content).__name__}, expected a string."
            )
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list) or not all(isinstance(c, Mapping) for c in calls):
            raise EndpointError(
                f"{endpoint.describe()} sent a malformed response: choices[{position}].message"
                ".tool_calls is not a list of objects."
            )
        reason = choice.get("finish_reason")
        logprobs = choice.get("logprobs")
        out.append(
            Completion(
                content,
                reason if isinstance(reason, str) else None,
                tuple(calls),
                logprobs if isinstance(logprobs, Mapping) else None,
            )
        )
    return out


def has_content(event: Mapping[str, Any]) -> bool:
    """Whether a ``chat.completion.chunk`` carries the answer itself: a delta with anything
    but the role (text, tool calls, ...) or a finish reason."""
    for choice in event.get("choices") or ():
        if not isinstance(choice, Mapping):
            continue
        delta = choice.get("delta")
        if choice.get("finish_reason") or (
            isinstance(delta, Mapping) and any(v for k, v in delta.items() if k != "role")
        ):
            return True
    return False


class StreamedCompletion:
    """One streamed choice put back together from its ``chat.completion.chunk`` events: the
    text, the tool calls (their deltas joined by index), the logprobs, why it stopped, and the
    usage the stream reported (its last ``usage`` object)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._logprobs: list[Any] = []
        self.finish_reason: str | None = None
        self.tokens_in = 0
        self.tokens_out = 0

    def add(self, event: Mapping[str, Any]) -> None:
        if event.get("usage"):
            self.tokens_in, self.tokens_out = usage_tokens(event["usage"])
        for choice in event.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), Mapping) else {}
            if isinstance(delta.get("content"), str):
                self._text.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, Mapping):
                    self._add_call(call)
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, Mapping) and isinstance(logprobs.get("content"), list):
                self._logprobs.extend(logprobs["content"])
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]

    def _add_call(self, delta: Mapping[str, Any]) -> None:
        index = delta.get("index") if isinstance(delta.get("index"), int) else len(self._calls)
        call = self._calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if isinstance(delta.get("id"), str):
            call["id"] = delta["id"]
        function = delta.get("function") if isinstance(delta.get("function"), Mapping) else {}
        if isinstance(function.get("name"), str):
            call["function"]["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"] += function["arguments"]

    @property
    def text(self) -> str:
        return "".join(self._text)

    def completion(self, finish_reason: str | None = None) -> Completion:
        """The choice so far; ``finish_reason`` overrides the stream's (e.g. ``error``)."""
        calls = tuple(
            {k: v for k, v in call.items() if v is not None}
            for _, call in sorted(self._calls.items())
        )
        return Completion(
            self.text,
            finish_reason or self.finish_reason,
            calls,
            {"content": list(self._logprobs)} if self._logprobs else None,
        )


def usage_tokens(usage: object) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of an OpenAI ``usage`` object (0 when absent)."""
    if not isinstance(usage, Mapping):
        return 0, 0
    return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def response_tokens(payload: Mapping[str, Any], choices: int) -> tuple[int, int]:
    """(prompt tokens, completion tokens) one response used for its ``choices``. OpenAI and
    vLLM sum every choice in ``usage``; llama.cpp's server (recognised by its ``timings``
    report) gives one choice's usage for ``n`` of them, each drawn in its own slot with its own
    prompt, so its figures count once per choice."""
    tokens_in, tokens_out = usage_tokens(payload.get("usage"))
    if choices > 1 and isinstance(payload.get("timings"), Mapping):
        return tokens_in * choices, tokens_out * choices
    return tokens_in, tokens_out


# -- drivers ----------------------------------------------------------------------------------


def drive(steps: Steps, http: httpx.Client) -> Any:
    """Run ``steps`` with a sync HTTP client; returns what the generator returns."""
    outcome: Outcome = None
    while not isinstance(action := advance(steps, outcome), Done):
        if isinstance(action, Sleep):
            time.sleep(action.seconds)
            outcome = None
            continue
        try:
            outcome = _post_within(http, action)
        except httpx.TransportError as exc:
            outcome = exc
    return action.value


def _post_within(http: httpx.Client, action: Post) -> httpx.Response:
    """POST and read the answer, the attempt bounded as a whole: the body is read piece by
    piece and given up once the attempt's time is over, so a server sending a byte now and then
    cannot stretch it by more than one read."""
    timeout = attempt_timeout(action)
    if action.timeout is None:
        return http.post(action.url, json=action.body, headers=action.headers, timeout=timeout)
    ends = time.monotonic() + action.timeout
    with http.stream(
        "POST", action.url, json=action.body, headers=action.headers, timeout=timeout
    ) as response:
        pieces = []
        for piece in response.iter_bytes():
            pieces.append(piece)
            if time.monotonic() > ends:
                raise AttemptTimeout(f"no complete answer within {action.timeout:.3g} s")
    # The body is decoded already: the encoding and length headers no longer describe it.
    headers = [
        (k, v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code, headers=headers, content=b"".join(pieces), request=response.request
    )


async def adrive(
    steps: Steps,
    http: httpx.AsyncClient,
    attempt: Callable[[Post], Awaitable[httpx.Response]] | None = None,
) -> Any:
    """Run ``steps`` with an async HTTP client; returns what the generator returns. ``attempt``
    makes one POST (default: the whole answer, bounded as a whole by its timeout, so a server
    dripping bytes cannot stretch it)."""
    attempt = attempt or functools.partial(_apost_within, http)
    outcome: Outcome = None
    while not isinstance(action := advance(steps, outcome), Done):
        if isinstance(action, Sleep):
            await asyncio.sleep(action.seconds)
            outcome = None
            continue
        try:
            outcome = await attempt(action)
        except httpx.TransportError as exc:
            outcome = exc
    return action.value


async def _apost_within(http: httpx.AsyncClient, action: Post) -> httpx.Response:
    async with bounded(action.timeout):
        return await http.post(
            action.url, json=action.body, headers=action.headers, timeout=attempt_timeout(action)
        )


class AttemptTimeout(httpx.TimeoutException):
    """An attempt that outlasted its timeout as a whole (not one read or write of it)."""


@asynccontextmanager
async def bounded(seconds: float | None) -> AsyncIterator[None]:
    """``asyncio.timeout`` that raises ``AttemptTimeout`` (an httpx timeout) instead."""
    if seconds is None:
        yield
        return
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise AttemptTimeout(f"no complete answer within {seconds:.3g} s") from exc


def attempt_timeout(action: Post) -> Any:
    """The attempt's httpx timeout (the client's own when the action names none)."""
    return httpx.Timeout(action.timeout) if action.timeout is not None else httpx.USE_CLIENT_DEFAULT


# llama.cpp: "Field 'n': Value must be between 1 <= value <= 4, but got 5";
# OpenAI-style: "'n' must be less than or equal to 128".
_N_REFUSAL = re.compile(r"""(?:['"`]n['"`]|\bfield n\b|\bparameter n\b|\bn must\b)""", re.I)
_N_LIMIT = re.compile(r"(?:<=|less than or equal to|at most|maximum(?: of| is)?)\s*(\d+)", re.I)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
