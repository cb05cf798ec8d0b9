"""The production update rule in SQL (avengers.production_evidence) equals its Python reference
(production.update_rule) cell for cell, and routing_models serves it beside calibration,
unweighted (production_sums / production_ns), for the decision to weigh at its policy's production
weight; a model without calibration outcomes is routable only while production counts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from avengers_store import routing
from avengers_store.calibration import reclustering
from avengers_store.production import exploration_rule, update_rule
from avengers_store.routing import Policy
from avengers_store.store import connections
from avengers_store.testing import ensure_model, seed_store

T0 = datetime(2026, 12, 1, tzinfo=UTC)
# Feedback stamped ahead of the clock, as a replay's is: each refresh is then its own point in
# time (production_history.at), although now() stays fixed within a test's transaction.
AHEAD = int(timedelta(days=3650).total_seconds())


@pytest.fixture(scope="module")
def store(db_url) -> str:
    with connections.connect(db_url) as conn:
        seed_store(conn, per_blob=30)
        reclustering.recluster(6, "kmeans", 3, conn=conn)
        ensure_model(conn, "newcomer")  # no calibration outcome anywhere
        conn.commit()
    return db_url


def feed(
    conn, seed: int, rows: int, alone: bool = False, model0: float | None = 0.0, start: int = 0
) -> None:
    """Random feedback on random cells: model-0 always fails where it was weak (a model that
    changed the same way in every cluster), the others score their calibration means, the
    newcomer 0.9; then a refresh. ``alone``: model-0 is the only model fed, in the clusters
    where it was strong (those it leads);
    ``model0``: its success rate (None: its calibration means); ``start``: the first row's
    second after T0."""
    rng = np.random.default_rng(seed)
    models = dict(conn.execute("SELECT name, id FROM avengers.models").fetchall())
    clusters = [r[0] for r in conn.execute("SELECT cluster FROM avengers.routing_centroids")]
    means = {
        (r[0], r[1]): r[2]
        for r in conn.execute("SELECT cluster, model, mean_score FROM avengers.cluster_profiles")
    }
    weak = [
        r[0]
        for r in conn.execute(
            "SELECT cluster FROM avengers.cluster_profiles WHERE model = 'model-0' "
            "AND mean_score < 0.5"
        )
    ]
    strong = [
        r[0]
        for r in conn.execute(
            "SELECT cluster FROM avengers.cluster_profiles WHERE model = 'model-0' "
            "AND mean_score >= 0.5"
        )
    ]
    cid = conn.execute("SELECT id FROM avengers.active_clustering").fetchone()[0]
    names = sorted(models)
    for i in range(rows):
        # A third of the feedback on model-0, the rest on any model.
        name = "model-0" if alone or i % 3 == 0 else names[int(rng.integers(len(names)))]
        cluster = int(rng.choice(strong if alone else weak if name == "model-0" else clusters))
        route = uuid.uuid4()
        conn.execute(
            "INSERT INTO avengers.route_log (route_id, at, query_hash, clustering_id, cluster, "
            "models, strategy, answer_model) VALUES (%s, %s, 'h', %s, %s, %s, 'replay', %s)",
            (route, T0 + timedelta(seconds=start + i), cid, cluster, [name], name),
        )
        p = 0.9 if name == "newcomer" else means[cluster, name]
        if name == "model-0" and model0 is not None:
            p = model0
        conn.execute(
            "INSERT INTO avengers.feedback (route_id, model_id, score, at) VALUES (%s, %s, %s, %s)",
            (route, models[name], float(rng.random() < p), T0 + timedelta(seconds=start + i)),
        )
    conn.execute("CALL avengers.refresh_production()")


def history(conn, clusters, models, rows) -> update_rule.History:
    """The refreshes kept in production_history, over the given cells, decayed to the served
    production's time."""
    kept = conn.execute(
        """SELECT h.at, h.cluster, h.model_id, h.n, h.decayed_n, h.decayed_sum,
                  extract(epoch FROM (SELECT max(p.as_of) FROM avengers.production_profiles p)
                                     - h.at) / extract(epoch FROM a.half_life)
           FROM avengers.production_history h
           JOIN avengers.active_clustering a ON a.id = h.clustering_id"""
    ).fetchall()
    times = sorted({r[0] for r in kept})
    index = {(int(c), int(m)): i for i, (c, m) in enumerate(zip(clusters, models, strict=True))}
    before = np.zeros((3, len(times), len(clusters)))
    for at, cluster, model, n, decayed_n, decayed_sum, age in kept:
        j, i = times.index(at), index[cluster, model]
        before[:, j, i] = n, decayed_n * 0.5 ** float(age), decayed_sum * 0.5 ** float(age)
    return update_rule.History(rows, *before)


