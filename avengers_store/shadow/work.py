"""What shadowing does besides the response, without I/O: the items a served request hands to
it, the statement computing the shadow decisions of a batch (``avengers.shadow_decide``), the
sampling plan of a disagreeing request and the statement storing its answer. The clients'
``shadow`` flow (``client_core``) runs them; their drivers run that flow in the background."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb

from avengers_store.answering import strategies
from avengers_store.answering.prompts import (
    DEFAULT_PROMPTS,
    PromptSet,
    check_task_type,
    guess_task_type,
)
from avengers_store.answering.route_log import plain
from avengers_store.answering.sampling import Endpoint
from avengers_store.store.statement import Statement

DECIDE_SQL = (
    "SELECT route_id, model, endpoint, served_name, api_key_env, expected_cost "
    "FROM avengers.shadow_decide(%s, %s)"
)
RESERVE_SQL = "SELECT avengers.shadow_reserve(%s, %s, %s, %s)"
SAMPLE_SQL = """
UPDATE avengers.shadow_samples
SET answer = %(answer)s, served_answer = %(served)s, agrees = %(agrees)s, score = %(score)s,
    cost = coalesce((SELECT u.cost FROM avengers.request_usage(%(usage)s) u), 0),
    error = %(error)s, at = now()
WHERE route_id = %(route_id)s
"""

# Tokens a chat template may add per message (role markers, separators) over its text's bytes.
TEMPLATE_TOKENS = 16


@dataclass(frozen=True)
class ShadowItem:
    """A served request as shadowing needs it: its route id, the vector it was routed with,
    its text (for sampling; None: a vector was routed), its length, the served decision's
    first model, policy and propensity, the served answer and task type, and the shadow
    policy it was served beside (None: whichever is shadowed when it is computed)."""

    route_id: str
    vector: Any
    text: str | None
    prompt_chars: int | None
    served_model: str | None
    served_policy: dict[str, Any]
    served_propensity: float | None
    served_answer: str | None = None
    task_type: str | None = None
    shadow: str | None = None

    def entry(self) -> dict[str, Any]:
        return plain({
            "route_id": self.route_id,
            "embedding": np.asarray(self.vector, dtype=np.float32).tolist(),
            "prompt_chars": self.prompt_chars,
            "served_model": self.served_model,
            "served_policy": self.served_policy,
            "served_propensity": self.served_propensity,
        })  # fmt: skip


def item(
    route_id: Any,
    vector: Any,
    decision: Any,
    *,
    text: str | None,
    answer: Any = None,
    shadow: str | None = None,
) -> ShadowItem | None:
    """The shadow item of a served request (None: nothing was routed); ``shadow``: the shadow
    policy's name as the client read it when serving the request."""
    if decision is None or vector is None or not decision.candidates:
        return None
    return ShadowItem(
        str(route_id),
        vector,
        text,
        len(text) if text is not None else None,
        decision.candidates[0].model,
        decision.policy.to_dict() if decision.policy is not None else {},
        decision.propensity,
        answer.answer if answer is not None else None,
        answer.task_type if answer is not None else None,
        shadow,
    )


def decide_statement(items: Sequence[ShadowItem], shadow: str | None) -> Statement:
    """The batch's decisions under the shadow policy ``shadow`` (None: the one shadowed now),
    stored; its rows are the requests to sample."""
    return Statement(DECIDE_SQL, (Jsonb([i.entry() for i in items]), shadow))


def prompt_messages(found: ShadowItem, prompts: PromptSet | None) -> list[dict[str, str]]:
    """The messages a sample sends: the request's question in its task type's template."""
    text = found.text or ""
    task = check_task_type(found.task_type) if found.task_type else guess_task_type(text)
    return (prompts or DEFAULT_PROMPTS).messages(task, text)


def reserve_statement(
    found: ShadowItem, model: str, prompts: PromptSet | None, max_tokens: int
) -> Statement:
    """Reserve the most the sample can cost against the day's cap (``avengers.shadow_reserve``):
    a tokenizer makes at most one token of a prompt byte, plus the template's markers, and the
    model answers at most ``max_tokens``."""
    messages = prompt_messages(found, prompts)
    tokens_in = sum(len(m["content"].encode()) + TEMPLATE_TOKENS for m in messages)
    return Statement(RESERVE_SQL, (found.route_id, model, tokens_in, max_tokens))


def sample_plan(
    found: ShadowItem,
    endpoint: Endpoint,
    *,
    prompts: PromptSet | None,
    max_tokens: int,
) -> strategies.Plan:
    """One answer of the shadow's top model to the request's question."""
    return strategies.answer_plan(
        found.text or "",
        [endpoint],
        messages=prompt_messages(found, prompts),
        samples=1,
        strategy="direct",
        task_type=found.task_type,
        max_tokens=max_tokens,
    )


def sample_statement(
    found: ShadowItem, model: str, answer: strategies.Answer | None, error: str | None
) -> Statement:
    """Store the sampled answer (or why there is none) beside the served one, its cost in
    place of the reservation."""
    got = answer.answer if answer is not None else None
    served = found.served_answer
    agrees = None
    if got is not None and served is not None:
        # Both are canonical extracted answers (the vote's keys): equal text is agreement.
        agrees = got.strip() == served.strip()
    usage = [plain(asdict(u)) for u in answer.usage] if answer is not None else []
    return Statement(
        SAMPLE_SQL,
        {
            "route_id": found.route_id, "model": model, "answer": got, "served": served,
            "agrees": agrees, "score": None, "usage": Jsonb(usage), "error": error,
        },
    )  # fmt: skip
