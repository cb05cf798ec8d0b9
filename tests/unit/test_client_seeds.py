"""Exploration's seeds: a client's generator gives the same sequence however the draws are
split into requests (they are drawn ahead in blocks)."""

from __future__ import annotations

import numpy as np

from avengers_store.client import AvengersClient
from avengers_store.client_core import SEED_BLOCK


def test_seeds_follow_the_generator_whatever_the_request_sizes():
    client = AvengersClient("postgresql:///none?host=/nonexistent", seed=3)
    sizes = [1, 5, SEED_BLOCK, 1, SEED_BLOCK - 7, 7, 4 * SEED_BLOCK + 3, 2, 0, 1]
    drawn = [s for n in sizes for s in client.seeds(n)]
    expected = np.random.default_rng(3).integers(0, 2**62, size=sum(sizes))
    assert drawn == [int(x) for x in expected]
    assert all(type(s) is int for s in drawn)
