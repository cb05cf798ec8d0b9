"""The production update rule: feedback on one model never reorders a cluster by itself, traffic
that got harder for every model is no model's change, a model that changed against the others
moves everywhere, a new model starts from its cluster's mean."""

from __future__ import annotations

import numpy as np
import pytest

from avengers_store.production import update_rule as rule


def cells(k: int, models: int):
    cluster = np.repeat(np.arange(k), models)
    model = np.tile(np.arange(models), k)
    return cluster, model


def means(ev: rule.Evidence, n, s):
    return (s + ev.delta_sum) / (n + ev.delta_n)


def test_no_feedback_adds_nothing():
    cluster, model = cells(3, 2)
    n = np.full(6, 50.0)
    s = np.array([30, 20, 10, 40, 25, 25], dtype=float)
    ev = rule.evidence(cluster, model, n, s, np.zeros(6), np.zeros(6), np.zeros(6, bool))
    assert not ev.delta_sum.any() and not ev.delta_n.any() and not ev.model_changed.any()


def test_feedback_on_the_routed_model_alone_keeps_the_cluster_order():
    # Cluster 0: model 0 routed (lucky 0.62 in calibration), model 1 unrouted at 0.60. Its
    # feedback comes in at 0.55: the loser of the old rule's comparison, here both move.
    cluster, model = cells(1, 2)
    n = np.array([100.0, 100.0])
    s = np.array([62.0, 60.0])
    a = np.array([80.0, 0.0])
    b = np.array([44.0, 0.0])
    ev = rule.evidence(cluster, model, n, s, a, b, np.zeros(2, bool))
    assert not ev.model_changed.any()
    assert ev.cluster_effect[0] < 0 and ev.cluster_effect[0] == ev.cluster_effect[1]
    after = means(ev, n, s)
    assert after[0] > after[1]  # the routed model stays first
    assert (b[0] + s[0]) / (a[0] + n[0]) < s[1] / n[1]  # pooling alone would have swapped them


def test_a_model_that_changed_against_the_others_moves_everywhere():
    k, models = 8, 3
    cluster, model = cells(k, models)
    n = np.full(k * models, 60.0)
    s = np.where(model == 0, 42.0, 30.0)  # model 0 at 0.7 in calibration, the others at 0.5
    a = np.full(k * models, 40.0)
    # In production model 0 scores 0.35 in every cluster, the others their calibration means.
    b = np.where(model == 0, 14.0, 20.0)
    ev = rule.evidence(cluster, model, n, s, a, b, np.zeros(k * models, bool), 3.0)
    assert ev.model_changed[model == 0].all()
    assert ev.model_effect[model == 0] == pytest.approx(-0.35, abs=0.01)
    # Against model 0's drop the others look better by half of it (each is compared with the
    # two others), but their own outcomes did not move: they are not called changed.
    assert not ev.model_changed[model != 0].any()
    assert ev.model_effect[model != 0] == pytest.approx(0.0)
    assert not ev.delta_n.any()  # feedback moves means, never one model's confidence
    after = means(ev, n, s).reshape(k, models)
    assert (after[:, 0] < after[:, 1]).all()  # the others now lead in every cluster
    # A higher threshold than the evidence: no model change, and the cluster takes the shift.
    strict = rule.evidence(cluster, model, n, s, a, b, np.zeros(k * models, bool), 1000.0)
    assert not strict.model_changed.any() and not strict.cell_effect.any()


def test_rivals_fed_on_their_lucky_queries_make_no_change_of_the_leader():
    # The RouterDC stream's case: the leader of every cluster scores its calibration mean in
    # production, the others, fed only where routing found their calibration lucky, 0.08 below
    # theirs. Against them the leader looks 0.08 better everywhere, but its own outcomes did not
    # move, so nothing changes (before, the leader moved up in every cluster, also where it
    # trailed a specialist on calibration evidence).
    k, models = 12, 3
    cluster, model = cells(k, models)
    n = np.full(k * models, 100.0)
    s = np.where(model == 0, 60.0, 55.0)
    a = np.where(model == 0, 400.0, 150.0)
    b = a * np.where(model == 0, 0.60, 0.47)
    ev = rule.evidence(cluster, model, n, s, a, b, np.zeros(k * models, bool))
    assert not ev.model_changed.any() and not ev.model_effect.any()
    after = means(ev, n, s).reshape(k, models)
    assert (after[:, 0] > after[:, 1]).all()


