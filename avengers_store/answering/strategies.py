"""From ranked candidate endpoints to one answer: sample, extract, vote (the paper's ensembling).

Strategies:
    self-consistency  ``samples`` completions from the first candidate, majority vote.
    model-switch      sample the first candidate; while the winner's share of valid votes is
                      below ``threshold``, also sample the next candidate (same number of samples)
                      and vote over the pooled answers; stop at the threshold or when candidates
                      run out.
    direct            one completion at temperature 0.

Temperature: a caller's is sent as given. Without one, Self-Consistency and Model-Switch draw
at ``DEFAULT_TEMPERATURE`` (0.7) when a candidate is asked for several samples (they must differ
to be worth voting on) and send none for a single sample, so the server's own default applies.

Answers: a sample votes for its tool calls when it made any, else for its text as JSON under a
JSON ``response_format`` in ``extra``, else for the answer extracted for the task type
(``extraction.extract_completion``); kinds are counted first (``voting``). The Answer carries
the returned sample (``chosen``: the winner's first sample, else the first sample drawn) with its
text, tool calls, logprobs and finish reason.

Fallback: a candidate whose endpoint fails (after the client's retries, or for want of its API
key) is recorded in ``Answer.fallbacks`` and the next-ranked candidate takes its place. When every
candidate fails, AllEndpointsFailed names each endpoint and its error (``exc.failures``;
``exc.timed_out`` when every one of them timed out).

Deadline: with ``deadline`` set, the answer is over by then, retries and fallbacks included. Each
candidate, when its turn comes, gets an equal share of the time left among the candidates not yet
asked (the last one gets all of it), so a hung endpoint cannot take the whole budget from the
models after it: with 5 s and three candidates, a first endpoint that never answers is given up
after about 1.7 s and the second has at least as long. Within its share a candidate's attempts are
cut to the time left. When the deadline passes, the samples already drawn are voted on (a
Model-Switch stops switching); with none, AllEndpointsFailed says so (``timed_out``), naming the
endpoints tried and those left.

The strategies are written once, without I/O: ``answer_plan`` is a generator that yields
``SampleCall``s ("draw n completions from this endpoint") and is sent each call's SampleBatch (or
the EndpointError it raised); it returns the Answer. ``answer`` drives it with a ``ChatClient``,
``aanswer`` with an ``AsyncChatClient``, and the gateway with its own streaming driver.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from avengers_store.answering.chat import ChatClient
from avengers_store.answering.extraction import (
    AnswerFormat,
    ExtractedAnswer,
    extract_completion,
)
from avengers_store.answering.prompts import (
    DEFAULT_PROMPTS,
    PromptSet,
    check_task_type,
    guess_task_type,
)
from avengers_store.answering.sampling import (
    DEFAULT_MAX_TOKENS,
    Deadline,
    Endpoint,
    Messages,
    SampleBatch,
    deadline_after,
)
from avengers_store.answering.voting import Vote, vote
from avengers_store.errors import AllEndpointsFailed, ConfigurationError, EndpointError
from avengers_store.flows import Done, advance

if TYPE_CHECKING:
    from avengers_store.answering.async_chat import AsyncChatClient

STRATEGIES: tuple[str, ...] = ("self-consistency", "model-switch", "direct")
DEFAULT_SAMPLES = 10
DEFAULT_THRESHOLD = 0.8
# Sent when a candidate is asked for several samples and the caller set no temperature.
DEFAULT_TEMPERATURE = 0.7


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
    finish_reason: str | None = None  # of the returned sample
    route_id: uuid.UUID | None = None  # the id of its route_log row, once logged
    chosen: int | None = None  # the returned sample: the winner's first, else the first drawn

    @property
    def returned(self) -> ExtractedAnswer | None:
        """The sample the caller gets: the first that gave the winner, else the first drawn
        (None: no sample)."""
        return self.samples[self.chosen] if self.chosen is not None else None

    @property
    def model(self) -> str | None:
        """The model whose sample is returned."""
        sample = self.returned
        if sample is not None and sample.model is not None:
            return sample.model
        return self.models[0] if self.models else None

    @property
    def tool_calls(self) -> tuple[Mapping[str, Any], ...]:
        """The returned sample's tool calls (OpenAI ``tool_calls`` objects), if it made any."""
        sample = self.returned
        return sample.tool_calls if sample is not None else ()

    @property
    def logprobs(self) -> Mapping[str, Any] | None:
        """The returned sample's ``logprobs`` object, when the request asked for them."""
        sample = self.returned
        return sample.logprobs if sample is not None else None

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
            "finish_reason": self.finish_reason,
            "tool_calls": [dict(c) for c in self.tool_calls],
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_ms": round(self.latency_ms, 1),
            "route_id": str(self.route_id) if self.route_id else None,
        }
        if include_samples:
            out["samples"] = [asdict(s) for s in self.samples]
        return out


