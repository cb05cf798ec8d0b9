"""Incremental evaluation of one model (the paper's "new model" step): run it on the stored
calibration queries it has no outcome for, grade its samples, store the outcomes, refresh the
profiles. No re-clustering: the model becomes routable under the active clustering.

Resumable: outcomes are committed batch by batch (with the profile refresh), and a rerun only
picks the queries still missing an outcome. Interrupting loses at most the batch in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from tqdm import tqdm

from avengers_store.answering import grading
from avengers_store.answering.chat import DEFAULT_MAX_TOKENS, ChatClient, Endpoint
from avengers_store.answering.extraction import extract
from avengers_store.answering.prompts import PromptSet, messages
from avengers_store.errors import ConfigurationError, EndpointError, InputError
from avengers_store.ingest import model_pool, outcomes
from avengers_store.store import connections
from avengers_store.store.queries import query
from avengers_store.store.refresh import refresh_profiles

DEFAULT_SAMPLES = 10
DEFAULT_BATCH = 20

PENDING_SQL = query("production", "pending")

UNGRADABLE_SQL = query("production", "ungradable")


@dataclass(frozen=True)
class EvaluationReport:
    """What one ``evaluate_model`` run did."""

    model: str
    evaluated: int  # outcomes written
    failed: int  # queries whose endpoint call failed (no outcome written; a rerun retries them)
    ungradable: int  # calibration queries without a reference answer (skipped)
    mean_score: float | None
    tokens_in: int
    tokens_out: int
    cost: float | None
    seconds: float


@dataclass(frozen=True)
class _Pending:
    query_id: int
    text: str
    task_type: str
    reference: str


def evaluate_model(
    name: str,
    *,
    samples: int = DEFAULT_SAMPLES,
    limit: int | None = None,
    dataset: str | None = None,
    concurrency: int = 4,
    batch_size: int = DEFAULT_BATCH,
    temperature: float = 0.7,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    prompts: PromptSet | None = None,
    chat: ChatClient | None = None,
    progress: bool | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvaluationReport:
    """Evaluate model ``name`` through its endpoint on up to ``limit`` calibration queries
    (of ``dataset`` only, if given) that have no outcome for it.

    Each query gets ``samples`` completions; its score is the mean grade
    (``grading.grade(task_type, sample, reference_answer)``). Outcomes are stored with source
    ``evaluate:<name>``, tokens, latency and cost from the model's prices. With ``conn`` the
    caller's transaction is used and nothing is committed here; otherwise each batch commits.
    """
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}", location="samples")
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}", location="limit")
    if concurrency < 1:
        raise InputError(f"concurrency must be >= 1, got {concurrency}", location="concurrency")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}", location="batch_size")
    started = time.perf_counter()
    own_chat = chat is None
    client = chat or ChatClient(max_concurrency=max(concurrency, 4))
    try:
        with connections.connection(url, conn=conn) as c:
            model = model_pool.get_model(name, conn=c)
            if not model.endpoint:
                raise ConfigurationError(
                    f"model {name!r} has no endpoint to evaluate through: give it one "
                    f"(`avengers models set {name}`, model_pool.set_model) first."
                )
            endpoint = Endpoint(
                model.name, model.endpoint, model.served_name or model.name, model.api_key_env
            )
            params = {"model": model.id, "dataset": dataset, "limit": limit}
            pending = [_Pending(*row) for row in c.execute(PENDING_SQL, params).fetchall()]
            ungradable = c.execute(UNGRADABLE_SQL, params).fetchone()[0]
            if conn is None:
                c.commit()  # nothing written yet; do not hold a snapshot during sampling
            totals = _Totals()
            bar = tqdm(
                total=len(pending),
                desc=f"evaluate {name}",
                unit="query",
                disable=(not _isatty()) if progress is None else not progress,
            )
            with bar, ThreadPoolExecutor(max_workers=concurrency) as pool:
                for start in range(0, len(pending), batch_size):
                    batch = pending[start : start + batch_size]

                    def run(item: _Pending) -> outcomes.OutcomeRow | EndpointError:
                        return _evaluate_one(
                            client, endpoint, model, item, samples, temperature, max_tokens,
                            prompts,
                        )  # fmt: skip

                    results = list(pool.map(run, batch))
                    rows = [r for r in results if isinstance(r, outcomes.OutcomeRow)]
                    errors = [r for r in results if isinstance(r, EndpointError)]
                    if errors and not rows:
                        raise EndpointError(
                            f"evaluating {name}: every query of a batch failed "
                            f"({len(errors)}); first error: {errors[0]}"
                        ) from errors[0]
                    if rows:
                        outcomes.upsert_outcomes(c, rows)
                        refresh_profiles(c)
                        if conn is None:
                            c.commit()
                    totals.add(rows, len(errors))
                    bar.update(len(batch))
                    if on_batch is not None:
                        on_batch(totals.evaluated)
    finally:
        if own_chat:
            client.close()
    return EvaluationReport(
        model=name,
        evaluated=totals.evaluated,
        failed=totals.failed,
        ungradable=ungradable,
        mean_score=totals.score_sum / totals.evaluated if totals.evaluated else None,
        tokens_in=totals.tokens_in,
        tokens_out=totals.tokens_out,
        cost=totals.cost if totals.priced else None,
        seconds=time.perf_counter() - started,
    )


class _Totals:
    def __init__(self) -> None:
        self.evaluated = self.failed = self.tokens_in = self.tokens_out = 0
        self.score_sum = self.cost = 0.0
        self.priced = False

    def add(self, rows: list[outcomes.OutcomeRow], failed: int) -> None:
        self.failed += failed
        for r in rows:
            self.evaluated += 1
            self.score_sum += r.score
            self.tokens_in += r.tokens_in or 0
            self.tokens_out += r.tokens_out or 0
            if r.cost is not None:
                self.cost += r.cost
                self.priced = True


def _evaluate_one(
    client: ChatClient,
    endpoint: Endpoint,
    model: model_pool.Model,
    item: _Pending,
    samples: int,
    temperature: float,
    max_tokens: int,
    prompts: PromptSet | None,
) -> outcomes.OutcomeRow | EndpointError:
    try:
        batch = client.sample(
            endpoint,
            messages(item.text, item.task_type, prompts),
            samples,
            temperature=temperature,
            max_tokens=max_tokens,
        )
    except EndpointError as exc:
        return exc
    grades = [grading.grade(item.task_type, text, item.reference) for text in batch.texts]
    score = min(1.0, max(0.0, sum(grades) / len(grades)))
    cost = None
    if model.cost_in_per_m is not None or model.cost_out_per_m is not None:
        cost = (
            batch.tokens_in * (model.cost_in_per_m or 0.0)
            + batch.tokens_out * (model.cost_out_per_m or 0.0)
        ) / 1e6
    return outcomes.OutcomeRow(
        query_id=item.query_id,
        model_id=model.id,
        score=score,
        samples=len(batch.texts),
        answer=extract(item.task_type, batch.texts[0]) if batch.texts else None,
        tokens_in=batch.tokens_in,
        tokens_out=batch.tokens_out,
        cost=cost,
        latency_ms=batch.latency_ms,
        source=f"evaluate:{model.name}",
    )


def _isatty() -> bool:
    import sys

    return sys.stderr.isatty()
