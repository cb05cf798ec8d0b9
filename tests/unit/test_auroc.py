"""The replay's AUROC is the Mann-Whitney probability, ties counting half."""

from __future__ import annotations

import numpy as np
import pytest

from avengers_store.evaluation.ood import auroc


@pytest.mark.parametrize(
    ("negatives", "positives", "expected"),
    [
        ([0.1, 0.2], [0.3, 0.9], 1.0),
        ([0.3, 0.9], [0.1, 0.2], 0.0),
        ([0.5, 0.5], [0.5], 0.5),
        ([0.1, 0.4], [0.2, 0.5], 0.75),
    ],
)
def test_auroc(negatives, positives, expected):
    assert auroc(np.array(negatives), np.array(positives)) == pytest.approx(expected)


def test_auroc_matches_counting_pairs():
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(size=40), rng.normal(0.5, size=30)
    pairs = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(neg, pos) == pytest.approx(pairs)