def served_and_reference(conn):
    """The served evidence (SQL) and the Python reference's, on the same served inputs."""
    rows = conn.execute(
        """SELECT e.cluster, e.model_id, e.calibration_n, e.calibration_sum, e.production_n,
                  e.production_sum, e.model_effect, e.model_changed, e.cell_effect,
                  e.cluster_effect, e.delta_sum, e.delta_n, coalesce(cp.n, 0), coalesce(cp.score_sum, 0),
                  coalesce(pp.decayed_n, 0), coalesce(pp.decayed_sum, 0),
                  NOT EXISTS (SELECT 1 FROM avengers.cluster_profiles c
                              WHERE c.model_id = e.model_id), e.cluster_moved, coalesce(pp.n, 0)
           FROM avengers.production_evidence e
           LEFT JOIN avengers.cluster_profiles cp
             ON cp.cluster = e.cluster AND cp.model_id = e.model_id
           LEFT JOIN avengers.production_profiles pp
             ON pp.cluster = e.cluster AND pp.model_id = e.model_id
           ORDER BY 1, 2"""
    ).fetchall()
    threshold = conn.execute("SELECT change_threshold FROM avengers.active_clustering").fetchone()[
        0
    ]
    x = np.array(
        [r[:7] + (float(r[7]),) + r[8:16] + (float(r[16]), float(r[17]), r[18]) for r in rows],
        dtype=float,
    )
    cal_n, cal_s, prod_n, prod_s, new = x[:, 12], x[:, 13], x[:, 14], x[:, 15], x[:, 16] > 0
    # The inputs are the served calibration and production profiles, unchanged.
    assert x[:, 2] == pytest.approx(cal_n) and x[:, 3] == pytest.approx(cal_s)
    assert x[:, 4] == pytest.approx(prod_n) and x[:, 5] == pytest.approx(prod_s)
    models = {m: i for i, m in enumerate(sorted(set(x[:, 1].astype(int))))}
    ref = update_rule.evidence(
        x[:, 0].astype(int), np.array([models[int(m)] for m in x[:, 1]]), cal_n, cal_s, prod_n,
        prod_s, new, threshold, history=history(conn, x[:, 0], x[:, 1], x[:, 18]),
    )  # fmt: skip
    assert x[:, 6] == pytest.approx(ref.model_effect, abs=1e-9)
    assert x[:, 7].astype(bool).tolist() == ref.model_changed.tolist()
    assert x[:, 8] == pytest.approx(ref.cell_effect, abs=1e-9)
    assert x[:, 9] == pytest.approx(ref.cluster_effect, abs=1e-9)
    assert x[:, 10] == pytest.approx(ref.delta_sum, abs=1e-9)
    assert x[:, 11] == pytest.approx(ref.delta_n, abs=1e-9)
    assert (x[:, 17] > 0).tolist() == ref.cluster_moved.tolist()
    return x, ref


def test_sql_equals_the_python_reference(store):
    with connections.connect(store) as conn:
        feed(conn, 1, 900)
        x, ref = served_and_reference(conn)
        conn.rollback()
    new = x[:, 16] > 0
    assert ref.cluster_moved.any()
    # The data make the rule's branches run: model-0 changed, the newcomer learned its offset,
    # clusters moved, and calibrated models gained no counts.
    assert ref.model_changed.any() and ref.model_effect[ref.model_changed].max() < -0.1
    assert (ref.model_effect[new] > 0.2).all()
    assert np.abs(ref.cluster_effect).max() > 0.01
    assert not ref.delta_n[~new].any()


def test_sql_equals_the_python_reference_for_a_model_fed_alone_that_changed(store):
    # No rival has feedback to compare model-0 with: its own outcomes decide alone, since they
    # fell after a refresh (its calibration means before, always 0 after).
    with connections.connect(store) as conn:
        feed(conn, 2, 150, alone=True, model0=None, start=AHEAD)
        feed(conn, 3, 150, alone=True, start=AHEAD + 150)
        x, ref = served_and_reference(conn)
        conn.rollback()
    fed = x[:, 4] > 0
    assert (
        ref.model_changed[fed].all() and (ref.model_effect[fed] < -update_rule.MIN_OWN_CHANGE).all()
    )


def test_sql_equals_the_python_reference_for_a_model_fed_alone_below_calibration_throughout(
    store,
):
    # The same model failing from the first refresh on (traffic it was never calibrated on, as
    # far as its own outcomes can tell): its own test passes alone, but nothing changed in time.
    with connections.connect(store) as conn:
        feed(conn, 2, 150, alone=True, start=AHEAD)
        feed(conn, 3, 150, alone=True, start=AHEAD + 150)
        x, ref = served_and_reference(conn)
        conn.rollback()
    fed = x[:, 4] > 0
    own = x[fed, 5] / x[fed, 4] - x[fed, 3] / x[fed, 2]
    assert (own < -update_rule.MIN_OWN_CHANGE).all() and fed.sum() > 1
    assert not ref.model_changed.any()


