"""What routing decided: the ranked candidate models of one query, and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from avengers_store.routing.policy import Policy


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model proposed for a query, best first (rank 1). ``score`` is the routing score
    (expected quality, pooling production outcomes at the policy's weight); ``mean_score``,
    ``n`` and the Wilson bounds describe the model's calibration outcomes on the nearest cluster
    (None when it has none there), ``production_n`` and ``production_mean`` (decayed) its
    feedback there; ``evidence`` is the pseudo-count behind ``score`` and ``propensity`` the
    probability it had of going first under the policy (1 or 0 without exploration; None under
    thompson). With a trade-off or a cost ceiling: ``expected_cost`` of the request on the
    model (None: it has neither a price nor a measured cost), ``utility`` (what it was ranked by
    when α < 1), ``over_budget`` (no candidate fitted the ceiling; this is the cheapest) and
    ``expected_latency_ms`` (its model requests' measured latency near the query; None: none
    measured). All are None on a plain route."""

    model: str
    rank: int
    mean_score: float | None
    n: int | None
    wilson_low: float | None
    wilson_high: float | None
    endpoint: str | None
    served_name: str | None
    overall_score: float | None = None
    model_id: int | None = None
    api_key_env: str | None = None
    score: float | None = None
    expected_cost: float | None = None
    over_budget: bool | None = None
    utility: float | None = None
    production_n: int | None = None
    production_mean: float | None = None
    evidence: float | None = None
    propensity: float | None = None
    expected_latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Why a query goes where it goes: its cluster in a clustering version and the ranked models,
    as ``avengers.decide`` returned them under ``policy``.

    ``novelty``: the query's distance to the calibration set over its threshold
    (``routing.novelty``; for older versions the distance over the nearest cluster's OOD
    distance), ``ood`` novelty > 1, and ``ood_policy`` the policy applied to an
    out-of-distribution query (None when in distribution). ``production_weight``: how the
    scores pooled production outcomes. ``exploration``: the exploration in force (None: off), and
    ``explored`` whether it put another model first than the plain order's best."""

    clustering_id: int
    cluster: int
    distance: float
    candidates: tuple[Candidate, ...]
    policy: Policy | None = None
    exploration: str | None = None
    explored: bool | None = None
    novelty: float | None = None
    ood: bool | None = None
    ood_policy: str | None = None
    production_weight: float | None = None

    @property
    def tradeoff(self) -> float | None:
        """The trade-off α asked for (None: none)."""
        return self.policy.tradeoff if self.policy is not None else None

    @property
    def max_cost(self) -> float | None:
        """The cost ceiling asked for (None: none)."""
        return self.policy.max_cost if self.policy is not None else None

    @property
    def propensity(self) -> float | None:
        """The probability the first model had of going first (None: not known)."""
        return self.candidates[0].propensity if self.candidates else None

    @property
    def model(self) -> str | None:
        """The first-ranked model, or None when the cluster has no eligible model."""
        return self.candidates[0].model if self.candidates else None

    @property
    def costed(self) -> bool:
        """Whether expected costs were computed (a trade-off or a ceiling was asked)."""
        return self.tradeoff is not None or self.max_cost is not None

    @property
    def expected_cost(self) -> float | None:
        """The first-ranked model's expected cost (None: not computed, or unknown)."""
        return self.candidates[0].expected_cost if self.candidates else None

    @property
    def over_budget(self) -> bool:
        """True when ``max_cost`` was asked and no candidate fits it (the one returned is the
        cheapest)."""
        return any(c.over_budget for c in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["policy"] = self.policy.to_dict() if self.policy is not None else None
        out["tradeoff"], out["max_cost"] = self.tradeoff, self.max_cost
        return out

    def explain(self) -> str:
        lines = [
            f"clustering {self.clustering_id}: nearest cluster {self.cluster} "
            f"(Euclidean distance {self.distance:.4f})"
        ]
        if self.novelty is not None:
            verdict = "out of distribution" if self.ood else "in distribution"
            policy = f"; policy {self.ood_policy}" if self.ood and self.ood_policy else ""
            lines.append(f"  novelty {self.novelty:.2f}: {verdict}{policy}")
        if self.production_weight is not None:
            lines.append(
                f"  scores pool production outcomes at weight {self.production_weight:g}"
                if self.production_weight > 0
                else "  scores use calibration outcomes only (production weight 0)"
            )
        if self.exploration is not None:
            chance = (
                f" (its chance of going first: {self.propensity:.3f})"
                if self.propensity is not None
                else ""
            )
            lines.append(
                f"  exploration {self.exploration}: "
                + ("another candidate than the best-ranked goes first" if self.explored
                   else "the best-ranked candidate stays first") + chance
            )  # fmt: skip
        if self.costed:
            alpha = 1.0 if self.tradeoff is None else self.tradeoff
            rule = (
                f"trade-off {alpha:g}: ranked by {alpha:g} x normalised score + "
                f"{1 - alpha:g} x (1 - normalised expected cost)"
                if alpha < 1
                else "trade-off 1: ranked by score"
            )
            if self.max_cost is not None:
                rule += (
                    f"; no candidate fits max cost {self.max_cost:g}, the cheapest is returned"
                    if self.over_budget
                    else f", among candidates with expected cost <= {self.max_cost:g}"
                )
            lines.append(f"  {rule}")
        if not self.candidates:
            lines.append("  no active model has a profile for this cluster")
        for c in self.candidates:
            bounds = (
                f" [{c.wilson_low:.3f}, {c.wilson_high:.3f}]"
                if c.wilson_low is not None and c.wilson_high is not None
                else ""
            )
            where = f" via {c.endpoint}" if c.endpoint else " (no endpoint)"
            score = f"score {c.score:.3f}; " if c.score is not None else ""
            here = (
                f"mean {c.mean_score:.3f} over {c.n} calibration queries of the cluster{bounds}"
                if c.mean_score is not None
                else "no outcome in the cluster"
            )
            production = (
                f"; production {c.production_mean:.3f} over {c.production_n} feedback rows"
                if c.production_n
                else ""
            )
            cost = ""
            if self.costed:
                cost = (
                    f"; expected cost {c.expected_cost:.6g}"
                    if c.expected_cost is not None
                    else "; expected cost unknown (no price, no measured cost)"
                )
                if c.expected_latency_ms is not None:
                    cost += f", expected latency {c.expected_latency_ms:.0f} ms"
                if c.utility is not None:
                    cost += f", utility {c.utility:.3f}"
                if c.over_budget:
                    cost += " (over budget)"
            lines.append(f"  {c.rank}. {c.model}: {score}{here}{production}{cost}{where}")
        return "\n".join(lines)