@dataclass(frozen=True)
class SampleCall:
    """What a plan asks its driver for: ``n`` completions of ``messages`` from ``endpoint``,
    over by ``deadline`` (this candidate's share of the answer's; None: no bound)."""

    endpoint: Endpoint
    messages: Messages
    n: int
    temperature: float | None  # None: send none
    max_tokens: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    deadline: Deadline | None = None

    def ask(self, chat: ChatClient | AsyncChatClient) -> Any:
        """This call on ``chat``: a ``SampleBatch`` from a ``ChatClient``, an awaitable of one
        from an ``AsyncChatClient``."""
        return chat.sample(
            self.endpoint,
            self.messages,
            self.n,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            deadline=self.deadline,
            **self.extra,
        )


Plan = Generator[SampleCall, SampleBatch | EndpointError, Answer]


def answer_plan(
    question: str,
    candidates: Sequence[Endpoint],
    *,
    samples: int = DEFAULT_SAMPLES,
    strategy: str = "self-consistency",
    task_type: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    prompts: PromptSet | None = None,
    temperature: float | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    messages: Messages | None = None,
    extra: Mapping[str, Any] | None = None,
    deadline: Deadline | None = None,
) -> Plan:
    """The plan answering ``question`` with the ranked ``candidates`` (best first) under
    ``strategy``; options are checked now. ``temperature`` None: see the module docstring.
    ``messages`` replaces the prompt template (a caller's conversation, sent as is); ``extra``
    is merged into every request body (its ``response_format`` decides how answers vote);
    ``deadline`` bounds the answer (see the module docstring for how it is shared)."""
    if strategy not in STRATEGIES:
        raise ConfigurationError(
            f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}"
        )
    if samples < 1:
        raise ConfigurationError(f"samples must be >= 1, got {samples}")
    if not 0.0 < threshold <= 1.0:
        raise ConfigurationError(f"threshold must be in (0, 1], got {threshold}")
    task_type = check_task_type(task_type) if task_type else guess_task_type(question)
    answer_format = AnswerFormat.from_request(extra)
    if strategy == "direct":
        samples, temperature = 1, 0.0
    elif temperature is None and samples > 1:
        temperature = DEFAULT_TEMPERATURE
    if not candidates:
        raise AllEndpointsFailed(
            "no candidate endpoints to ask: the routed models have no endpoint configured "
            "(give one an endpoint: `avengers models set NAME`, model_pool.set_model)."
        )
    if messages is None:
        messages = (prompts or DEFAULT_PROMPTS).messages(task_type, question)
    return _steps(
        question,
        list(candidates),
        [dict(m) for m in messages],
        samples=samples,
        strategy=strategy,
        task_type=task_type,
        threshold=threshold,
        temperature=temperature,
        max_tokens=max_tokens,
        extra=dict(extra or {}),
        answer_format=answer_format,
        deadline=deadline,
    )


def run_plan(plan: Plan, chat: ChatClient) -> Answer:
    """Drive a plan with the sync client."""
    result: SampleBatch | EndpointError | None = None
    while not isinstance(call := advance(plan, result), Done):
        try:
            result = call.ask(chat)
        except EndpointError as exc:
            result = exc
    return call.value


async def arun_plan(plan: Plan, chat: AsyncChatClient) -> Answer:
    """Drive a plan with the async client."""
    result: SampleBatch | EndpointError | None = None
    while not isinstance(call := advance(plan, result), Done):
        try:
            result = await call.ask(chat)
        except EndpointError as exc:
            result = exc
    return call.value


def answer(
    question: str,
    candidates: Sequence[Endpoint],
    *,
    client: ChatClient | None = None,
    timeout: float | None = None,
    **options: Any,
) -> Answer:
    """Answer ``question`` with the ranked ``candidates`` (best first); ``options`` are
    ``answer_plan``'s (samples, strategy, task_type, threshold, prompts, temperature,
    max_tokens, messages, extra, deadline). ``timeout`` (seconds) sets the deadline from now.

    ``task_type`` None guesses it from the text (prompts.guess_task_type). Without ``client`` a
    ChatClient with default settings is made for this call and closed after it.
    """
    if timeout is not None:
        options["deadline"] = deadline_after(timeout)
    plan = answer_plan(question, candidates, **options)
    own_client = client is None
    chat = client or ChatClient()
    try:
        return run_plan(plan, chat)
    finally:
        if own_client:
            chat.close()


