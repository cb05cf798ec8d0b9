"""Targeted exploration with exact propensities: the reference a routing function's exploration
is pinned against.

Feedback only reveals the model that answered, so a model routed nowhere never shows that it
got better, or that it is the one to use on traffic calibration did not have. The rule explores
only where that could matter: another candidate is *plausible* when its posterior could be the
leader's, i.e. when the probability that it beats the leader,
``Phi((mean_i - mean_0) / sqrt(sd_i^2 + sd_0^2))``, is at least ``overlap``; each candidate's
posterior is read off its routing score (the mean) and the evidence behind it (the score's
denominator: pooled outcome count plus the prior's pseudo-count), ``sd^2 = mean (1 - mean) /
(count + 1)``. In a cluster that moved (a calibrated model's feedback there left its
calibration mean: ``production_evidence.cluster_moved``) every candidate is plausible, since
the feedback cannot say whether the model or the traffic changed until the others are asked;
so is every candidate at overlap 0.

``avengers.decide`` (sql/040_decide.sql) applies this rule under ``exploration = 'targeted'``
with ``u = hash_uniform(seed, "targeted")``, the candidates within the ceiling in the plain
order; a test pins the two together decision for decision.
One uniform draw ``u`` decides: with plausible candidates P and ``u < share`` the
``floor(u / share * |P|)``-th of P (in rank order) answers, else the leader. So

- the leader's propensity is ``1 - share`` when P is not empty, else 1;
- each plausible candidate's is ``share / |P|``; every other candidate's is 0;

exact and cheap, which Thompson sampling's are not. ``share`` is also the cap: at most that
share of a clustering's requests is explored, and fewer when its candidates are far apart.

``u`` comes from a seeded hash, so a decision is reproducible from (seed, key) alone: the first
13 hex digits of md5("<seed>:<key>") over 16^13, which SQL computes as
``('x' || substr(md5(seed || ':' || key), 1, 13))::bit(52)::bigint / 4503599627370496.0``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from avengers_store.errors import InputError

# Defaults, chosen on the scenario replays (docs/evaluation.md, "The production loop").
SHARE = 0.02
OVERLAP = 0.2
_SCALE = float(16**13)


@dataclass(frozen=True)
class Choice:
    """The candidate chosen (its index in the ranked candidates given), the probability it had
    of being chosen, whether that was exploration, and the plausible candidates' indices."""

    index: int
    propensity: float
    explored: bool
    plausible: tuple[int, ...]


def hash_uniform(seed: int, key: str) -> float:
    """A uniform draw in [0, 1) from (seed, key): the first 52 bits of md5("seed:key")."""
    digest = hashlib.md5(f"{seed}:{key}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:13], 16) / _SCALE


def posterior_variance(mean: float, count: float) -> float:
    """Variance of a Beta-like posterior of this mean over count outcomes."""
    p = min(max(float(mean), 0.0), 1.0)
    return p * (1.0 - p) / (max(float(count), 0.0) + 1.0)


def posterior_sd(mean: float, count: float) -> float:
    """Standard deviation of a Beta-like posterior of this mean over count outcomes."""
    return math.sqrt(posterior_variance(mean, count))


def plausibility_gap(overlap: float) -> float:
    """The lead, in standard deviations of the difference, under which a candidate is
    plausible: ``Phi^-1(1 - overlap)`` (0.8416 for 0.2). A SQL function without erf compares
    ``mean_0 - mean_i <= gap * sqrt(sd_0^2 + sd_i^2)`` instead."""
    if overlap <= 0.0:
        return math.inf
    return -NormalDist().inv_cdf(overlap)


def check(share: float, overlap: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise InputError(f"share must be in [0, 1], got {share}", location="exploration_share")
    if not 0.0 <= overlap < 1.0:
        raise InputError(
            f"overlap must be in [0, 1), got {overlap}", location="exploration_overlap"
        )


def plausible(
    means: Sequence[float], counts: Sequence[float], overlap: float = OVERLAP
) -> tuple[int, ...]:
    """Indices (after the leader, index 0) of the candidates whose chance of beating the leader
    is at least ``overlap``; candidates are given best first."""
    if len(means) != len(counts):
        raise InputError("means and counts differ in length", location="counts")
    if len(means) < 2:
        return ()
    gap = plausibility_gap(overlap)
    if gap == math.inf:
        return tuple(range(1, len(means)))
    lead, lead_variance = float(means[0]), posterior_variance(means[0], counts[0])
    found = []
    for i in range(1, len(means)):
        # The same operations in the same order as avengers.targeted_candidates_final.
        spread = math.sqrt(posterior_variance(means[i], counts[i]) + lead_variance)
        behind = lead - float(means[i])
        if behind <= gap * spread or (spread == 0.0 and behind <= 0.0):
            found.append(i)
    return tuple(found)


def choose(
    means: Sequence[float],
    counts: Sequence[float],
    u: float,
    share: float = SHARE,
    overlap: float = OVERLAP,
    moved: bool = False,
) -> Choice:
    """The candidate to answer, given candidates best first (their routing scores and the
    evidence behind them) and a uniform draw ``u`` in [0, 1). ``moved``: the query's nearest
    cluster moved (``production_evidence.cluster_moved``), so every candidate is plausible."""
    check(share, overlap)
    if not means:
        raise InputError("no candidate to choose from", location="means")
    if not 0.0 <= u < 1.0:
        raise InputError(f"u must be in [0, 1), got {u}", location="u")
    found = plausible(means, counts, 0.0 if moved else overlap)
    if not found or share == 0.0:
        return Choice(0, 1.0, False, found)
    if u < share:
        pick = found[min(int(u / share * len(found)), len(found) - 1)]
        return Choice(pick, share / len(found), True, found)
    return Choice(0, 1.0 - share, False, found)


def propensities(
    means: Sequence[float],
    counts: Sequence[float],
    share: float = SHARE,
    overlap: float = OVERLAP,
    moved: bool = False,
) -> list[float]:
    """The probability of every candidate (best first) being chosen: what an off-policy
    estimate of this policy weighs a logged decision by."""
    check(share, overlap)
    found = plausible(means, counts, 0.0 if moved else overlap)
    out = [0.0] * len(means)
    if not out:
        return out
    if not found or share == 0.0:
        out[0] = 1.0
        return out
    out[0] = 1.0 - share
    for i in found:
        out[i] = share / len(found)
    return out
