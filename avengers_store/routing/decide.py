"""The routing decision as one statement: ``avengers.decide`` for one vector,
``avengers.decide_many`` for a batch (one snapshot of the store), and their rows turned into
``RouteDecision``s. The rule lives in sql/040_decide.sql; nothing here ranks.

A query's Mahalanobis distance to its clustering's calibration Gaussian (what its novelty is
measured by, ``routing.novelty``) is computed here and passed in: numpy does the 384 x 384
product in a few microseconds where SQL needs one inner product per axis (hundreds of
microseconds: ``avengers.novelty``, what decide falls back to when the distance is not given, or
was computed for another clustering version). decide divides it by the clustering's current
threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import psycopg

from avengers_store.calibration.novelty import NoveltyModel
from avengers_store.errors import InputError, StoreStateError
from avengers_store.routing.adapters import (
    VectorBatch,
    as_query_vector,
    ensure_vector_types,
    number_array,
    query_matrix,
    query_vector,
)
from avengers_store.routing.decisions import Candidate, RouteDecision
from avengers_store.routing.policy import Policy
from avengers_store.store.statement import Statement, run

NO_ACTIVE_CLUSTERING = (
    "no clustering is active, so nothing can be routed: build one with `avengers recluster` "
    "(or activate a ready one: CALL avengers.activate_clustering(id))."
)

# The columns of avengers.decision, in its order: what decisions_from_rows reads.
DECISION_COLUMNS = (
    "ord, clustering_id, cluster, distance, novelty, ood, ood_policy, exploration, explored, "
    "production_weight, rank, model_id, model, endpoint, served_name, api_key_env, score, "
    "evidence, propensity, mean_score, n, wilson_low, wilson_high, overall_score, production_n, "
    "production_mean, expected_cost, over_budget, utility, expected_latency_ms"
)


@lru_cache(maxsize=512)
def _decide_sql(policy: str, options: tuple[str, ...], many: bool) -> str:
    """The decision statement: the policy's call, then the options given by name (those left
    out are the function's defaults, constants the plan folds)."""
    kinds = MANY_OPTIONS if many else OPTIONS
    named = "".join(f", {name} => %s::{kinds[name]}" for name in options)
    if many:
        return (
            f"SELECT {DECISION_COLUMNS}\nFROM avengers.decide_many(%b::vector[], {policy}{named})"
        )
    return f"SELECT {DECISION_COLUMNS}\nFROM avengers.decide(%b::vector, {policy}{named})"


OPTIONS = {
    "seed": "bigint", "prompt_chars": "integer", "pinned": "text", "mahalanobis": "float8",
    "novelty_clustering": "integer",
}  # fmt: skip
MANY_OPTIONS = {
    "seeds": "bigint[]", "prompt_chars": "integer[]", "pinned": "text[]",
    "mahalanobis": "float8[]", "novelty_clustering": "integer",
}  # fmt: skip


def statement(
    vectors: Sequence[Any] | np.ndarray,
    policy: Policy,
    *,
    seeds: Sequence[int | None] | None = None,
    prompt_chars: Sequence[int | None] | None = None,
    pinned: Sequence[str | None] | None = None,
    novelty: NoveltyModel | None = None,
    novelty_clustering: int | None = None,
    prepared: bool = True,
) -> Statement:
    """The decision statement for ``vectors`` under ``policy``: ``avengers.decide`` for one
    vector (prepared: a router repeats it), ``avengers.decide_many`` for several, and for one
    when the connection keeps no prepared statements (``prepared`` False: a transaction-mode
    pooler). decide is inlined into the caller's statement, so unprepared it is planned on every
    call (2.9 ms at k = 64); decide_many is a function of its own whose plan the server keeps for
    the session (PostgreSQL 18: 0.6 ms a call unprepared, as a prepared decide). Per query:
    ``seeds`` (exploration's draws), ``prompt_chars`` (its length, for its expected cost; None:
    the calibration texts' mean), ``pinned`` (a model asked first when it is a candidate).
    ``novelty``: the novelty model of ``novelty_clustering``, to compute each query's
    Mahalanobis distance here."""
    count = len(vectors)
    if count == 0:
        raise InputError("no query vectors to route", location="queries")
    seeds = _per_query(seeds, count, "seeds")
    chars = _lengths(prompt_chars, count)
    pins = _per_query(pinned, count, "pinned")
    policy_sql, policy_params = policy.sql()
    if not policy.costed:  # a plain decision has no use for prompt lengths
        chars = [None] * count
    if count == 1 and prepared and not isinstance(vectors, np.ndarray | VectorBatch):
        vector = query_vector(vectors[0])
        scores = _novelty(novelty, vector.array[None, :])
        options = {"seed": seeds[0], "prompt_chars": chars[0], "pinned": pins[0]}
        if scores[0] is not None:
            options |= {"mahalanobis": scores[0], "novelty_clustering": novelty_clustering}
        given = tuple(k for k, v in options.items() if v is not None)
        return Statement(
            _decide_sql(policy_sql, given, False),
            (vector, *policy_params, *(options[k] for k in given)),
            prepare=True,
            binary=True,
            location="query vector",
        )
    matrix = query_matrix(vectors)
    if matrix is None:  # the per-vector checks name the first bad one
        rows = [
            as_query_vector(v, location=f"query vector {i + 1}").to_numpy()
            for i, v in enumerate(vectors)
        ]
        _same_length(rows)
        matrix = np.array(rows, dtype=np.float32)
    scores = _novelty(novelty, matrix)
    options = {
        "seeds": _numbers(seeds), "prompt_chars": _none_if_all(chars),
        "pinned": _none_if_all(pins), "mahalanobis": _numbers(scores),
    }  # fmt: skip
    if options["mahalanobis"] is not None:
        options["novelty_clustering"] = novelty_clustering
    given = tuple(k for k, v in options.items() if v is not None)
    return Statement(
        _decide_sql(policy_sql, given, True),
        (VectorBatch(matrix), *policy_params, *(options[k] for k in given)),
        binary=True,
        location="query vector" if count == 1 else "query vectors",
    )


