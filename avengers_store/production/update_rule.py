"""The production update rule in Python: what ``avengers.production_evidence`` computes in SQL
(sql/027_production.sql), cell by cell, so the two can be pinned together and the rule read
without SQL.

Routing scores a model from its calibration outcome sum S and count n per cluster plus what
production adds, at the production weight lambda:
``(sum_j w_j (S + lambda delta_sum) + s prior) / (sum_j w_j (n + lambda delta_n) + s)``.
Feedback arrives only for the model that answered, chosen partly for the luck of its calibration
sample, so pooling it alone into that model's sums would pull it toward its true mean while the
unrouted models keep their lucky ones (the winner's curse). The rule explains each cell's
residual (decayed production mean minus calibration mean) by a change of the model, the same in
all its clusters and applied only when a change test passes, and a change of the cluster, shared
by all its calibrated candidates; the cell's calibration mean moves by both, and the routed
model's own production outcomes are then added. A model without calibration outcomes starts
from ``NEW_MODEL_PRIOR`` pseudo-outcomes of its cluster's calibration mean, moved likewise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A change smaller than this (in mean outcome) is never called a change, however certain.
MIN_CHANGE = 0.05
# Floor of p(1 - p) in residual variances: a cell whose outcomes are all 0 or all 1 so far is
# not taken as certain.
VARIANCE_FLOOR = 0.05
# Pseudo-observations of "no change" that a cluster's change is shrunk with.
CLUSTER_PRIOR = 100.0
# Pseudo-outcomes a model without calibration outcomes starts with in every cluster.
NEW_MODEL_PRIOR = 2.0
# The default change threshold (a z-score); a clustering's own is its change_threshold.
CHANGE_THRESHOLD = 3.0


@dataclass(frozen=True)
class Evidence:
    """Per cell, in the order given: the model's applied change, whether it passed the change
    test, the cluster's change, and what the cell's outcome sum and count gain at weight 1."""

    model_effect: np.ndarray
    model_changed: np.ndarray
    cluster_effect: np.ndarray
    delta_sum: np.ndarray
    delta_n: np.ndarray


def _random_effects(groups: np.ndarray, y: np.ndarray, v: np.ndarray, size: int):
    """Per group: the DerSimonian-Laird random-effects mean of y (variances v) and its standard
    error; NaN where the group has no row."""
    w = 1.0 / v
    sw = np.bincount(groups, w, size)
    sw2 = np.bincount(groups, w * w, size)
    cells = np.bincount(groups, None, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        fixed = np.bincount(groups, w * y, size) / sw
        q = np.bincount(groups, (y - fixed[groups]) ** 2 * w, size)
        c = sw - sw2 / sw
        tau2 = np.where((cells > 1) & (c > 0), np.maximum(0.0, (q - (cells - 1)) / c), 0.0)
        ws = 1.0 / (v + tau2[groups])
        sws = np.bincount(groups, ws, size)
        mean = np.bincount(groups, ws * y, size) / sws
        se = 1.0 / np.sqrt(sws)
    return mean, se


def evidence(
    cluster: np.ndarray,
    model: np.ndarray,
    calibration_n: np.ndarray,
    calibration_sum: np.ndarray,
    production_n: np.ndarray,
    production_sum: np.ndarray,
    uncalibrated: np.ndarray,
    change_threshold: float = CHANGE_THRESHOLD,
) -> Evidence:
    """The rule over a clustering's cells. ``cluster`` and ``model`` are small non-negative
    integer codes per cell; ``calibration_*`` the calibration outcome count and sum,
    ``production_*`` the decayed feedback count and sum (0: none); ``uncalibrated`` per cell,
    whether its model has no calibration outcome in the clustering (such a model needs a cell
    in every cluster). The cluster mean is over the cells given."""
    cluster = np.asarray(cluster, dtype=np.int64)
    model = np.asarray(model, dtype=np.int64)
    n = np.asarray(calibration_n, dtype=np.float64)
    s = np.asarray(calibration_sum, dtype=np.float64)
    a = np.asarray(production_n, dtype=np.float64)
    b = np.asarray(production_sum, dtype=np.float64)
    new = np.asarray(uncalibrated, dtype=bool)
    k = int(cluster.max()) + 1 if len(cluster) else 0
    m = int(model.max()) + 1 if len(model) else 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.nan_to_num(np.bincount(cluster, s, k) / np.bincount(cluster, n, k))[cluster]
        fed = a > 0
        expected = np.where(n > 0, s / np.where(n > 0, n, 1.0), mu)
        y = np.where(fed, b / np.where(fed, a, 1.0) - expected, 0.0)
        p = (s + b + 1.0) / (n + a + 2.0)
        v = np.maximum(VARIANCE_FLOOR, p * (1.0 - p)) * (
            1.0 / np.where(fed, a, 1.0) + np.where(n > 0, 1.0 / np.where(n > 0, n, 1.0), 0.0)
        )
    effect, se = _random_effects(model[fed], y[fed], v[fed], m)
    has = ~np.isnan(effect)
    new_model = np.zeros(m, dtype=bool)
    new_model[model[new]] = True
    changed = (
        has & ~new_model & (np.abs(effect) > change_threshold * se) & (np.abs(effect) > MIN_CHANGE)
    )
    applied = np.where(has & (new_model | changed), np.nan_to_num(effect), 0.0)
    calibrated_fed = fed & ~new
    resid = y - applied[model]
    w = np.where(calibrated_fed, 1.0 / np.where(fed, v, 1.0), 0.0)
    alpha = np.bincount(cluster, w * resid, k) / (np.bincount(cluster, w, k) + CLUSTER_PRIOR)
    moved_model = applied[model]
    moved_cluster = alpha[cluster]
    base = np.clip(mu + moved_cluster + moved_model, 0.0, 1.0)
    delta_sum = np.where(
        new,
        NEW_MODEL_PRIOR * base + b,
        np.clip(s + n * (moved_model + moved_cluster), 0.0, n) + b - s,
    )
    delta_n = np.where(new, NEW_MODEL_PRIOR + a, a)
    return Evidence(moved_model, changed[model], moved_cluster, delta_sum, delta_n)
