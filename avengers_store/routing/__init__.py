"""Routing: a query vector in, a decision out (nearest cluster, ranked candidate models).

One SQL statement per decision or batch (``avengers.decide`` / ``avengers.decide_many``, the rule
in sql/040_decide.sql) under one ``Policy``; writes nothing. Holds the policy and its methods,
the decision types, the statements and the psycopg wire adapters.
"""

from avengers_store.routing.decide import NO_ACTIVE_CLUSTERING, decide, decisions_from_rows
from avengers_store.routing.decisions import Candidate, RouteDecision
from avengers_store.routing.methods import AVENGERS, METHODS, PAPER, RoutingMethod, routing_method
from avengers_store.routing.policy import EXPLORATIONS, OOD_POLICIES, Policy

__all__ = [
    "AVENGERS",
    "EXPLORATIONS",
    "METHODS",
    "NO_ACTIVE_CLUSTERING",
    "OOD_POLICIES",
    "PAPER",
    "Candidate",
    "Policy",
    "RouteDecision",
    "RoutingMethod",
    "decide",
    "decisions_from_rows",
    "routing_method",
]
