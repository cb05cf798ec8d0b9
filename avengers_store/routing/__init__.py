"""Routing: a query vector in, a decision out (nearest cluster, ranked candidate models).

Reads the served clustering and profiles through one SQL statement per decision or batch
(``avengers.route_pooled``, ``avengers.route``, ``avengers.route_many``); writes nothing. Holds
the routing methods, the decision types, the statements and the psycopg wire adapters.
"""

from avengers_store.routing.decisions import Candidate, RouteDecision
from avengers_store.routing.methods import AVENGERS, METHODS, PAPER, RoutingMethod, routing_method
from avengers_store.routing.statements import (
    NO_ACTIVE_CLUSTERING,
    aroute_vector,
    aroute_vectors,
    route_vector,
    route_vectors,
)
from avengers_store.routing.tradeoffs import PLAIN, CostPolicy, cost_policy

__all__ = [
    "AVENGERS",
    "METHODS",
    "NO_ACTIVE_CLUSTERING",
    "PAPER",
    "PLAIN",
    "Candidate",
    "CostPolicy",
    "RouteDecision",
    "RoutingMethod",
    "aroute_vector",
    "aroute_vectors",
    "cost_policy",
    "route_vector",
    "route_vectors",
    "routing_method",
]
