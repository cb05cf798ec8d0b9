"""route_vectors sends a batch of numeric vectors as one numpy-encoded vector[]: the same decisions
as the per-vector path, and the per-vector path still names a bad vector."""

from __future__ import annotations

import numpy as np
import pytest
from pgvector import Vector

from avengers_store import routing
from avengers_store.errors import InputError
from avengers_store.routing import adapters
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model, unit_rows


def test_matrix_batch_equals_per_vector_path(conn):
    rng = np.random.default_rng(11)
    centroids = unit_rows(rng, 32, 24)
    cid = add_clustering(conn, centroids)
    for name in ("a", "b", "c"):
        ensure_model(conn, name, endpoint=f"http://{name}:8000/v1")
    add_profiles(conn, cid, {m: rng.random((32, 2)).tolist() for m in ("a", "b", "c")})
    activate(conn, cid)
    queries = unit_rows(rng, 300, 24) * 3.0  # scale: SQL normalises either way
    assert adapters.query_matrix(queries) is not None
    assert adapters.query_matrix([Vector(q) for q in queries]) is None
    fast = routing.route_vectors(conn, queries, 2)
    slow = routing.route_vectors(conn, [Vector(q) for q in queries], 2)
    assert fast == slow
    assert routing.route_vectors(conn, queries.tolist(), 2) == fast
    assert routing.route_vector(conn, queries[0], 2) == fast[0]


def test_a_bad_row_falls_back_and_is_named(conn):
    cid = add_clustering(conn, np.eye(4, dtype=np.float32))
    activate(conn, cid)
    batch = np.eye(4, dtype=np.float32)
    batch[2, 1] = np.nan
    assert adapters.query_matrix(batch) is None
    with pytest.raises(InputError, match="query vector 3.*finite and non-zero"):
        routing.route_vectors(conn, batch)
    batch[2] = 0.0
    with pytest.raises(InputError, match="query vector 3.*finite and non-zero"):
        routing.route_vectors(conn, batch)
