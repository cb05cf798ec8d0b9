"""The routing score of avengers.decide / decide_many against a small numpy re-implementation of
its formula: soft pooling over the L nearest centroids, shrinkage toward the dataset-balanced
prior, and the paper's nearest-cluster rule as the special case L=1, a=0."""

from __future__ import annotations

import re

import numpy as np
import pytest

from avengers_store import routing
from avengers_store.calibration import reclustering
from avengers_store.errors import InputError
from avengers_store.routing import Policy
from avengers_store.routing.decide import statement as decide_statement
from avengers_store.testing import MODELS, seed_store, unit

N_QUERIES = 500
# decide pools in pgvector's float32 (sql/040_decide.sql): ~1e-7 relative rounding.
SERVED_TOLERANCE = 2e-6
# Pooling over 4 neighbours at temperature 0.3, the prior at full weight, every model ranked.
WIDE = routing.RoutingMethod("wide", neighbours=4, temperature=0.3)
HARD = routing.RoutingMethod("hard", neighbours=3, temperature=0.0, shrinkage=0.0)
# Weights down to e^-700: those below float32's range are left out of the sparse vector.
SHARP = routing.RoutingMethod("sharp", neighbours=16, temperature=1e-6)


def decide(conn, vectors, **policy):
    return routing.decide(conn, vectors, Policy(**policy))


def decide_one(conn, vector, **policy):
    return routing.decide(conn, [vector], Policy(**policy))[0]


