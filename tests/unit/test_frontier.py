"""The frontier's non-dominated set: strictly better on one axis and no worse on the other,
with means that differ only in their last bits counted as equal."""

from __future__ import annotations

from avengers_store.evaluation.frontier import non_dominated
from avengers_store.evaluation.results import FrontierPoint, SinglePoint, Stat


def point(alpha: float, quality: float, cost: float) -> FrontierPoint:
    return FrontierPoint(alpha, {"id": Stat.of([quality])}, {"id": Stat.of([cost])}, {})


def test_non_dominated_points_cheapest_first():
    points = [point(0.0, 50.0, 0.0593 + 1e-17), point(0.5, 55.0, 1.0), point(1.0, 54.0, 2.0)]
    singles = [
        SinglePoint("cheap", {"id": 50.0}, {"id": 0.0593}),  # the same point as alpha=0
        SinglePoint("worse", {"id": 40.0}, {"id": 0.0593}),
        SinglePoint("dear", {"id": 60.0}, {"id": 3.0}),
    ]
    kept = non_dominated(points, singles, "id")
    assert set(kept) == {"alpha=0", "cheap", "alpha=0.5", "dear"}
    assert kept[2:] == ("alpha=0.5", "dear")  # cheapest first
