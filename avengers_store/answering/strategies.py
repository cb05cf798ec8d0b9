"""From ranked candidate endpoints to one answer: sample, extract, vote (the paper's ensembling).

Strategies:
    self-consistency  ``samples`` completions from the first candidate, majority vote.
    model-switch      sample the first candidate; while the winner's share of valid votes is
                      below ``threshold``, also sample the next candidate (same number of samples)
                      and vote over the pooled answers; stop at the threshold or when candidates
                      run out.
    direct            one completion at temperature 0.

Fallback: a candidate whose endpoint fails (after the client's retries) is recorded in
``Answer.fallbacks`` and the next-ranked candidate takes its place. When every candidate fails,
AllEndpointsFailed names each endpoint and its error (``exc.failures``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from avengers_store.answering.chat import DEFAULT_MAX_TOKENS, ChatClient, Endpoint
from avengers_store.answering.extraction import ExtractedAnswer, extract_answer
from avengers_store.answering.prompts import (
    DEFAULT_PROMPTS,
    PromptSet,
    check_task_type,
    guess_task_type,
)
from avengers_store.answering.voting import Vote, vote
from avengers_store.errors import AllEndpointsFailed, ConfigurationError, EndpointError

STRATEGIES: tuple[str, ...] = ("self-consistency", "model-switch", "direct")
DEFAULT_SAMPLES = 10
DEFAULT_THRESHOLD = 0.8


@dataclass(frozen=True)
class ModelUsage:
    """What one candidate cost: samples drawn, tokens, wall time, HTTP requests, failures."""

    model: str
    samples: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    requests: int = 0
    errors: int = 0


@dataclass(frozen=True)
class Fallback:
    """A candidate that failed, why, and the candidate tried next (None: none was left)."""

    model: str
    error: str
    replaced_by: str | None = None


@dataclass(frozen=True)
class Answer:
    """The outcome of one question. ``answer`` is the canonical winner (None: no valid sample)."""

    question: str
    answer: str | None
    text: str | None  # the full completion of the earliest sample that gave the winner
    votes: Mapping[str, int]
    share: float
    strategy: str
    task_type: str
    models: tuple[str, ...]  # models whose samples were pooled, in the order they were asked
    usage: tuple[ModelUsage, ...]
    fallbacks: tuple[Fallback, ...]
    samples: tuple[ExtractedAnswer, ...]
    valid: int
    latency_ms: float
    decision: object | None = field(default=None, compare=False)

    @property
    def tokens_in(self) -> int:
        return sum(u.tokens_in for u in self.usage)

    @property
    def tokens_out(self) -> int:
        return sum(u.tokens_out for u in self.usage)

    def to_dict(self, *, include_samples: bool = False) -> dict[str, object]:
        """JSON-ready fields (for ``--json`` output and logs); ``decision`` is left to the caller."""
        out: dict[str, object] = {
            "question": self.question,
            "answer": self.answer,
            "text": self.text,
            "votes": dict(self.votes),
            "share": self.share,
            "valid": self.valid,
            "strategy": self.strategy,
            "task_type": self.task_type,
            "models": list(self.models),
            "usage": [asdict(u) for u in self.usage],
            "fallbacks": [asdict(f) for f in self.fallbacks],
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_ms": round(self.latency_ms, 1),
        }
        if include_samples:
            out["samples"] = [asdict(s) for s in self.samples]
        return out


def answer(
    question: str,
    candidates: Sequence[Endpoint],
    *,
    samples: int = DEFAULT_SAMPLES,
    strategy: str = "self-consistency",
    task_type: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    prompts: PromptSet | None = None,
    client: ChatClient | None = None,
    temperature: float = 0.7,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Answer:
    """Answer ``question`` with the ranked ``candidates`` (best first) under ``strategy``.

    ``task_type`` None guesses it from the text (prompts.guess_task_type). Without ``client`` a
    ChatClient with default settings is made for this call and closed after it.
    """
    if strategy not in STRATEGIES:
        raise ConfigurationError(
            f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}"
        )
    if samples < 1:
        raise ConfigurationError(f"samples must be >= 1, got {samples}")
    if not 0.0 < threshold <= 1.0:
        raise ConfigurationError(f"threshold must be in (0, 1], got {threshold}")
    task_type = check_task_type(task_type) if task_type else guess_task_type(question)
    if strategy == "direct":
        samples, temperature = 1, 0.0
    if not candidates:
        raise AllEndpointsFailed(
            "no candidate endpoints to ask: the routed models have no endpoint configured "
            "(set one with `avengers models set NAME --endpoint URL`)."
        )
    own_client = client is None
    chat = client or ChatClient()
    try:
        return _run(
            question,
            list(candidates),
            chat,
            samples=samples,
            strategy=strategy,
            task_type=task_type,
            threshold=threshold,
            prompts=prompts,
            temperature=temperature,
            max_tokens=max_tokens,
        )
    finally:
        if own_client:
            chat.close()


def answer_many(
    questions: Sequence[str],
    candidates: Sequence[Sequence[Endpoint]],
    *,
    client: ChatClient | None = None,
    max_concurrency: int | None = None,
    return_exceptions: bool = False,
    **options: object,
) -> list[Answer | EndpointError]:
    """``answer`` for many questions (``candidates[i]`` ranks question i), in input order.

    At most ``max_concurrency`` (default: the client's) questions are in flight. With
    ``return_exceptions`` a failed question yields its EndpointError instead of raising.
    """
    if len(questions) != len(candidates):
        raise ConfigurationError(
            f"questions and candidates differ in length ({len(questions)} vs {len(candidates)})"
        )
    own_client = client is None
    chat = client or ChatClient()
    workers = max_concurrency or chat.max_concurrency

    def one(i: int) -> Answer | EndpointError:
        try:
            return answer(questions[i], candidates[i], client=chat, **options)  # type: ignore[arg-type]
        except EndpointError as exc:
            if return_exceptions:
                return exc
            raise

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(one, range(len(questions))))
    finally:
        if own_client:
            chat.close()


def _run(
    question: str,
    candidates: list[Endpoint],
    chat: ChatClient,
    *,
    samples: int,
    strategy: str,
    task_type: str,
    threshold: float,
    prompts: PromptSet | None,
    temperature: float,
    max_tokens: int,
) -> Answer:
    started = time.perf_counter()
    messages = (prompts or DEFAULT_PROMPTS).messages(task_type, question)
    pooled: list[ExtractedAnswer] = []
    used: list[str] = []
    usage: list[ModelUsage] = []
    failures: list[tuple[int, str, str]] = []
    tried: list[str] = []
    result: Vote = vote([])
    for endpoint in candidates:
        tried.append(endpoint.model)
        asked = time.perf_counter()
        try:
            batch = chat.sample(
                endpoint, messages, samples, temperature=temperature, max_tokens=max_tokens
            )
        except EndpointError as exc:
            failures.append((len(tried) - 1, endpoint.model, str(exc)))
            usage.append(
                ModelUsage(
                    model=endpoint.model,
                    latency_ms=(time.perf_counter() - asked) * 1000.0,
                    errors=1,
                )
            )
            continue
        used.append(endpoint.model)
        usage.append(
            ModelUsage(
                model=endpoint.model,
                samples=len(batch.texts),
                tokens_in=batch.tokens_in,
                tokens_out=batch.tokens_out,
                latency_ms=batch.latency_ms,
                requests=batch.requests,
                errors=batch.retries,
            )
        )
        pooled.extend(extract_answer(task_type, text, endpoint.model) for text in batch.texts)
        result = vote(pooled)
        if strategy != "model-switch" or result.share >= threshold:
            break
    fallbacks = tuple(
        Fallback(model=model, error=error, replaced_by=_next_after(tried, position))
        for position, model, error in failures
    )
    if not used:
        exc = AllEndpointsFailed(
            f"all {len(candidates)} candidate endpoint(s) failed: "
            + "; ".join(f"[{model}] {error}" for _, model, error in failures)
        )
        exc.failures = fallbacks  # type: ignore[attr-defined]
        raise exc
    winner_text = pooled[result.winner_index].raw if result.winner_index is not None else None
    return Answer(
        question=question,
        answer=result.winner,
        text=winner_text,
        votes=dict(result.counts),
        share=result.share,
        strategy=strategy,
        task_type=task_type,
        models=tuple(used),
        usage=tuple(usage),
        fallbacks=fallbacks,
        samples=tuple(pooled),
        valid=result.valid,
        latency_ms=(time.perf_counter() - started) * 1000.0,
    )


def _next_after(tried: list[str], position: int) -> str | None:
    return tried[position + 1] if position + 1 < len(tried) else None