@pytest.fixture(scope="module")
def store(db_url):
    """The synthetic blobs store (three datasets, seven models), a few outcomes removed so that
    models have different counts, clustered with k = 20 (so that L = 16 < k); committed for the module."""
    from avengers_store.store import connections

    with connections.connect(db_url) as c:
        syn = seed_store(c, per_blob=40, seed=5)
        rng = np.random.default_rng(11)
        rows = c.execute("SELECT query_id, model_id FROM avengers.outcomes").fetchall()
        drop = [rows[i] for i in rng.choice(len(rows), size=len(rows) // 12, replace=False)]
        c.cursor().executemany(
            "DELETE FROM avengers.outcomes WHERE query_id = %s AND model_id = %s", drop
        )
        reclustering.recluster(k=20, seed=3, conn=c)
        c.commit()
    rng = np.random.default_rng(2024)
    near = unit(syn.blobs[rng.integers(0, len(syn.blobs), N_QUERIES // 2)]
                + 0.35 * rng.normal(size=(N_QUERIES // 2, syn.dim)))  # fmt: skip
    far = unit(rng.normal(size=(N_QUERIES - N_QUERIES // 2, syn.dim)))
    return np.vstack([near, far]).astype(np.float32)


class Reference:
    """The store's calibration aggregates read back as arrays, and the score computed in numpy."""

    def __init__(self, conn) -> None:
        self.cid = conn.execute(
            "SELECT id FROM avengers.clusterings WHERE status = 'active'"
        ).fetchone()[0]
        k = conn.execute("SELECT k FROM avengers.clusterings WHERE id = %s", (self.cid,))
        self.k = k.fetchone()[0]
        models = conn.execute(
            "SELECT id, name FROM avengers.models WHERE active ORDER BY id"
        ).fetchall()
        self.model_ids = [m[0] for m in models]
        self.names = [m[1] for m in models]
        col = {mid: j for j, mid in enumerate(self.model_ids)}
        assigned = conn.execute(
            """SELECT a.query_id, a.cluster, a.distance, q.dataset_id
               FROM avengers.assignments a JOIN avengers.queries q ON q.id = a.query_id
               WHERE a.clustering_id = %s""",
            (self.cid,),
        ).fetchall()
        datasets = sorted({r[3] for r in assigned})
        drow = {d: i for i, d in enumerate(datasets)}
        cluster_of = {r[0]: r[1] for r in assigned}
        dataset_of = {r[0]: drow[r[3]] for r in assigned}
        # assignments.distance is real and arrives as its shortest decimal text: through float32
        # first, the double is the stored value, as Postgres's real -> double cast gives it.
        stored = np.array([r[2] for r in assigned], np.float32).astype(np.float64)
        self.rho = float(np.median(stored**2))
        M, D = len(self.model_ids), len(datasets)
        self.n = np.zeros((self.k, M))
        self.S = np.zeros((self.k, M))
        dn, ds = np.zeros((D, M)), np.zeros((D, M))
        for qid, mid, score in conn.execute(
            "SELECT query_id, model_id, score FROM avengers.outcomes"
        ).fetchall():
            if qid in cluster_of and mid in col:
                self.n[cluster_of[qid], col[mid]] += 1
                self.S[cluster_of[qid], col[mid]] += score
                dn[dataset_of[qid], col[mid]] += 1
                ds[dataset_of[qid], col[mid]] += score
        with np.errstate(invalid="ignore"):
            self.dmean = ds / dn  # NaN: no outcome of the model on the dataset
        self.prior = np.nanmean(self.dmean, axis=0)
        self.overall = self.S.sum(0) / self.n.sum(0)

    def neighbours(self, conn, queries: np.ndarray, L: int):
        """(clusters, distances) of the L nearest centroids, read as decide reads them (the
        normalised query against routing_centroids): pgvector computes distances in float32."""
        L = min(L, self.k)
        rows = conn.execute(
            """SELECT x.ord, n.cluster, n.distance
               FROM unnest(%s::vector[]) WITH ORDINALITY AS x(v, ord)
               CROSS JOIN LATERAL (
                 SELECT c.cluster, c.centroid <-> l2_normalize(x.v) AS distance
                 FROM avengers.routing_centroids c
                 ORDER BY 2, 1 LIMIT %s) AS n
               ORDER BY x.ord, n.distance, n.cluster""",
            (list(queries), L),
        ).fetchall()
        idx = np.array([r[1] for r in rows]).reshape(len(queries), L)
        dist = np.array([r[2] for r in rows], np.float64).reshape(len(queries), L)
        return idx, dist

    def scores(self, idx, dist, method: routing.RoutingMethod) -> np.ndarray:
        """(queries, models) routing scores; NaN where a model is not eligible."""
        d2 = dist**2
        if self.rho > 0 and method.temperature > 0:
            w = np.exp(-(d2 - d2[:, :1]) / (method.temperature * self.rho))
        else:
            w = (d2 == d2[:, :1]).astype(float)
        a = method.shrinkage
        ws = np.einsum("ql,qlm->qm", w, self.S[idx])
        wn = np.einsum("ql,qlm->qm", w, self.n[idx])
        num = ws + a * self.prior
        den = wn + a
        with np.errstate(invalid="ignore", divide="ignore"):
            out = num / den
        out[(den == 0) | ((wn == 0) & (a == 0))] = np.nan
        return out

    def order(self, row: np.ndarray) -> list[int]:
        """Model columns by score desc, overall desc, name (NaN scores dropped)."""
        keep = [j for j in range(len(row)) if not np.isnan(row[j])]
        return sorted(keep, key=lambda j: (-row[j], -self.overall[j], self.names[j]))


def _check_against_reference(conn, queries, method, *, top_n=1):
    ref = Reference(conn)
    idx, dist = ref.neighbours(conn, queries, method.neighbours)
    expected = ref.scores(idx, dist, method)
    got = decide(conn, queries, top_n=top_n, method=method)
    mismatched_near_ties = 0
    tol = SERVED_TOLERANCE
    for q, decision in enumerate(got):
        order = ref.order(expected[q])
        assert decision.cluster == idx[q, 0]
        best = expected[q, order[0]]
        top = decision.candidates[0]
        assert top.score == pytest.approx(expected[q, ref.names.index(top.model)], abs=tol)
        if top.model != ref.names[order[0]]:
            # Only a tie within rounding may go either way.
            assert abs(top.score - best) < tol, (q, top.model, ref.names[order[0]])
            mismatched_near_ties += 1
        for c in decision.candidates:
            assert c.score == pytest.approx(expected[q, ref.names.index(c.model)], abs=tol)
        assert [c.rank for c in decision.candidates] == list(range(1, len(decision.candidates) + 1))
        assert len(decision.candidates) == min(top_n, len(order))
    return ref, expected, mismatched_near_ties


def test_avengers_method_equals_the_numpy_formula(store, conn):
    ref, expected, ties = _check_against_reference(conn, store, routing.AVENGERS)
    assert ref.rho > 0 and ties <= 2
    # Soft pooling changes decisions: not every query goes to its nearest cluster's best model.
    paper = [d.model for d in decide(conn, store, method=routing.PAPER)]
    soft = [d.model for d in decide(conn, store)]  # default = AVENGERS
    assert 0 < sum(p != s for p, s in zip(paper, soft, strict=True)) < len(store)


@pytest.mark.parametrize("method", [WIDE, HARD, SHARP], ids=lambda m: m.name)
def test_full_ranking_and_other_methods(store, conn, method):
    _check_against_reference(conn, store[:120], method, top_n=len(MODELS))
    _check_against_reference(conn, store[:120], method, top_n=3)


@pytest.mark.parametrize(
    "method", [routing.AVENGERS, routing.PAPER, WIDE, HARD, SHARP], ids=lambda m: m.name
)
def test_single_route_equals_the_batch_form(store, conn, method):
    # decide (one vector, a prepared statement) and decide_many (LATERAL over the batch) run the
    # same body: the same decisions.
    queries = store[:60]
    batch = decide(conn, queries, top_n=len(MODELS), method=method)
    for q, expected in zip(queries, batch, strict=True):
        got = decide_one(conn, q, top_n=len(MODELS), method=method)
        assert (got.clustering_id, got.cluster) == (expected.clustering_id, expected.cluster)
        assert got.distance == pytest.approx(expected.distance, abs=1e-12)
        assert [(c.model, c.rank) for c in got.candidates] == [
            (c.model, c.rank) for c in expected.candidates
        ]
        for a, b in zip(got.candidates, expected.candidates, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-12)
            assert (a.mean_score, a.n, a.wilson_low, a.wilson_high, a.overall_score) == (
                b.mean_score,
                b.n,
                b.wilson_low,
                b.wilson_high,
                b.overall_score,
            )
            assert (a.endpoint, a.served_name, a.model_id) == (
                b.endpoint,
                b.served_name,
                b.model_id,
            )
    one = decide_one(conn, queries[0], top_n=2, method=method)
    assert [c.rank for c in one.candidates] == [1, 2]


def test_paper_method_is_the_nearest_clusters_argmax(store, conn):
    ref, expected, _ = _check_against_reference(conn, store, routing.PAPER, top_n=len(MODELS))
    rows = conn.execute(
        "SELECT centroid FROM avengers.centroids WHERE clustering_id = %s ORDER BY cluster",
        (ref.cid,),
    ).fetchall()
    c = np.stack([np.asarray(r[0].to_numpy(), np.float64) for r in rows])
    q = store.astype(np.float64) / np.linalg.norm(store, axis=1, keepdims=True)
    nearest = (((q[:, None, :] - c[None]) ** 2).sum(-1)).argmin(1)
    with np.errstate(invalid="ignore"):
        means = ref.S / ref.n  # the profile's mean per cluster and model
    for i, decision in enumerate(decide(conn, store, top_n=len(MODELS), method="paper")):
        assert decision.cluster == nearest[i]
        want = ref.order(means[nearest[i]])
        assert [cand.model for cand in decision.candidates] == [ref.names[j] for j in want]
        for cand in decision.candidates:
            # score_sum / n of one cluster is exactly the profile's mean_score.
            assert cand.score == cand.mean_score
    # The same order as the served profile's active_rank.
    rows = conn.execute(
        "SELECT model FROM avengers.cluster_profiles WHERE cluster = %s ORDER BY active_rank",
        (int(nearest[0]),),
    ).fetchall()
    first = decide_one(conn, store[0], top_n=len(MODELS), method=routing.PAPER)
    assert [cand.model for cand in first.candidates] == [r[0] for r in rows]


def test_inactive_models_and_endpoints_in_the_soft_rule(store, conn):
    before = decide(conn, store[:50])
    winners = {d.model for d in before}
    conn.execute("UPDATE avengers.models SET active = false WHERE name = ANY(%s)", (list(winners),))
    after = decide(conn, store[:50], top_n=len(MODELS))
    assert all(winners.isdisjoint(c.model for c in d.candidates) for d in after)
    conn.execute("UPDATE avengers.models SET active = true")
    conn.execute("UPDATE avengers.models SET endpoint = 'http://127.0.0.1:1/v1' WHERE name = %s",
                 (MODELS[6],))  # fmt: skip
    only = decide(conn, store[:20], top_n=3, require_endpoint=True)
    assert all([c.model for c in d.candidates] == [MODELS[6]] for d in only)
    # The single route reads the model columns from routing_models, which a trigger on
    # avengers.models keeps current within the transaction.
    one = decide_one(conn, store[0], top_n=3, require_endpoint=True)
    assert [(c.model, c.endpoint) for c in one.candidates] == [(MODELS[6], "http://127.0.0.1:1/v1")]
    conn.execute("UPDATE avengers.models SET active = false WHERE name = %s", (MODELS[6],))
    assert decide_one(conn, store[0], require_endpoint=True).candidates == ()


def test_sql_defaults_are_the_avengers_preset(conn):
    args = conn.execute("SELECT pg_get_function_arguments('avengers.policy'::regproc)").fetchone()[
        0
    ]
    defaults = dict(re.findall(r"(\w+) (?:integer|double precision) DEFAULT ([0-9.]+)", args))
    a = routing.AVENGERS
    assert int(defaults["neighbours"]) == a.neighbours
    assert float(defaults["temperature"]) == a.temperature
    assert float(defaults["shrinkage"]) == a.shrinkage
    assert int(defaults["top_n"]) == Policy().top_n and int(defaults["completions"]) == 1
    assert routing.routing_method(None) is a and routing.routing_method("PAPER") is routing.PAPER
    with pytest.raises(InputError, match="unknown routing method"):
        routing.routing_method("nearest")
    with pytest.raises(InputError, match="neighbours"):
        routing.RoutingMethod("bad", neighbours=0)


def test_routing_aggregates_are_documented_and_refreshed_concurrently(store, conn):
    views = ["clustering_scale", "dataset_profiles", "cluster_datasets", "model_priors",
             "routing_state", "routing_centroids", "routing_entries",
             "routing_models"]  # fmt: skip
    for view in views:
        assert conn.execute(
            "SELECT obj_description(%s::regclass, 'pg_class')", (f"avengers.{view}",)
        ).fetchone()[0]
        uncommented = conn.execute(
            """SELECT a.attname FROM pg_attribute a
               WHERE a.attrelid = %s::regclass AND a.attnum > 0
                 AND col_description(a.attrelid, a.attnum) IS NULL""",
            (f"avengers.{view}",),
        ).fetchall()
        assert uncommented == []
    active = conn.execute("SELECT id FROM avengers.clusterings WHERE status = 'active'").fetchone()
    for view in views:
        ids = conn.execute(f"SELECT DISTINCT clustering_id FROM avengers.{view}").fetchall()
        assert ids == [active]
    # A new version refreshes every aggregate in the switch transaction.
    new = reclustering.recluster(k=5, seed=1, conn=conn)
    for view in views:
        ids = conn.execute(f"SELECT DISTINCT clustering_id FROM avengers.{view}").fetchall()
        assert ids == [(new.id,)]
    assert Reference(conn).k == 5
    # ... and analyzes what routing reads: its cached plans are built from these statistics.
    analyzed = conn.execute(
        """SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = 'avengers'
           AND tablename IN ('cluster_profiles', 'routing_state', 'routing_centroids',
                             'routing_models')"""
    ).fetchall()
    assert len(analyzed) == 4
    # The routing tables follow the switch: decide = decide_many.
    queries = unit(np.random.default_rng(5).standard_normal((20, store.shape[1])))
    batch = decide(conn, queries, top_n=3)
    singles = [decide_one(conn, q, top_n=3) for q in queries]
    assert [(d.clustering_id, d.cluster) for d in singles] == [(new.id, d.cluster) for d in batch]
    assert [[c.model for c in d.candidates] for d in singles] == [
        [c.model for c in d.candidates] for d in batch
    ]


def test_single_route_inlines_the_decision_into_its_statement(store, conn):
    # decide has no SET clause, so the client's statement plans its body as one plan (no
    # function scan), prepared on first use.
    queries = store[:20]
    prepared = [decide_one(conn, q, top_n=3) for q in queries]
    statement = decide_statement([store[0]], Policy(top_n=3))
    plan = conn.execute(
        "EXPLAIN (COSTS OFF) " + statement.sql, statement.params, binary=True
    ).fetchall()
    assert any("routing_centroids" in line for (line,) in plan)
    assert not any("Function Scan" in line and "decide" in line for (line,) in plan)
    names = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
    assert any("avengers.decide(" in s for (s,) in names)
    # A connection that prepares nothing plans it on every call, with the same decisions.
    threshold = conn.prepare_threshold
    conn.prepare_threshold = None
    try:
        unprepared = [decide_one(conn, q, top_n=3) for q in queries]
    finally:
        conn.prepare_threshold = threshold
    for a, b in zip(prepared, unprepared, strict=True):
        assert (a.clustering_id, a.cluster) == (b.clustering_id, b.cluster)
        assert [(c.model, c.rank) for c in a.candidates] == [
            (c.model, c.rank) for c in b.candidates
        ]
        for x, y in zip(a.candidates, b.candidates, strict=True):
            assert x.score == pytest.approx(y.score, abs=1e-12)
