"""Routing: a query vector in, a decision out (nearest cluster, ranked candidate models).

Reads the served clustering and profiles through one SQL statement per decision or batch
(``avengers.route_pooled``, ``avengers.route``, ``avengers.route_many``); writes nothing. Holds
the routing methods, the decision types, the statements and the psycopg wire adapters.
"""
