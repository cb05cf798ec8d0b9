"""Routing methods: the parameters of the routing score (``avengers.decide`` in sql/).

``AVENGERS`` (the default) pools the 16 nearest clusters weighted by distance and shrinks toward
each model's calibration prior; ``PAPER`` is the plain nearest-cluster rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from avengers_store.errors import InputError


@dataclass(frozen=True)
class RoutingMethod:
    """Parameters of the routing score (``avengers.decide`` in sql/040_decide.sql).

    ``neighbours``: nearest centroids pooled (L); ``temperature``: weight decay in units of the
    clustering's median squared distance to its centroid; ``shrinkage``: pseudo-queries of the
    model's dataset-balanced calibration mean added to every score.
    """

    name: str
    neighbours: int = 16
    temperature: float = 0.1
    shrinkage: float = 1.0

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise InputError(f"neighbours must be >= 1, got {self.neighbours}", location="method")
        for field_name in ("temperature", "shrinkage"):
            value = getattr(self, field_name)
            if not value >= 0:  # also refuses NaN
                raise InputError(f"{field_name} must be >= 0, got {value}", location="method")


# The paper's rule: the nearest cluster's mean score (ties: overall score, then name).
PAPER = RoutingMethod("paper", neighbours=1, temperature=0.0, shrinkage=0.0)
# Soft top-16 centroids at temperature 0.1, one pseudo-query of the prior (chosen by 5-fold
# cross-validation on calibration data of two outcome tables; docs/evaluation.md).
AVENGERS = RoutingMethod("avengers")
METHODS = {m.name: m for m in (AVENGERS, PAPER)}


def routing_method(method: str | RoutingMethod | None) -> RoutingMethod:
    """A RoutingMethod from a preset name (``avengers``, ``paper``), an instance, or None (the
    default, ``AVENGERS``)."""
    if method is None:
        return AVENGERS
    if isinstance(method, RoutingMethod):
        return method
    found = METHODS.get(str(method).strip().lower())
    if found is None:
        raise InputError(
            f"unknown routing method {method!r}; choose one of {', '.join(METHODS)}",
            location="method",
        )
    return found
