"""What a replay evaluation reports: per-dataset and per-group scores, sweeps, the whole result."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avengers_store.routing import RoutingMethod


@dataclass(frozen=True)
class Stat:
    """A value over seeds: mean, population std and the per-seed values (×100 scores)."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        vals = tuple(float(v) for v in values)
        arr = np.asarray(vals, dtype=np.float64)
        return cls(float(arr.mean()), float(arr.std()), vals)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass(frozen=True)
class ModelScore:
    model: str
    score: float


@dataclass(frozen=True)
class DatasetResult:
    """One test dataset (×100 scores)."""

    dataset: str
    is_ood: bool
    queries: int
    routed: Stat
    best_single_cal_weighted: float
    best_single_cal_balanced: float
    max_expert: ModelScore
    oracle: float
    random: float
    missing_outcomes: int  # over all seeds: routed picks without a recorded outcome (scored 0)
    unrouted: int  # over all seeds: queries no active model could take (scored 0)
    per_model: dict[str, float]
    routed_top_n_best: Stat | None = None  # top_n > 1: the best outcome among the top n


@dataclass(frozen=True)
class GroupResult:
    """Macro averages over a group of test datasets (×100)."""

    name: str
    datasets: tuple[str, ...]
    routed: Stat
    best_single_cal_weighted: ModelScore
    best_single_cal_balanced: ModelScore
    best_single_test: ModelScore
    max_expert: float
    oracle: float
    random: float
    gap_closed: Stat  # (routed - best single cal. balanced) / (oracle - it), per seed
    gap_closed_weighted: Stat  # the same against the query-weighted choice
    routed_top_n_best: Stat | None = None


@dataclass(frozen=True)
class SweepPoint:
    parameter: str
    value: Any
    seeds: tuple[int, ...]
    id_macro: Stat
    ood_macro: Stat | None
    calibration_macro: Stat
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    parameter: str
    points: tuple[SweepPoint, ...]
    plot: str | None = None


@dataclass(frozen=True)
class FrontierPoint:
    """Routing at one trade-off α: quality (macro ×100) and cost per 1M queries (macro over
    the same datasets) per group, mean ± std over seeds; ``shares``: fraction of the group's
    test queries routed to each model (all seeds)."""

    tradeoff: float
    quality: dict[str, Stat]
    cost: dict[str, Stat]
    shares: dict[str, float]


@dataclass(frozen=True)
class SinglePoint:
    """Always the same model: quality (macro ×100) and cost per 1M queries per group."""

    model: str
    quality: dict[str, float]
    cost: dict[str, float]


@dataclass(frozen=True)
class Headline:
    """A point of the routing frontier read against the best single model."""

    tradeoff: float
    quality: float
    cost: float
    cost_share: float  # cost / the best single model's cost


@dataclass(frozen=True)
class Frontier:
    """The quality-cost frontier of a replay (group ``group``, usually ``id``): every α's
    point, every single model's, the non-dominated ones, and the two headlines against the best
    single model chosen on calibration data (dataset-balanced): the best quality routing reaches
    at no more than its cost, and the lowest cost at which routing reaches its quality (None
    when no α does). ``matches_plain``: whether α = 1 routed every test query of every seed to
    the model the plain replay routed it to (None when 1 is not among the α)."""

    group: str
    cost_unit: str
    points: tuple[FrontierPoint, ...]
    singles: tuple[SinglePoint, ...]
    non_dominated: tuple[str, ...]  # "alpha=<α>" or a model name, by cost
    best_single: str
    quality_at_best_single_cost: Headline | None
    cost_to_match_best_single: Headline | None
    matches_plain: bool | None
    plot: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` measured. ``id_macro`` / ``ood_macro``: routed, mean over seeds."""

    k: int
    algorithm: str
    stratify: str  # "dataset" or "none" (see reclustering.recluster)
    seeds: tuple[int, ...]
    method: RoutingMethod
    strategy: str
    top_n: int
    models: tuple[str, ...]
    datasets: tuple[DatasetResult, ...]
    groups: dict[str, GroupResult]
    calibration_macro: Stat
    clusters: tuple[int, ...]  # k of each seed's clustering (empty clusters are dropped)
    missing_outcomes: int
    unrouted: int
    sweeps: dict[str, Sweep]
    seconds: float
    frontier: Frontier | None = None
    # The OOD detector (evaluation.ood.OodDetection) when the test split has OOD datasets.
    ood: Any = None

    @property
    def id_macro(self) -> float:
        return self.groups["id"].routed.mean

    @property
    def ood_macro(self) -> float | None:
        group = self.groups.get("ood")
        return group.routed.mean if group else None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["id_macro"] = self.id_macro
        out["ood_macro"] = self.ood_macro
        return out
