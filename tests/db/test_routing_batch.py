"""routing.decide sends a batch of numeric vectors as one numpy-encoded vector[]: the same
decisions as the per-vector path, and the per-vector path still names a bad vector."""

from __future__ import annotations

import numpy as np
import pytest
from pgvector import Vector

from avengers_store import routing
from avengers_store.errors import InputError
from avengers_store.routing import Policy, adapters
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
    top2 = Policy(top_n=2)
    fast = routing.decide(conn, queries, top2)
    slow = routing.decide(conn, [Vector(q) for q in queries], top2)
    assert fast == slow
    assert routing.decide(conn, queries.tolist(), top2) == fast
    assert routing.decide(conn, [queries[0]], top2) == fast[:1]
    assert routing.decide(conn, queries[:1], top2) == fast[:1]  # a matrix of one row


def test_a_bad_row_falls_back_and_is_named(conn):
    cid = add_clustering(conn, np.eye(4, dtype=np.float32))
    activate(conn, cid)
    batch = np.eye(4, dtype=np.float32)
    batch[2, 1] = np.nan
    assert adapters.query_matrix(batch) is None
    with pytest.raises(InputError, match="query vector 3.*finite and non-zero"):
        routing.decide(conn, batch, Policy())
    batch[2] = 0.0
    with pytest.raises(InputError, match="query vector 3.*finite and non-zero"):
        routing.decide(conn, batch, Policy())
