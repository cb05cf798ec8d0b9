"""Calling models: one sync client for OpenAI-compatible chat endpoints (vLLM in production).

The client speaks only the HTTP API (``POST {base_url}/chat/completions``). Repeated sampling asks
for ``n`` choices in one request; a server that returns fewer is topped up with further requests,
and a server that refuses ``n`` above its limit (llama.cpp caps it at its slot count) is asked again
with the limit it names, remembered per endpoint. Connection errors, timeouts, 429 and 5xx are
retried with exponential backoff; other 4xx and malformed bodies are not, because asking again
would get the same answer.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
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


def _without_credentials(text: str, url: str) -> str:
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


@dataclass
class _Attempt:
    """Mutable bookkeeping of one ``sample`` call (requests made, retries spent)."""

    requests: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)


class ChatClient:
    """Sync client with one pooled ``httpx.Client``; safe to share between threads.

    ``timeout`` is per HTTP request in seconds; ``max_retries`` counts retries after the first
    attempt; backoff sleeps ``backoff * 2**k`` seconds (capped at 8 s) before retry ``k``;
    ``max_concurrency`` bounds ``sample_many``'s worker threads and the connection pool;
    ``max_n`` caps choices per request for every endpoint (None: ask for all at once).
    Constructing it opens no connection. Use it as a context manager or call ``close()``.
    """

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_concurrency: int = 8,
        max_n: int | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {max_retries}")
        if backoff < 0:
            raise ConfigurationError(f"backoff must be >= 0 seconds, got {backoff}")
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_n is not None and max_n < 1:
            raise ConfigurationError(f"max_n must be >= 1 or None, got {max_n}")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_concurrency = max_concurrency
        self.max_n = max_n
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max(max_concurrency, 4),
                max_keepalive_connections=max(max_concurrency, 4),
            ),
        )
        self._n_limits: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sample(
        self,
        endpoint: Endpoint,
        messages: Messages,
        n: int = 1,
        *,
        temperature: float = 0.7,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        **extra: Any,
    ) -> SampleBatch:
        """Draw ``n`` completions of ``messages`` from ``endpoint``.

        ``extra`` is merged into the request body (``top_p``, ``seed``, ``stop``, ...).
        Raises EndpointError when the endpoint still fails after retries or answers malformed.
        """
        if n < 1:
            raise ConfigurationError(f"n must be >= 1, got {n}")
        headers = _auth_headers(endpoint)
        started = time.perf_counter()
        state = _Attempt()
        while len(state.texts) < n:
            ask = min(n - len(state.texts), self._n_limit(endpoint))
            body = {
                "model": endpoint.served_name,
                "messages": [dict(m) for m in messages],
                "n": ask,
                "temperature": temperature,
                "max_tokens": max_tokens,
                **extra,
            }
            payload = self._post(endpoint, body, headers, state)
            if payload is None:  # the server named a lower n limit; ask again within it
                continue
            choices = _parse_choices(endpoint, payload)
            # Keep only what was asked for: a server may send more than n.
            for text, reason in choices[: n - len(state.texts)]:
                state.texts.append(text)
                state.finish_reasons.append(reason)
            usage = payload.get("usage")
            if isinstance(usage, Mapping):
                state.tokens_in += _int(usage.get("prompt_tokens"))
                state.tokens_out += _int(usage.get("completion_tokens"))
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

    def sample_many(
        self,
        endpoint: Endpoint,
        conversations: Sequence[Messages],
        n: int = 1,
        *,
        temperature: float = 0.7,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        return_exceptions: bool = False,
        on_done: Callable[[int, SampleBatch | EndpointError], None] | None = None,
        **extra: Any,
    ) -> list[SampleBatch | EndpointError]:
        """``sample`` for many conversations, at most ``max_concurrency`` in flight; input order.

        ``on_done(index, result)`` is called (from the calling thread) as each one finishes, so a
        caller can store results and show progress as they arrive. With ``return_exceptions`` an
        EndpointError takes the failed item's place; otherwise the first failure is raised after
        the in-flight requests finish and nothing further is started.
        """
        results: list[SampleBatch | EndpointError | None] = [None] * len(conversations)
        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {
                pool.submit(
                    self.sample,
                    endpoint,
                    conv,
                    n,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    **extra,
                ): i
                for i, conv in enumerate(conversations)
            }
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        result: SampleBatch | EndpointError = future.result()
                    except EndpointError as exc:
                        if not return_exceptions:
                            raise
                        result = exc
                    results[i] = result
                    if on_done is not None:
                        on_done(i, result)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return [r for r in results if r is not None]

    # -- internals -------------------------------------------------------------------------

    def _n_limit(self, endpoint: Endpoint) -> int:
        learned = self._n_limits.get((endpoint.chat_url, endpoint.served_name))
        limits = [x for x in (self.max_n, learned) if x is not None]
        return min(limits) if limits else 1_000_000

    def _post(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        headers: dict[str, str],
        state: _Attempt,
    ) -> dict[str, Any] | None:
        """One logical request with retries. None means: retry with a lower ``n`` (learned)."""
        url = endpoint.chat_url
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                state.retries += 1
                time.sleep(min(self.backoff * 2 ** (attempt - 1), _MAX_BACKOFF_S))
            state.requests += 1
            try:
                response = self._http.post(url, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                last_problem = f"timed out after {self.timeout:g} s ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                reason = _without_credentials(str(exc), url)
                last_problem = f"connection failed ({type(exc).__name__}: {reason})"
                continue
            status = response.status_code
            if status >= 500 or status in _RETRYABLE_STATUS:
                last_problem = f"HTTP {status}: {_snippet(response.text)}"
                continue
            if status >= 400:
                if status == 400 and body["n"] > 1 and self._learn_n_limit(endpoint, response):
                    return None
                raise EndpointError(
                    f"{endpoint.describe()} rejected the request with HTTP {status}: "
                    f"{_snippet(response.text)}. Check the served model name "
                    f"(vLLM --served-model-name), the API key and the request options."
                )
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
        attempts = self.max_retries + 1
        raise EndpointError(
            f"{endpoint.describe()} failed after {attempts} attempt{'s' if attempts > 1 else ''}: "
            f"{last_problem}"
        )

    def _learn_n_limit(self, endpoint: Endpoint, response: httpx.Response) -> bool:
        """Recognise 'n is too large' refusals and remember the limit the server names."""
        text = response.text
        if not _N_REFUSAL.search(text):
            return False
        numbers = [int(x) for x in _N_LIMIT.findall(text)]
        limit = max(1, min(numbers)) if numbers else 1
        key = (endpoint.chat_url, endpoint.served_name)
        with self._lock:
            current = self._n_limits.get(key)
            if current is not None and current <= limit:
                limit = max(1, current // 2)  # the named limit did not help: halve
            self._n_limits[key] = limit
        return True


# llama.cpp: "Field 'n': Value must be between 1 <= value <= 4, but got 5";
# OpenAI-style: "'n' must be less than or equal to 128".
_N_REFUSAL = re.compile(r"""(?:['"`]n['"`]|\bfield n\b|\bparameter n\b|\bn must\b)""", re.I)
_N_LIMIT = re.compile(r"(?:<=|less than or equal to|at most|maximum(?: of| is)?)\s*(\d+)", re.I)


def _auth_headers(endpoint: Endpoint) -> dict[str, str]:
    if not endpoint.api_key_env:
        return {}
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise ConfigurationError(
            f"{endpoint.describe()} needs an API key in ${endpoint.api_key_env}, which is not set. "
            f"Export it, or clear the model's api_key_env if the endpoint needs no key."
        )
    return {"Authorization": f"Bearer {key}"}


def _parse_choices(endpoint: Endpoint, payload: Mapping[str, Any]) -> list[tuple[str, str | None]]:
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


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
