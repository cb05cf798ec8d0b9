"""The ``x-avengers-*`` response headers that say what the router decided: its costs, and the
loop's out-of-distribution and exploration flags."""

from __future__ import annotations

import uuid

from avengers_store.routing import RouteDecision


def decision_headers(route_id: uuid.UUID, decision: RouteDecision) -> dict[str, str]:
    """The headers of every routed answer: its route id, where the query landed, the candidates,
    and the loop's and the costs' headers."""
    return {
        "x-avengers-route-id": str(route_id),
        "x-avengers-clustering": str(decision.clustering_id),
        "x-avengers-cluster": str(decision.cluster),
        "x-avengers-distance": f"{decision.distance:.6f}",
        "x-avengers-candidates": ",".join(c.model for c in decision.candidates),
        **loop_headers(decision),
        **cost_headers(decision),
    }


def cost_headers(decision: RouteDecision) -> dict[str, str]:
    """x-avengers-expected-cost (of the request on the first candidate, when known) and
    x-avengers-over-budget."""
    out = {"x-avengers-over-budget": "true" if decision.over_budget else "false"}
    if decision.expected_cost is not None:
        out["x-avengers-expected-cost"] = f"{decision.expected_cost:.6g}"
    return out


def loop_headers(decision: RouteDecision) -> dict[str, str]:
    """x-avengers-ood, -novelty and -ood-policy (when the clustering has distance statistics)
    and x-avengers-explored (when its exploration is on)."""
    out = {}
    if decision.novelty is not None:
        out["x-avengers-novelty"] = f"{decision.novelty:.4f}"
        out["x-avengers-ood"] = "true" if decision.ood else "false"
        if decision.ood and decision.ood_policy:
            out["x-avengers-ood-policy"] = decision.ood_policy
    if decision.exploration is not None:
        out["x-avengers-exploration"] = decision.exploration
        out["x-avengers-explored"] = "true" if decision.explored else "false"
    return out