def test_routing_models_serves_the_evidence_and_the_decision_weighs_it(store):
    with connections.connect(store) as conn:
        feed(conn, 2, 200)
        served = conn.execute(
            """SELECT rm.model_id, rm.calibrated, rm.score_sums::text, rm.ns::text,
                      rm.production_sums::text, rm.production_ns::text
               FROM avengers.routing_models rm"""
        ).fetchall()
        cells = {
            (r[0], r[1]): r[2:]
            for r in conn.execute(
                "SELECT model_id, cluster, delta_sum, delta_n FROM avengers.production_evidence"
            )
        }
        calibration = {
            (r[0], r[1]): r[2:]
            for r in conn.execute(
                "SELECT model_id, cluster, score_sum, n FROM avengers.cluster_profiles"
            )  # fmt: skip
        }
        vectors = np.array(
            [r[0] for r in conn.execute("SELECT centroid::real[] FROM avengers.routing_centroids")],
            dtype=np.float32,
        )
        everyone = Policy(top_n=len(served), tradeoff=None)
        at_half = routing.decide(conn, vectors, everyone.replace(production_weight=0.5))
        at_zero = routing.decide(conn, vectors, everyone.replace(production_weight=0.0))
        newcomer = conn.execute(
            "SELECT id FROM avengers.models WHERE name = 'newcomer'"
        ).fetchone()[0]
        conn.rollback()
    # Calibration and the update rule's evidence are served apart, unweighted: the decision
    # weighs the evidence by its policy's production weight.
    assert {r[1] for r in served} == {True, False}
    for model, _, sums, ns, psums, pns in served:
        got = {name: parse(v) for name, v in
               (("sums", sums), ("ns", ns), ("psums", psums), ("pns", pns))}  # fmt: skip
        mine = {c: v for (m, c), v in calibration.items() if m == model}
        assert got["sums"] == pytest.approx({c: float(v[0]) for c, v in mine.items() if v[0] > 0})
        assert got["ns"] == {c: float(v[1]) for c, v in mine.items()}
        for (m, cluster), (dsum, dn) in cells.items():
            if m == model:
                assert got["psums"].get(cluster, 0.0) == pytest.approx(dsum, rel=1e-6, abs=1e-6)
                assert got["pns"].get(cluster, 0.0) == pytest.approx(dn, rel=1e-6, abs=1e-6)
    # A model without calibration outcomes is a candidate only while production counts.
    assert all(newcomer in {c.model_id for c in d.candidates} for d in at_half)
    assert not any(newcomer in {c.model_id for c in d.candidates} for d in at_zero)


def parse(text: str) -> dict[int, float]:
    """A sparsevec literal '{1:2.5,3:1}/6' as {cluster: value} (entry cluster + 1)."""
    body = text.split("}")[0].lstrip("{")
    out = {}
    for item in filter(None, body.split(",")):
        key, value = item.split(":")
        out[int(key) - 1] = float(value)
    return out


def test_the_exploration_draw_is_computable_in_sql(store):
    keys = ["0", "7", "route-3f2a", "12279"]
    with connections.connect(store) as conn:
        found = [
            conn.execute(
                "SELECT ('x' || substr(md5(%s || ':' || %s), 1, 13))::bit(52)::bigint "
                "/ 4503599627370496.0::float8",
                (str(seed), key),
            ).fetchone()[0]
            for seed in (42, 3407)
            for key in keys
        ]
    assert found == [exploration_rule.hash_uniform(s, k) for s in (42, 3407) for k in keys]


def test_the_history_keeps_the_latest_256_refreshes(store):
    with connections.connect(store) as conn:
        cid, cluster, model = conn.execute(
            "SELECT clustering_id, cluster, model_id FROM avengers.cluster_profiles LIMIT 1"
        ).fetchone()
        conn.execute(
            "INSERT INTO avengers.production_history "
            "(clustering_id, at, cluster, model_id, n, decayed_n, decayed_sum) "
            "SELECT %s, %s + i * interval '1 second', %s, %s, 1, 1, 1 "
            "FROM generate_series(1, 300) AS i",
            (cid, T0, cluster, model),
        )
        conn.execute("CALL avengers.record_production_history()")
        kept = conn.execute(
            "SELECT count(DISTINCT at), min(at) FROM avengers.production_history "
            "WHERE clustering_id = %s",
            (cid,),
        ).fetchone()
        conn.rollback()
    # No feedback in the store: the refresh adds no rows, and the 44 oldest go.
    assert kept == (256, T0 + timedelta(seconds=45))
