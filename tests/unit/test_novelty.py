"""The novelty model: Mahalanobis distance under the Ledoit-Wolf covariance, a threshold measured
on held-out vectors (not on those the Gaussian was fitted to)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from avengers_store.calibration import novelty
from avengers_store.routing.novelty import novelty as novelty_of


def test_distance_is_mahalanobis_under_the_shrunk_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) * np.linspace(0.1, 2.0, 12)
    model = novelty.gaussian(x)
    lw = LedoitWolf().fit(x)
    v = rng.normal(size=(5, 12))
    d = v - x.mean(axis=0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", d, lw.precision_, d))
    assert model.distances(v) == pytest.approx(expected, rel=1e-6)


def test_routing_distances_equal_the_fitted_ones_to_float32():
    # What the clients send with a query (float32, pre-scaled axes) against the float64 form
    # the threshold is measured with: the same distances to float32 rounding.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 64)) * np.linspace(0.02, 1.0, 64)
    model = novelty.gaussian(x)
    queries = rng.normal(size=(50, 64)).astype(np.float32)
    fast = model.query_distances(queries)
    assert fast.dtype == np.float64
    assert fast == pytest.approx(model.distances(queries), rel=2e-6)
    assert model.query_distances(queries[:1])[0] == pytest.approx(fast[0], rel=1e-6)


def test_threshold_comes_from_held_out_vectors():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 40))
    fitted = novelty.fit(x, 0.99, seed=3)
    assert fitted is not None
    assert len(fitted.held_out) == 200 and fitted.n_fit == 400
    assert fitted.threshold == pytest.approx(float(np.quantile(fitted.held_out, 0.99)))
    # In-sample distances are biased low (the Gaussian was fitted to them): the held-out
    # threshold stands above the in-sample quantile of the final model.
    in_sample = float(np.quantile(fitted.model.distances(x), 0.99))
    assert fitted.threshold > in_sample
    # Seeded: the same split twice.
    again = novelty.fit(x, 0.99, seed=3)
    assert again is not None and np.array_equal(again.held_out, fitted.held_out)


def test_far_vectors_are_novel_and_tiny_sets_get_no_model():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 8))
    fitted = novelty.fit(x, 0.99)
    assert fitted is not None
    far = fitted.model.distances(np.full((1, 8), 10.0))[0]
    assert novelty_of(far, fitted.threshold) > 1
    assert novelty.fit(x[:3], 0.99) is None
    assert novelty_of(0.0, 0.0) == 0.0 and novelty_of(1.0, 0.0) == float("inf")
