"""What ``AvengersClient`` and ``AsyncAvengersClient`` share, written once: argument checks, the
serving-space lookup, candidate endpoints of a decision, and turning answers into results and
route-log rows. The clients only add I/O (sync or async) around these."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from avengers_store.answering import route_log, strategies
from avengers_store.answering.sampling import Deadline, Endpoint
from avengers_store.calibration.embedding_spaces import Space, space_from_row
from avengers_store.errors import AvengersError, InputError, StoreStateError
from avengers_store.routing import RouteDecision, exploration

# Candidates handed to the ensemble. Self-Consistency and Direct sample one model; the others
# are only fallbacks when its endpoint is down. Model-Switch may pool all of them.
DEFAULT_TOP_N = {"self-consistency": 3, "model-switch": 3, "direct": 3}

Query = str | Sequence[float] | np.ndarray

# Seconds an ``ask`` may take as a whole by default: embedding, routing, every model call, retry
# and fallback (None: only each HTTP request's own timeout bounds it).
DEFAULT_TIMEOUT = 120.0

# The active clustering and the space routing embeds in (its space; the active space when
# nothing is clustered yet), in one round trip.
SERVING_SQL = """
SELECT k.id, s.id, s.embedder, s.dimension, s.active, s.params, s.created_at
FROM avengers.embedding_spaces s
LEFT JOIN avengers.active_clustering k ON true
WHERE s.id = coalesce(k.space_id, (SELECT a.id FROM avengers.embedding_spaces a WHERE a.active))
"""

NO_SPACE = (
    "the store has no embedding space yet: run `avengers embed` and `avengers recluster` before "
    "routing text."
)


def serving_from_row(row: Sequence[Any] | None) -> tuple[int | None, Space]:
    """(active clustering id, serving space) from a ``SERVING_SQL`` row."""
    if row is None:
        raise StoreStateError(NO_SPACE)
    return row[0], space_from_row(row[1:])


def text_positions(queries: Sequence[Query]) -> list[tuple[int, str]]:
    """(position, text) of the texts among ``queries`` (vectors pass through); empty texts are
    refused naming their position."""
    texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
    for i, q in texts:
        if not q.strip():
            raise InputError("the query text is empty", location=f"query {i + 1}")
    return texts


def check_route_many(queries: object) -> None:
    if isinstance(queries, str):
        raise InputError(
            "route_many takes a list of queries; use route() for one text", location="queries"
        )


def stale(decisions: Sequence[RouteDecision], served: int | None) -> bool:
    """The served clustering changed since the embedder was chosen (maybe to another embedding
    space): look it up again and route once more."""
    return served is not None and any(d.clustering_id != served for d in decisions)


def check_ask(texts: Sequence[str], strategy: str) -> None:
    if isinstance(texts, str):
        raise InputError("ask_many takes a list of texts; use ask() for one", location="texts")
    if strategy not in strategies.STRATEGIES:
        raise InputError(
            f"unknown strategy {strategy!r}; expected one of {', '.join(strategies.STRATEGIES)}",
            location="strategy",
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError("expected a non-empty question text", location=f"question {i + 1}")


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise InputError(f"timeout must be > 0 seconds, got {timeout}", location="timeout")


def load_embedder(embedder: Any) -> None:
    """Read the embedder's model now if it has one to read (an embedder given to a client
    needs only ``embed``)."""
    load = getattr(embedder, "load", None)
    if load is not None:
        load()


def question_deadline(timeout: float | None, spent: float) -> Deadline | None:
    """The deadline of one question's sampling: ``timeout`` seconds from the ask, of which
    ``spent`` went to the shared embedding and routing (it may have passed already)."""
    if timeout is None:
        return None
    return Deadline(time.monotonic() + timeout - spent, timeout)


def top_n_for(strategy: str, top_n: int | None) -> int:
    return top_n or DEFAULT_TOP_N[strategy]


def asked_for(top_n: int, explores: bool) -> int:
    """Candidates to ask the routing statement for: more than shown when exploration is on."""
    return exploration.pool_size(
        top_n, exploration.Exploration("thompson") if explores else exploration.OFF
    )


def options_for(decision: RouteDecision, options: dict[str, Any]) -> dict[str, Any]:
    """The answering options of one question: Model-Switch over the candidates for an
    out-of-distribution question under the ``widen`` policy."""
    if decision.ood and decision.ood_policy == "widen":
        return {**options, "strategy": "model-switch"}
    return options


def completions_for(strategy: str, samples: int) -> int:
    """Answers one request draws from its first model: what its expected cost counts."""
    return 1 if strategy == "direct" else max(1, int(samples))


def prompt_chars(queries: Sequence[Query], given: Sequence[int | None] | None) -> list[int | None]:
    """Each query's length in characters for its expected cost: a text's own length, a
    vector's from ``given`` (None: unknown, the store assumes its calibration texts' mean)."""
    if given is not None and len(given) != len(queries):
        raise InputError(
            f"expected {len(queries)} prompt lengths, got {len(given)}", location="prompt_chars"
        )
    return [
        len(q) if isinstance(q, str) else (given[i] if given is not None else None)
        for i, q in enumerate(queries)
    ]


def endpoints_for(decision: RouteDecision) -> list[Endpoint]:
    """The decision's candidates as endpoints, best first; a clear error when there is none."""
    if not decision.candidates:
        raise StoreStateError(
            f"no active model with an endpoint has a profile for cluster {decision.cluster} "
            f"of clustering {decision.clustering_id}: give a model an endpoint "
            "(`avengers models add NAME --endpoint URL`) or activate one "
            "(`avengers models activate NAME`)."
        )
    return [
        Endpoint(c.model, c.endpoint, c.served_name or c.model, c.api_key_env)
        for c in decision.candidates
    ]