def one_refresh(model, before_rows, before_mean, rows):
    """A history of one past refresh: model 0 had ``before_rows`` rows per cluster scoring
    ``before_mean`` by then, of ``rows`` now."""
    on = model == 0
    before = np.where(on, before_rows, 0.0)
    return rule.History(
        np.where(on, rows, 0.0), before[None], before[None], before[None] * before_mean
    )


def test_a_model_routed_alone_that_drops_sharply_is_changed_on_its_own_outcomes():
    # LLMRouter's flip degrade: the leader of every cluster is routed (nearly) alone, so its
    # rivals have no feedback to compare it with. Model 0 scored its calibration mean (0.75) on
    # its first 10 queries per cluster, then 0.30 on the next 25: 0.43 overall.
    k, models = 10, 3
    cluster, model = cells(k, models)
    n = np.full(k * models, 40.0)
    s = np.where(model == 0, 30.0, 24.0)  # model 0 at 0.75, the others at 0.6
    a = np.where(model == 0, 35.0, 0.0)
    b = np.where(model == 0, 10 * 0.75 + 25 * 0.30, 0.0)
    new = np.zeros(k * models, bool)
    dropped = one_refresh(model, 10, 0.75, 35)
    ev = rule.evidence(cluster, model, n, s, a, b, new, history=dropped)
    assert ev.model_changed[model == 0].all() and not ev.model_changed[model != 0].any()
    assert ev.model_effect[model == 0] == pytest.approx(b[0] / a[0] - 0.75, abs=0.01)
    after = means(ev, n, s).reshape(k, models)
    assert (after[:, 0] < after[:, 1]).all()  # the others lead now
    # The same outcomes, 0.43 from the first query on (traffic it was never calibrated on): no
    # change in time, no change. Nor without a history to tell.
    constant = one_refresh(model, 10, b[0] / a[0], 35)
    assert not rule.evidence(cluster, model, n, s, a, b, new, history=constant).model_changed.any()
    assert not rule.evidence(cluster, model, n, s, a, b, new).model_changed.any()
    # The winner's curse moves a routed model's own outcomes by a few points: with as much
    # evidence, a drop of 0.08 after the refresh passes the threshold but not the material
    # change.
    curse = rule.evidence(
        cluster, model, n, s, a * 8, np.where(model == 0, 7.5 + 270 * 0.67, 0.0), new,
        history=one_refresh(model, 10, 0.75, 280),
    )  # fmt: skip
    assert not curse.model_changed.any()
    # One rival fed in every cluster at its calibration mean, enough to compare: the comparison
    # decides again, and it agrees (no history needed).
    a_rival = np.where(model == 1, 25.0, a)
    b_rival = np.where(model == 1, 15.0, b)
    both = rule.evidence(cluster, model, n, s, a_rival, b_rival, new)
    assert both.model_changed[model == 0].all()


def test_harder_traffic_for_every_model_is_no_models_change():
    k, models = 8, 3
    cluster, model = cells(k, models)
    n = np.full(k * models, 60.0)
    s = np.where(model == 0, 42.0, 30.0)
    a = np.full(k * models, 40.0)
    b = np.where(model == 0, 20.0, 12.0)  # everyone 0.2 below calibration
    ev = rule.evidence(cluster, model, n, s, a, b, np.zeros(k * models, bool))
    assert not ev.model_changed.any() and not ev.cell_effect.any()
    assert ((ev.cluster_effect < -0.1) & (ev.cluster_effect > -0.2)).all()  # shrunk toward 0
    after = means(ev, n, s).reshape(k, models)
    assert (after[:, 0] > after[:, 1]).all()  # the order of calibration stands


def test_a_new_model_starts_at_the_cluster_mean_and_learns_its_offset():
    cluster, model = cells(2, 3)
    n = np.where(model == 2, 0.0, 40.0)
    s = np.where(model == 2, 0.0, np.where(model == 0, 28.0, 12.0))  # mean 0.5 over 0 and 1
    new = model == 2
    ev = rule.evidence(cluster, model, n, s, np.zeros(6), np.zeros(6), new)
    assert ev.delta_n[new] == pytest.approx(rule.NEW_MODEL_PRIOR)
    assert means(ev, n, s)[new] == pytest.approx(0.5)
    # Feedback in cluster 0 at 0.9: its offset from the cluster means carries to cluster 1.
    a = np.where(new & (cluster == 0), 20.0, 0.0)
    ev = rule.evidence(cluster, model, n, s, a, 0.9 * a, new)
    assert ev.model_effect[new] == pytest.approx(0.4)
    assert means(ev, n, s)[new & (cluster == 1)] == pytest.approx(0.9)
    assert not ev.model_changed.any()  # a new model is never "changed": it has no baseline