def decide(
    conn: psycopg.Connection,
    vectors: Sequence[Any] | np.ndarray,
    policy: Policy,
    **options: Any,
) -> list[RouteDecision]:
    """Run the decision statement on ``conn`` (``options`` as ``statement``): one decision per
    vector, in input order."""
    ensure_vector_types(conn)
    rows = run(conn, statement(vectors, policy, **options))
    return decisions_from_rows(rows, len(vectors), policy)


def decisions_from_rows(
    rows: Sequence[Sequence[Any]], count: int, policy: Policy
) -> list[RouteDecision]:
    """Group ``avengers.decision`` rows (``DECISION_COLUMNS``) into one decision per query,
    ord 1 to ``count``."""
    heads: dict[int, tuple[Any, ...]] = {}
    picks: dict[int, list[Candidate]] = {}
    candidate = _CANDIDATE
    for (ord_, clustering_id, cluster, distance, novelty, ood, ood_policy, exploration, explored,
         weight, rank, model_id, model, endpoint, served, key_env, score, evidence, propensity,
         mean, n, lo, hi, overall, production_n, production_mean, cost, over, utility,
         latency) in rows:  # fmt: skip
        found = picks.get(ord_)
        if found is None:
            heads[ord_] = (clustering_id, cluster, distance, novelty, ood, ood_policy, exploration,
                           explored, weight)  # fmt: skip
            found = picks[ord_] = []
        if model is not None:
            found.append(candidate((model, rank, mean, n, lo, hi, endpoint, served, overall,
                                    model_id, key_env, score, cost, over, utility, production_n,
                                    production_mean, evidence, propensity,
                                    latency)))  # fmt: skip
    if len(heads) != count:
        raise StoreStateError(
            NO_ACTIVE_CLUSTERING
            if policy.clustering_id is None
            else f"clustering {policy.clustering_id} is not one routing serves: "
            "SELECT clustering_id FROM avengers.routing_state"
        )
    decision = _DECISION
    out = []
    for i in range(1, count + 1):
        (clustering_id, cluster, distance, novelty, ood, ood_policy, exploration, explored,
         weight) = heads[i]  # fmt: skip
        out.append(
            decision(
                (
                    clustering_id,
                    cluster,
                    distance,
                    tuple(picks[i]),
                    policy,
                    exploration,
                    explored,
                    novelty,
                    ood,
                    ood_policy,
                    weight,
                )
            )  # fmt: skip
        )
    return out


def _builder(cls: type) -> Callable[[tuple[Any, ...]], Any]:
    """A constructor of the frozen, slotted dataclass ``cls`` from all its fields in order,
    setting the slots directly: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, which made building a batch's decisions a third of its client-side
    time (10,000 decisions: ~19 µs each). Generated with one line per slot, as dataclasses
    generates ``__init__``: a loop over the slots took twice as long (2.5 against 1.3 µs a
    candidate)."""
    fields = dataclasses.fields(cls)
    scope: dict[str, Any] = {f"set{i}": getattr(cls, f.name).__set__ for i, f in enumerate(fields)}
    scope |= {"new": object.__new__, "cls": cls}
    given = ", ".join(f"v{i}" for i in range(len(fields)))
    source = (
        f"def build(values):\n    {given}, = values\n    obj = new(cls)\n"
        + "".join(f"    set{i}(obj, v{i})\n" for i in range(len(fields)))
        + "    return obj\n"
    )
    exec(source, scope)  # numbered names only: the text holds nothing from outside
    return scope["build"]


_CANDIDATE = _builder(Candidate)
_DECISION = _builder(RouteDecision)


def _same_length(rows: Sequence[np.ndarray]) -> None:
    """Refuse a batch of vectors of different lengths, naming the first that differs (one
    batch is one matrix; the store names a length that is not the clustering's)."""
    for i, row in enumerate(rows):
        if row.size != rows[0].size:
            raise InputError(
                f"query vector {i + 1} has {row.size} dimensions where query vector 1 has "
                f"{rows[0].size}: a batch's vectors come from one embedding space",
                location=f"query vector {i + 1}",
            )


def _novelty(model: NoveltyModel | None, matrix: np.ndarray) -> list[float | None]:
    # Vectors of another dimension than the model's are not measured: the store names them.
    if model is None or matrix.shape[1] != model.mean.size:
        return [None] * len(matrix)
    return [float(x) for x in model.query_distances(matrix)]


def _per_query(values: Sequence[Any] | None, count: int, location: str) -> list[Any]:
    if values is None:
        return [None] * count
    out = list(values)
    if len(out) != count:
        raise InputError(
            f"expected {count} values, one per query, got {len(out)}", location=location
        )
    return out


def _lengths(values: Sequence[int | None] | None, count: int) -> list[int | None]:
    out = _per_query(values, count, "prompt_chars")
    for i, v in enumerate(out):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0):
            raise InputError(
                f"a prompt length is a number of characters >= 0, got {v!r}",
                location=f"prompt_chars {i + 1}",
            )
    return [None if v is None else int(v) for v in out]


def _numbers(values: list[Any]) -> Any:
    """``_none_if_all``, sent as one binary array when no entry is None."""
    found = _none_if_all(values)
    return None if found is None else number_array(found)


def _none_if_all(values: list[Any]) -> list[Any] | None:
    """A per-query array, or None (SQL NULL) when every entry is None."""
    return None if all(v is None for v in values) else values