Outcome = tuple[strategies.Answer | None, AvengersError | None, float]


def settle(
    texts: Sequence[str],
    decisions: Sequence[RouteDecision],
    outcomes: Sequence[Outcome],
    *,
    routed_ms: float,
    strategy: str,
    top_n: int,
    vectors: Sequence[Any] | None = None,
    keep_texts: bool = False,
) -> tuple[list[strategies.Answer | AvengersError], list[dict[str, Any]]]:
    """Results in input order (Answers with decision, end-to-end latency and route id filled,
    or the error) and one route-log row each. ``outcomes[i]`` is (answer, error, sampling ms).
    ``vectors`` (the queries' embeddings, when the client logs them) go into the rows, and the
    texts with them when ``keep_texts``."""
    out: list[strategies.Answer | AvengersError] = []
    rows = []
    share = routed_ms / len(texts) if texts else 0.0
    for i, (text, decision, (ans, err, ms)) in enumerate(
        zip(texts, decisions, outcomes, strict=True)
    ):
        total = share + ms
        route_id = uuid.uuid4()
        if ans is not None:
            ans = dataclasses.replace(ans, decision=decision, latency_ms=total, route_id=route_id)
        rows.append(
            route_log.entry(
                text,
                decision=decision,
                answer=ans,
                strategy=strategy,
                latency_ms=total,
                error=str(err) if err is not None else None,
                extra={"route_ms": round(share, 3), "top_n": top_n, **cost_fields(decision)},
                route_id=route_id,
                vector=vectors[i] if vectors is not None else None,
                text=text if vectors is not None and keep_texts else None,
            )
        )
        out.append(ans if ans is not None else err)  # type: ignore[arg-type]
    return out, rows


def cost_fields(decision: RouteDecision | None) -> dict[str, Any]:
    """What a cost-aware decision adds to its route-log row (nothing for a plain one)."""
    if decision is None or not decision.costed:
        return {}
    return {
        "tradeoff": decision.tradeoff,
        "max_cost": decision.max_cost,
        "expected_costs": [c.expected_cost for c in decision.candidates],
        "over_budget": decision.over_budget,
    }


def raise_first(results: Sequence[strategies.Answer | AvengersError]) -> None:
    for item in results:
        if isinstance(item, AvengersError):
            raise item
