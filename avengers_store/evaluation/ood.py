"""The OOD detector on replay: how well novelty separates the in-distribution test queries from
the OOD datasets', and what each OOD policy scores.

Per seed, with that seed's clustering served, every test query is routed through
``avengers.decide_many`` (top 3, the clients' statement), its novelty measured as the clients
measure it (the seed's own novelty model, ``routing.novelty``), once under each OOD policy.

- AUROC: the probability that a random OOD test query has a higher novelty than a random
  in-distribution one (rank-based, ties count half), and the share of each flagged (novelty > 1).
- Policies, applied by the store's decision (``avengers.decide``): ``flag`` scores the routed
  model; ``best-overall`` the first model of the calibration-wide ranking for flagged queries;
  ``widen`` would answer flagged queries with Model-Switch over the top 3, which needs sampled
  answers a replay does not have: reported as its upper bound, the best recorded outcome among
  the three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avengers_store import routing
from avengers_store.evaluation.results import Stat
from avengers_store.routing import OOD_POLICIES, novelty

TOP = 3
ROUTE_BATCH = 4096


@dataclass(frozen=True)
class PolicyScore:
    """Macros (×100) over the seeds when the policy handles the flagged queries."""

    policy: str
    id_macro: Stat
    ood_macro: Stat | None


@dataclass(frozen=True)
class OodDetection:
    """The detector over the seeds: AUROC of novelty (in-distribution vs the OOD datasets'
    test queries), the share of each kind flagged (×100), per OOD dataset too, and the
    policies' macros."""

    ood_datasets: tuple[str, ...]
    auroc: Stat
    id_flagged: Stat
    ood_flagged: Stat
    flagged_per_dataset: dict[str, Stat]
    policies: dict[str, PolicyScore]


@dataclass
class _Seed:
    auroc: float
    id_flagged: float
    ood_flagged: float
    per_dataset: dict[str, float]
    macros: dict[str, tuple[float, float | None]]


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    scores = np.concatenate([negatives, positives])
    ranks = rankdata(scores)
    n_neg, n_pos = len(negatives), len(positives)
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_neg * n_pos))


def measure(rp, method: routing.RoutingMethod) -> _Seed | None:
    """The detector on the served clustering (a ``harness.Replay``'s store); None when the
    clustering has no distance statistics or the replay no OOD test dataset."""
    if not rp.ood_names:
        return None
    rows = np.flatnonzero(rp.test_mask())
    served = rp.conn.execute("SELECT id FROM avengers.active_clustering").fetchone()
    model = novelty.load(rp.conn, served[0]) if served else None
    decided: dict[str, list[routing.RouteDecision]] = {}
    for policy in OOD_POLICIES:
        asked = rp.policy.replace(method=method, top_n=TOP, ood_policy=policy)
        decided[policy] = []
        for start in range(0, len(rows), ROUTE_BATCH):
            chunk = rows[start : start + ROUTE_BATCH]
            decided[policy] += routing.decide(
                rp.conn, rp.X[chunk], asked, novelty=model,
                novelty_clustering=served[0] if served else None,
            )  # fmt: skip
    decisions = decided["flag"]
    if any(d.novelty is None for d in decisions):
        return None
    scores = np.array([d.novelty for d in decisions])
    names = rp.dataset[rows]
    is_ood = np.isin(names, rp.ood_names)
    flagged = scores > 1
    values: dict[str, np.ndarray] = {}
    for policy in OOD_POLICIES:
        out = np.zeros(len(rows))
        for i, (row, d) in enumerate(zip(rows, decided[policy], strict=True)):
            if not d.candidates:
                continue
            cols = [rp.column[c.model] for c in d.candidates]
            if d.ood and policy == "widen":
                out[i] = float(np.max(rp.Y0[row, cols]))
            else:
                value = rp.Y[row, cols[0]]
                out[i] = 0.0 if math.isnan(value) else value
        values[policy] = out
    groups = rp.groups()

    def macro(v: np.ndarray, members: list[str]) -> float:
        return float(np.mean([v[names == d].mean() * 100 for d in members]))

    return _Seed(
        auroc=auroc(scores[~is_ood], scores[is_ood]),
        id_flagged=float(flagged[~is_ood].mean() * 100),
        ood_flagged=float(flagged[is_ood].mean() * 100),
        per_dataset={d: float(flagged[names == d].mean() * 100) for d in rp.ood_names},
        macros={
            p: (macro(v, groups["id"]), macro(v, groups["ood"]) if "ood" in groups else None)
            for p, v in values.items()
        },
    )


def summarise(seeds: list[_Seed | None], ood_names: list[str]) -> OodDetection | None:
    """The seeds' figures as mean ± std (None when any seed had nothing to measure)."""
    if not seeds or any(s is None for s in seeds):
        return None
    done = [s for s in seeds if s is not None]
    return OodDetection(
        ood_datasets=tuple(ood_names),
        auroc=Stat.of(s.auroc for s in done),
        id_flagged=Stat.of(s.id_flagged for s in done),
        ood_flagged=Stat.of(s.ood_flagged for s in done),
        flagged_per_dataset={d: Stat.of(s.per_dataset[d] for s in done) for d in ood_names},
        policies={
            p: PolicyScore(
                policy=p,
                id_macro=Stat.of(s.macros[p][0] for s in done),
                ood_macro=(
                    Stat.of(s.macros[p][1] for s in done)
                    if done[0].macros[p][1] is not None
                    else None
                ),
            )
            for p in OOD_POLICIES
        },
    )