async def aanswer(
    question: str,
    candidates: Sequence[Endpoint],
    *,
    client: AsyncChatClient,
    timeout: float | None = None,
    **options: Any,
) -> Answer:
    """``answer`` on an AsyncChatClient."""
    if timeout is not None:
        options["deadline"] = deadline_after(timeout)
    return await arun_plan(answer_plan(question, candidates, **options), client)


def answer_many(
    questions: Sequence[str],
    candidates: Sequence[Sequence[Endpoint]],
    *,
    client: ChatClient | None = None,
    max_concurrency: int | None = None,
    return_exceptions: bool = False,
    timeout: float | None = None,
    **options: object,
) -> list[Answer | EndpointError]:
    """``answer`` for many questions (``candidates[i]`` ranks question i), in input order.

    At most ``max_concurrency`` (default: the client's) questions are in flight. With
    ``return_exceptions`` a failed question yields its EndpointError instead of raising.
    ``timeout`` bounds each question from when it starts (waiting for a free slot is not counted).
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
            return answer(questions[i], candidates[i], client=chat, timeout=timeout, **options)  # type: ignore[arg-type]
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


def _steps(
    question: str,
    candidates: list[Endpoint],
    messages: list[dict[str, str]],
    *,
    samples: int,
    strategy: str,
    task_type: str,
    threshold: float,
    temperature: float | None,
    max_tokens: int,
    extra: dict[str, Any],
    answer_format: AnswerFormat,
    deadline: Deadline | None,
) -> Plan:
    started = time.perf_counter()
    pooled: list[ExtractedAnswer] = []
    used: list[str] = []
    usage: list[ModelUsage] = []
    failures: list[tuple[int, str, str]] = []
    timeouts = 0
    tried: list[str] = []
    result: Vote = vote([])
    for position, endpoint in enumerate(candidates):
        if deadline is not None and deadline.passed:
            break
        tried.append(endpoint.model)
        asked = time.perf_counter()
        # An equal share of the time left for each candidate not asked yet: a hung endpoint
        # cannot take the whole budget from the ones after it.
        share = deadline.share(len(candidates) - position) if deadline is not None else None
        batch = yield SampleCall(
            endpoint, messages, samples, temperature, max_tokens, extra, deadline=share
        )
        if isinstance(batch, EndpointError):
            failures.append((len(tried) - 1, endpoint.model, str(batch)))
            timeouts += batch.timed_out
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
                samples=len(batch.completions),
                tokens_in=batch.tokens_in,
                tokens_out=batch.tokens_out,
                latency_ms=batch.latency_ms,
                requests=batch.requests,
                errors=batch.retries,
            )
        )
        pooled.extend(
            extract_completion(task_type, c, endpoint.model, answer_format)
            for c in batch.completions
        )
        result = vote(pooled)
        if strategy != "model-switch" or result.share >= threshold:
            break
    fallbacks = tuple(
        Fallback(model=model, error=error, replaced_by=_next_after(tried, position))
        for position, model, error in failures
    )
    if not used:
        untried = [e.model for e in candidates[len(tried) :]]
        out_of_time = bool(untried) or (deadline is not None and deadline.passed)
        if out_of_time and deadline is not None:
            head = f"no answer within {deadline.describe()}"
            if failures:
                head += f"; {len(failures)} candidate endpoint(s) failed"
        else:
            head = f"all {len(candidates)} candidate endpoint(s) failed"
        detail = "; ".join(f"[{model}] {error}" for _, model, error in failures)
        if untried:
            detail += ("; " if detail else "") + f"not asked: {', '.join(untried)}"
        raise AllEndpointsFailed(
            f"{head}: {detail}" if detail else head,
            timed_out=out_of_time or timeouts == len(failures),
            failures=fallbacks,
        )
    chosen = result.winner_index if result.winner_index is not None else (0 if pooled else None)
    return Answer(
        question=question,
        answer=result.winner,
        text=pooled[result.winner_index].raw if result.winner_index is not None else None,
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
        finish_reason=pooled[chosen].finish_reason if chosen is not None else None,
        chosen=chosen,
    )


def _next_after(tried: list[str], position: int) -> str | None:
    return tried[position + 1] if position + 1 < len(tried) else None
