"""The quality-cost frontier of a replay: each seed's test queries routed again at every
trade-off α through ``avengers.decide_many`` (the client's statement, each query's text length
sent for its expected cost), scored with the routed model's recorded outcome and its cost on
that query; every single model's point beside them, the non-dominated set, and two headlines
against the best single model.

A routed query's cost is what the outcome row measured (``cost`` per sample, else its
``tokens_in`` and ``tokens_out`` per sample at the model's prices), else the cost model's
estimate from the query's length (``avengers.expected_cost``, sql/025_costs.sql) — the same
figure for routing and for the single models. Costs are per 1M queries, macro over the
group's datasets like the quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avengers_store.errors import StoreStateError
from avengers_store.evaluation.harness import Replay, Run
from avengers_store.evaluation.results import (
    Frontier,
    FrontierPoint,
    Headline,
    SinglePoint,
    Stat,
)

COST_UNIT = "per 1M queries"

# Per (test query, active model): the cost of answering it, from the outcome row when it
# measured one, else the store's cost model on the query's text.
COST_SQL = """
SELECT q.id, m.id,
       CASE WHEN o.cost IS NOT NULL THEN o.cost / o.samples
            ELSE avengers.expected_cost(
                   m.cost_in_per_m, m.cost_out_per_m,
                   coalesce(o.tokens_in::double precision,
                            avengers.prompt_tokens(char_length(q.text), mc.tokens_per_char)),
                   coalesce(o.tokens_out::double precision / o.samples, mc.tokens_out),
                   NULL, 1)
       END
FROM avengers.queries q
CROSS JOIN avengers.models m
LEFT JOIN avengers.outcomes o ON o.query_id = q.id AND o.model_id = m.id
LEFT JOIN avengers.model_costs mc
  ON mc.model_id = m.id AND mc.clustering_id = (SELECT k.id FROM avengers.active_clustering k)
WHERE q.id = ANY(%s) AND m.id = ANY(%s)
"""


@dataclass
class SeedRoutes:
    """One seed's test queries routed at every α: rank-1 outcome, its cost and the model."""

    values: dict[float, np.ndarray]
    costs: dict[float, np.ndarray]
    picks: dict[float, np.ndarray]
    plain_picks: np.ndarray


def cost_matrix(rp: Replay, rows: np.ndarray) -> np.ndarray:
    """(len(rows), models) cost of each test query on each active model; a clear error when a
    model has neither a price nor measured costs."""
    C = np.full((len(rows), len(rp.models)), np.nan)
    at = {int(q): i for i, q in enumerate(rp.query_ids[rows].tolist())}
    col = {int(m): j for j, m in enumerate(rp.model_ids.tolist())}
    with rp.conn.cursor() as cur:
        cur.execute(COST_SQL, (rp.query_ids[rows].tolist(), rp.model_ids.tolist()))
        for qid, mid, cost in cur:
            if cost is not None:
                C[at[qid], col[mid]] = cost
    unpriced = [rp.models[j] for j in range(len(rp.models)) if np.isnan(C[:, j]).any()]
    if unpriced:
        raise StoreStateError(
            f"no price and no measured cost for {', '.join(unpriced)}: the frontier needs a cost "
            "for every active model on every test query; set prices "
            "(UPDATE avengers.models SET cost_in_per_m = ..., cost_out_per_m = ... WHERE name "
            "= ...) or deactivate them"
        )
    return C


def route_seed(rp: Replay, run: Run, tradeoffs: Sequence[float], C: np.ndarray) -> SeedRoutes:
    """Route the test queries of ``run``'s clustering at every α (activated first: the replay
    re-clusters per seed inside its transaction)."""
    rp.conn.execute("CALL avengers.activate_clustering(%s)", (run.clustering_id,))
    rows = np.flatnonzero(rp.test_mask())
    out = SeedRoutes({}, {}, {}, run.test_picks)
    index = np.arange(len(rows))
    for alpha in tradeoffs:
        first, _, _, _, picks = rp.route_rows(rows, rp.policy.replace(tradeoff=alpha))
        cost = np.where(picks >= 0, C[index, np.maximum(picks, 0)], 0.0)
        out.values[alpha], out.costs[alpha], out.picks[alpha] = first, cost, picks
    return out


def _macro(rp: Replay, names: np.ndarray, values: np.ndarray, group: Sequence[str]) -> float:
    return float(np.mean([values[names == n].mean() for n in group]))


