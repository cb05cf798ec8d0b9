"""The quality-cost trade-off a route may ask for: ``tradeoff`` α in [0, 1] and ``max_cost``.

α = 1 ranks by expected quality alone (today's routing, with each candidate's expected cost
computed and shown); lower α gives weight to a low expected cost; ``max_cost`` keeps to
candidates whose expected cost fits, or returns the cheapest one flagged ``over_budget`` when
none does. The rule and the cost model live in sql/040_routing_functions.sql and
sql/025_costs.sql; README.md ("Cost-aware routing") states both.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from avengers_store.errors import InputError


@dataclass(frozen=True)
class CostPolicy:
    """``tradeoff``: α, the weight of expected quality against expected cost (None: no
    trade-off asked, costs not computed unless ``max_cost`` is given); ``max_cost``: the
    highest expected cost a candidate may have (None: no ceiling); ``completions``: answers
    drawn from one prompt (a request's expected cost counts the prompt once per answer when
    measured costs are used, and the completion once per answer)."""

    tradeoff: float | None = None
    max_cost: float | None = None
    completions: int = 1

    def __post_init__(self) -> None:
        if self.tradeoff is not None and not 0.0 <= self.tradeoff <= 1.0:
            raise InputError(
                f"tradeoff must be between 0 and 1, got {self.tradeoff}", location="tradeoff"
            )
        if self.max_cost is not None and not (self.max_cost >= 0 and math.isfinite(self.max_cost)):
            raise InputError(
                f"max_cost must be a finite number >= 0, got {self.max_cost}", location="max_cost"
            )
        if self.completions < 1:
            raise InputError(
                f"completions must be >= 1, got {self.completions}", location="completions"
            )

    @property
    def costed(self) -> bool:
        """Whether the route computes expected costs (a trade-off or a ceiling was asked)."""
        return self.tradeoff is not None or self.max_cost is not None


PLAIN = CostPolicy()


def cost_policy(
    tradeoff: float | None = None, max_cost: float | None = None, completions: int = 1
) -> CostPolicy:
    """A checked CostPolicy (``PLAIN`` when nothing is asked)."""
    if tradeoff is None and max_cost is None and completions == 1:
        return PLAIN
    return CostPolicy(
        None if tradeoff is None else float(tradeoff),
        None if max_cost is None else float(max_cost),
        int(completions),
    )


def prompt_lengths(
    values: Sequence[int | None] | None, count: int, *, location: str = "prompt_chars"
) -> list[int | None] | None:
    """Characters of each query's prompt (None: unknown, the store assumes its calibration
    texts' mean), checked against the number of queries."""
    if values is None:
        return None
    out = list(values)
    if len(out) != count:
        raise InputError(f"expected {count} prompt lengths, got {len(out)}", location=location)
    for i, v in enumerate(out):
        if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0):
            raise InputError(
                f"a prompt length is a number of characters >= 0, got {v!r}",
                location=f"{location} {i + 1}",
            )
    return [None if v is None else int(v) for v in out]
