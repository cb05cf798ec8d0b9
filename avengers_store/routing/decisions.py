"""What routing decided: the ranked candidate models of one query, and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model proposed for a query, best first (rank 1). ``score`` is the routing score;
    ``mean_score``, ``n`` and the Wilson bounds describe the model on the nearest cluster (None
    when it has no outcome there)."""

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


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Why a query goes where it goes: its cluster in a clustering version and the ranked models.
    ``exploration``: the clustering's exploration policy when it is on, and ``explored`` whether
    it put another model first than the best-scored one."""

    clustering_id: int
    cluster: int
    distance: float
    candidates: tuple[Candidate, ...]
    exploration: str | None = None
    explored: bool | None = None

    @property
    def model(self) -> str | None:
        """The first-ranked model, or None when the cluster has no eligible model."""
        return self.candidates[0].model if self.candidates else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> str:
        lines = [
            f"clustering {self.clustering_id}: nearest cluster {self.cluster} "
            f"(Euclidean distance {self.distance:.4f})"
        ]
        if self.exploration is not None:
            lines.append(
                f"  exploration {self.exploration}: "
                + ("another candidate than the best-scored goes first" if self.explored
                   else "the best-scored candidate stays first")
            )  # fmt: skip
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
            lines.append(f"  {c.rank}. {c.model}: {score}{here}{where}")
        return "\n".join(lines)
