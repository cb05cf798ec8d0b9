"""Exploration: sometimes put another candidate than the best-scored one first.

Feedback only reveals the model that answered, so without exploration the other models'
production evidence never grows. The policy is a clustering setting (``production.settings``):

``thompson``
    Each candidate's score is read as the mean of a Beta posterior whose pseudo-count is the
    evidence behind the score; candidates are ranked by one draw from each. A model with a
    score close to the leader's and little evidence is drawn first now and then; a model far
    behind on much evidence almost never.
``epsilon``
    With probability ``share`` a uniformly drawn candidate goes first, the rest keep their order.
``off``
    The ranking as scored.

Exploration ranks the candidates SQL returned; callers ask for ``POOL`` of them (or top_n, if
more) so it can choose beyond the top_n shown, and the decision keeps the top_n after
exploring. ``explored`` is true when the first model changed, which the route log records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from avengers_store.errors import InputError
from avengers_store.routing.decisions import Candidate, RouteDecision

POLICIES = ("off", "thompson", "epsilon")
# Candidates exploration chooses among when fewer are shown.
POOL = 8


@dataclass(frozen=True)
class Exploration:
    """An exploration policy and (for epsilon) its share of requests."""

    policy: str = "off"
    share: float = 0.05

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InputError(
                f"unknown exploration {self.policy!r}; choose one of {', '.join(POLICIES)}",
                location="exploration",
            )
        if not 0.0 <= self.share <= 1.0:
            raise InputError(f"share must be in [0, 1], got {self.share}", location="exploration")

    @property
    def on(self) -> bool:
        return self.policy != "off"


OFF = Exploration()


def pool_size(top_n: int, exploration: Exploration) -> int:
    """How many candidates to ask the routing SQL for."""
    return max(top_n, POOL) if exploration.on else top_n


def evidence(candidate: Candidate) -> float:
    """The pseudo-count behind a candidate's score: the outcomes pooled around the query
    (``Candidate.evidence``), else those of the nearest cluster plus the prior's one."""
    found = getattr(candidate, "evidence", None)
    if found is not None:
        return max(float(found), 0.0)
    return float(candidate.n or 0) + 1.0


def of_decision(decision: RouteDecision) -> Exploration:
    """The exploration a decision's clustering asks for (its route rows carry it)."""
    if decision.exploration is None:
        return OFF
    share = decision.exploration_share
    return Exploration(decision.exploration, OFF.share if share is None else share)


def explore(
    decision: RouteDecision,
    rng: np.random.Generator,
    top_n: int,
    exploration: Exploration | None = None,
) -> RouteDecision:
    """The decision with its candidates ranked by the exploration policy (default: its
    clustering's), cut to ``top_n``."""
    if exploration is None:
        exploration = of_decision(decision)
    candidates = decision.candidates
    order = list(range(len(candidates)))
    if exploration.policy == "thompson" and len(candidates) > 1:
        draws = []
        for c in candidates:
            mean = min(max(float(c.score if c.score is not None else 0.5), 0.0), 1.0)
            count = evidence(c)
            draws.append(rng.beta(1.0 + mean * count, 1.0 + (1.0 - mean) * count))
        order.sort(key=lambda i: (-draws[i], i))
    elif (
        exploration.policy == "epsilon" and len(candidates) > 1 and rng.random() < exploration.share
    ):
        first = int(rng.integers(len(candidates)))
        order = [first, *(i for i in order if i != first)]
    ranked = tuple(
        dataclasses.replace(candidates[i], rank=position + 1)
        for position, i in enumerate(order[:top_n])
    )
    return dataclasses.replace(
        decision,
        candidates=ranked,
        exploration=exploration.policy if exploration.on else None,
        exploration_share=exploration.share if exploration.on else None,
        explored=bool(order and order[0] != 0) if exploration.on else None,
    )