def summarise(
    rp: Replay, runs: Sequence[Run], seeds_routes: Sequence[SeedRoutes], C: np.ndarray
) -> Frontier:
    groups = {g: m for g, m in rp.groups().items() if g != "ood_all"}
    names = runs[0].test_names
    tradeoffs = list(seeds_routes[0].values)
    points = []
    for alpha in tradeoffs:
        # The plain replay's own arithmetic (harness), so alpha = 1 gives its figures bit for bit.
        per_seed = [
            rp.per_dataset_scores(run, s.values[alpha])
            for run, s in zip(runs, seeds_routes, strict=True)
        ]
        quality = {
            g: Stat.of(rp.macro(scores, members) for scores in per_seed)
            for g, members in groups.items()
        }
        cost = {
            g: Stat.of(_macro(rp, names, s.costs[alpha], members) * 1e6 for s in seeds_routes)
            for g, members in groups.items()
        }
        picked = np.concatenate([s.picks[alpha] for s in seeds_routes])
        shares = {
            m: float(np.mean(picked == j)) for j, m in enumerate(rp.models) if (picked == j).any()
        }
        points.append(FrontierPoint(alpha, quality, cost, shares))
    Y0 = rp.Y0[np.flatnonzero(rp.test_mask())]
    singles = tuple(
        SinglePoint(
            m,
            {g: _macro(rp, names, Y0[:, j], members) * 100 for g, members in groups.items()},
            {g: _macro(rp, names, C[:, j], members) * 1e6 for g, members in groups.items()},
        )
        for j, m in enumerate(rp.models)
    )
    matches = None
    if 1.0 in seeds_routes[0].picks:
        matches = all(np.array_equal(s.picks[1.0], s.plain_picks) for s in seeds_routes)
    _, best = rp.anchors()["balanced"]
    return Frontier(
        group="id",
        cost_unit=COST_UNIT,
        points=tuple(points),
        singles=singles,
        non_dominated=non_dominated(points, singles, "id"),
        best_single=best,
        quality_at_best_single_cost=_at_cost(points, singles, best),
        cost_to_match_best_single=_to_match(points, singles, best),
        matches_plain=matches,
    )


def non_dominated(
    points: Sequence[FrontierPoint], singles: Sequence[SinglePoint], group: str
) -> tuple[str, ...]:
    """Labels of the points no other point beats on both quality and cost, cheapest first."""
    labelled = [(f"alpha={p.tradeoff:g}", p.quality[group].mean, p.cost[group].mean)
                for p in points]  # fmt: skip
    labelled += [(s.model, s.quality[group], s.cost[group]) for s in singles]
    keep = [
        (cost, -quality, label)
        for label, quality, cost in labelled
        if not any(_beats(q2, c2, quality, cost) for _, q2, c2 in labelled)
    ]
    return tuple(label for _, _, label in sorted(keep))


def _beats(q2: float, c2: float, quality: float, cost: float) -> bool:
    """(q2, c2) no worse on both and better on one. Means over seeds differ from a single
    model's figure in their last bits even when every seed routed the same way, so values
    within 1e-9 (relative) count as equal."""
    q_tol, c_tol = 1e-9 * max(abs(quality), 1.0), 1e-9 * max(abs(cost), 1e-12)
    no_worse = q2 >= quality - q_tol and c2 <= cost + c_tol
    return no_worse and (q2 > quality + q_tol or c2 < cost - c_tol)


def _best(singles: Sequence[SinglePoint], name: str) -> SinglePoint:
    return next(s for s in singles if s.model == name)


def _at_cost(
    points: Sequence[FrontierPoint], singles: Sequence[SinglePoint], best: str
) -> Headline | None:
    """The best routed quality at no more than the best single model's cost."""
    ref = _best(singles, best)
    budget = ref.cost["id"] * (1 + 1e-9)
    within = [p for p in points if p.cost["id"].mean <= budget]
    if not within:
        return None
    p = max(within, key=lambda p: (p.quality["id"].mean, -p.cost["id"].mean))
    return Headline(p.tradeoff, p.quality["id"].mean, p.cost["id"].mean,
                    p.cost["id"].mean / ref.cost["id"])  # fmt: skip


def _to_match(
    points: Sequence[FrontierPoint], singles: Sequence[SinglePoint], best: str
) -> Headline | None:
    """The lowest routed cost at which quality reaches the best single model's."""
    ref = _best(singles, best)
    reaching = [p for p in points if p.quality["id"].mean >= ref.quality["id"] - 1e-9]
    if not reaching:
        return None
    p = min(reaching, key=lambda p: (p.cost["id"].mean, -p.quality["id"].mean))
    return Headline(p.tradeoff, p.quality["id"].mean, p.cost["id"].mean,
                    p.cost["id"].mean / ref.cost["id"])  # fmt: skip
