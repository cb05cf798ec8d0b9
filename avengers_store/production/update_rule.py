"""The production update rule in Python: what ``avengers.production_evidence`` computes in SQL
(sql/027_production.sql), cell by cell, so the two can be pinned together and the rule read
without SQL.

Routing scores a model from its calibration outcome sum S and count n per cluster plus what
production adds, at the production weight lambda:
``(sum_j w_j (S + lambda delta_sum) + s prior) / (sum_j w_j (n + lambda delta_n) + s)``.

Feedback arrives only for the model that answered, and that model was chosen partly for the luck
of its calibration sample: adding its feedback alone to its sums pulls it toward its true mean
while the unrouted models keep their lucky means, and the router swaps to models that only
looked better (the winner's curse). Feedback alone also cannot tell a changed model from changed
traffic: harder questions arriving in a cluster lower every model there. So the rule moves
calibration means and never adds one model's feedback to its counts:

- a cell's residual is its decayed production mean minus its calibration mean; a calibrated
  model's residual is compared with those of the other calibrated models with feedback in the
  same cluster (what the traffic did to all of them);
- a model changed when the random-effects mean of those relative residuals over its clusters
  passes the change test (``|effect| > change_threshold x se`` and ``> MIN_CHANGE``) and the
  random-effects mean of its own residuals (against its calibration) passes it too, with the
  same sign: its calibration mean moves by the relative effect in every cluster. The others'
  feedback comes from the queries routing gave them (where their calibration looked lucky), so
  the comparison alone can call a model changed that did not move;
- a model routed nearly alone in its clusters leaves the others without feedback there, so the
  comparison cannot decide (it could not pass on a change as large as the model's own residuals
  show): then its own test decides alone, for a change of at least ``MIN_OWN_CHANGE`` that also
  happened in time (``History``: its own residuals after a past refresh against those before
  it pass the change test the same way, at the refresh where they pass best), and its
  calibration mean moves by its own effect. Traffic the model was never calibrated on lowers
  its own outcomes from the first refresh on; a changed model's fall at a point of the stream;
- a model changed in one cluster when what is left there passes the same test on its own;
- the cluster changed by the precision-weighted mean of what the models' changes leave of the
  residuals, shrunk toward 0, for all its calibrated candidates alike, so it reorders none.

A model without calibration outcomes starts in every cluster from ``NEW_MODEL_PRIOR``
pseudo-outcomes of the cluster's calibration mean moved by the cluster's change and by the
model's offset from the cluster means where it has feedback, and its feedback is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A change smaller than this (in mean outcome) is never called a change, however certain.
MIN_CHANGE = 0.05
# A model whose rivals' feedback is too thin to compare it with is called changed on its own
# outcomes alone only when they moved at least this far from its calibration.
MIN_OWN_CHANGE = 0.15
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
class History:
    """Production counted before each past refresh (the candidate points where a model may have
    changed), per cell in the cells' order: ``rows`` the feedback rows counted now, and per
    refresh (first axis) ``before_rows`` those counted by then and ``before_n`` /
    ``before_sum`` their decayed count and sum, decayed to the same time as the production
    sums. What came after a refresh is the difference."""

    rows: np.ndarray
    before_rows: np.ndarray
    before_n: np.ndarray
    before_sum: np.ndarray


@dataclass(frozen=True)
class Evidence:
    """Per cell, in the order given: the model's applied change (for a model without
    calibration outcomes, its offset from the cluster means), whether the model's change test
    passed, the model's own change in this cluster beyond it (0 unless its test passed), the
    cluster's change, what the cell's outcome sum and count gain at weight 1, and whether the
    cluster moved (a calibrated model's feedback there left its calibration mean: targeted
    exploration then compares all its candidates)."""

    model_effect: np.ndarray
    model_changed: np.ndarray
    cell_effect: np.ndarray
    cluster_effect: np.ndarray
    delta_sum: np.ndarray
    delta_n: np.ndarray
    cluster_moved: np.ndarray


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


def _side(n, s, expected, a, b, rows, keep):
    """Residuals and variances of one side of a split (decayed count a, sum b, raw rows), as
    the cells' own: the rows decide which cells have feedback there, since a difference of
    decayed sums is rarely exactly 0."""
    on = keep & (rows > 0) & (a > 0)
    safe = np.where(on, a, 1.0)
    p = (s + b + 1.0) / (n + a + 2.0)
    y = b / safe - expected
    v = np.maximum(VARIANCE_FLOOR, p * (1.0 - p)) * (
        1.0 / safe + np.where(n > 0, 1.0 / np.where(n > 0, n, 1.0), 0.0)
    )
    return on, y, v


def changed_in_time(
    model: np.ndarray,
    n: np.ndarray,
    s: np.ndarray,
    expected: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    history: History,
    candidates: np.ndarray,
    direction: np.ndarray,
    change_threshold: float,
) -> np.ndarray:
    """Per model: whether its own residuals after some past refresh differ from those before it
    by more than ``change_threshold`` standard errors in ``direction`` (random-effects means
    over its cells on each side), at the refresh where that z is largest. Only ``candidates``
    (models) are scanned; every other is False."""
    m = len(candidates)
    best = np.full(m, -np.inf)
    keep = candidates[model]
    if not keep.any():
        return best > change_threshold
    rows = np.asarray(history.rows, dtype=np.float64)
    for before_rows, before_n, before_sum in zip(
        np.asarray(history.before_rows, dtype=np.float64),
        np.asarray(history.before_n, dtype=np.float64),
        np.asarray(history.before_sum, dtype=np.float64),
        strict=True,
    ):
        with np.errstate(invalid="ignore", divide="ignore"):
            on_b, y_b, v_b = _side(n, s, expected, before_n, before_sum, before_rows, keep)
            on_a, y_a, v_a = _side(
                n, s, expected, a - before_n, b - before_sum, rows - before_rows, keep
            )
            mean_b, se_b = _random_effects(model[on_b], y_b[on_b], v_b[on_b], m)
            mean_a, se_a = _random_effects(model[on_a], y_a[on_a], v_a[on_a], m)
            z = direction * (mean_a - mean_b) / np.hypot(se_a, se_b)
        best = np.fmax(best, np.where(np.isnan(z), -np.inf, z))
    return candidates & (best > change_threshold)


def evidence(
    cluster: np.ndarray,
    model: np.ndarray,
    calibration_n: np.ndarray,
    calibration_sum: np.ndarray,
    production_n: np.ndarray,
    production_sum: np.ndarray,
    uncalibrated: np.ndarray,
    change_threshold: float = CHANGE_THRESHOLD,
    min_own_change: float = MIN_OWN_CHANGE,
    history: History | None = None,
) -> Evidence:
    """The rule over a clustering's cells. ``cluster`` and ``model`` are small non-negative
    integer codes per cell; ``calibration_*`` the calibration outcome count and sum,
    ``production_*`` the decayed feedback count and sum (0: none); ``uncalibrated`` per cell,
    whether its model has no calibration outcome in the clustering (such a model needs a cell
    in every cluster). The cluster mean is over the cells given. ``history``: the production
    before each past refresh, which a model routed nearly alone needs to be called changed (none:
    it never is)."""
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
    new_model = np.zeros(m, dtype=bool)
    new_model[model[new]] = True
    # Feedback only on the routed models cannot tell a changed model from changed traffic:
    # harder queries move every model of the cluster. So a calibrated model's residual is
    # measured against the other calibrated models with feedback in the same cluster.
    calibrated_fed = fed & ~new
    w = np.where(calibrated_fed, 1.0 / np.where(fed, v, 1.0), 0.0)
    sw = np.bincount(cluster, w, k)[cluster] - w
    swy = np.bincount(cluster, w * y, k)[cluster] - w * y
    compared = calibrated_fed & (sw > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(compared, y - swy / np.where(sw > 0, sw, 1.0), 0.0)
        relative_v = np.where(compared, v + 1.0 / np.where(sw > 0, sw, 1.0), 1.0)
    # The model's change, the same in all its clusters: the random-effects mean of those
    # relative residuals (so residuals that differ from cluster to cluster count as
    # heterogeneity, not as a change), passing the change test.
    effect, se = _random_effects(model[compared], relative[compared], relative_v[compared], m)
    has = ~np.isnan(effect)
    effect = np.nan_to_num(effect)
    # The same change must show in the model's own outcomes against its calibration: the
    # others' feedback comes from the queries routing gave them, so a comparison with them alone
    # can call a model changed because of how its rivals were chosen.
    own, own_se = _random_effects(model[calibrated_fed], y[calibrated_fed], v[calibrated_fed], m)
    with np.errstate(invalid="ignore"):
        own_passed = np.abs(own) > change_threshold * own_se
        compared_changed = (
            has
            & ~new_model
            & (np.abs(effect) > change_threshold * se)
            & (np.abs(effect) > MIN_CHANGE)
            & own_passed
            & (np.sign(own) == np.sign(effect))
        )
        # A model routed (nearly) alone in its clusters leaves its rivals without feedback there,
        # and the comparison cannot decide: it could not pass on a change as large as the one its
        # own outcomes show. Its own test then decides alone, for a material change only (the
        # winner's curse moves a routed model's own residuals by a few points, never this much).
        thin = ~has | ~(np.abs(own) > change_threshold * np.where(has, se, np.inf))
        alone = ~compared_changed & ~new_model & own_passed & thin
        alone &= np.abs(own) >= min_own_change
    # Its own outcomes cannot tell it from traffic it was never calibrated on, which is there
    # from the first refresh: a change it made shows as a change in time too.
    if history is None:
        alone[:] = False
    else:
        alone = changed_in_time(
            model, n, s, expected, a, b, history, alone, np.sign(np.nan_to_num(own)),
            change_threshold,
        )  # fmt: skip
    changed = compared_changed | alone
    model_shift = np.where(compared_changed, effect, np.where(alone, own, 0.0))[model]
    # What is left in one cluster: a change of the model there only.
    left = relative - model_shift
    local = (
        compared
        & (np.abs(left) > change_threshold * np.sqrt(relative_v))
        & (np.abs(left) > MIN_CHANGE)
    )
    cell_shift = np.where(local, left, 0.0)
    # The cluster's change, shared by all its candidates (so it reorders none of them): what the
    # models' own changes leave of the residuals, shrunk toward 0.
    shared = np.bincount(cluster, w * (y - model_shift - cell_shift), k)
    alpha = (shared / (np.bincount(cluster, w, k) + CLUSTER_PRIOR))[cluster]
    # A model without calibration outcomes has no baseline to change from: it starts at the
    # cluster's mean, moved by the cluster's change and by its offset from the cluster means
    # where it has feedback, and its own feedback is added.
    offset, _ = _random_effects(model[fed & new], y[fed & new], v[fed & new], m)
    offset = np.where(new_model, np.nan_to_num(offset), 0.0)[model]
    base = np.clip(mu + alpha + offset, 0.0, 1.0)
    moved = model_shift + cell_shift + alpha
    delta_sum = np.where(new, NEW_MODEL_PRIOR * base + b, np.clip(s + n * moved, 0.0, n) - s)
    delta_n = np.where(new, NEW_MODEL_PRIOR + a, 0.0)
    model_effect = np.where(new, offset, model_shift)
    # A model's feedback alone cannot say whether it or the traffic changed: a cluster where it
    # left the calibration mean is one where exploration should ask the others.
    moved_cell = calibrated_fed & (np.abs(y) > change_threshold * np.sqrt(v))
    moved_cell &= np.abs(y) > MIN_CHANGE
    cluster_moved = np.bincount(cluster, moved_cell, k)[cluster] > 0
    return Evidence(
        model_effect, changed[model], cell_shift, alpha, delta_sum, delta_n, cluster_moved
    )
