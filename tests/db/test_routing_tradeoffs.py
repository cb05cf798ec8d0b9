"""Cost-aware routing: the expected cost against a numpy re-computation of the cost model
(sql/025_costs.sql), tradeoff 1 against the plain routing, the utility's order, max_cost's
ceiling and its over-budget fallback, and the single decision against the batch form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avengers_store import routing
from avengers_store.calibration import reclustering
from avengers_store.errors import InputError
from avengers_store.routing import Policy
from avengers_store.store import connections, driver_errors
from avengers_store.testing import MODELS, seed_store, unit

PRICES = {  # per 1M tokens (in, out); model-6 has none
    "model-0": (0.1, 0.1),
    "model-1": (0.2, 0.4),
    "model-2": (0.9, 0.9),
    "model-3": (0.2, 0.2),
    "model-4": (0.5, 1.5),
    "model-5": (None, 0.3),
}
TOKENS_OUT = {"model-1": 100, "model-3": 40}  # measured per answer on calibration outcomes
COST = {"model-4": 0.002}  # measured cost per outcome (2 samples)
TOKENS_IN = {"model-3": 3.0}  # prompt tokens per character of the query text


def decide(conn, vectors, *, prompt_chars=None, **policy):
    return routing.decide(conn, vectors, Policy(**policy), prompt_chars=prompt_chars)


def decide_one(conn, vector, *, prompt_chars=None, **policy):
    return decide(conn, [vector], prompt_chars=[prompt_chars], **policy)[0]


@pytest.fixture(scope="module")
def store(db_url):
    """seed_store, priced, with measured tokens and costs on some models' outcomes, k = 20."""
    with connections.connect(db_url) as c:
        syn = seed_store(c, per_blob=40, seed=5)
        for name, (cin, cout) in PRICES.items():
            c.execute(
                "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s WHERE name = %s",
                (cin, cout, name),
            )
        rng = np.random.default_rng(3)
        rows = c.execute(
            """SELECT o.query_id, m.name, char_length(q.text) FROM avengers.outcomes o
               JOIN avengers.models m ON m.id = o.model_id
               JOIN avengers.queries q ON q.id = o.query_id ORDER BY 1, 2"""
        ).fetchall()
        for qid, name, chars in rows:
            if name in TOKENS_OUT and rng.random() < 0.7:  # some clusters unmeasured
                c.execute(
                    "UPDATE avengers.outcomes SET samples = 2, tokens_out = %s, tokens_in = %s "
                    "WHERE query_id = %s AND model_id = (SELECT id FROM avengers.models "
                    "WHERE name = %s)",
                    (
                        int(2 * TOKENS_OUT[name] * rng.uniform(0.5, 1.5)),
                        int(round(TOKENS_IN.get(name, 0.25) * chars)),
                        qid,
                        name,
                    ),
                )
            if name in COST:
                c.execute(
                    "UPDATE avengers.outcomes SET samples = 2, cost = %s WHERE query_id = %s "
                    "AND model_id = (SELECT id FROM avengers.models WHERE name = %s)",
                    (COST[name] * rng.uniform(0.5, 1.5), qid, name),
                )
        reclustering.recluster(k=20, seed=3, conn=c)
        c.commit()
    rng = np.random.default_rng(2024)
    return unit(
        syn.blobs[rng.integers(0, len(syn.blobs), 120)] + 0.35 * rng.normal(size=(120, syn.dim))
    ).astype(np.float32)


class CostReference:
    """The cost model computed in numpy from the outcomes, for the paper method (one cluster,
    no shrinkage): per-answer means of the nearest cluster, else of the model, else defaults."""

    def __init__(self, conn) -> None:
        cid = conn.execute("SELECT id FROM avengers.active_clustering").fetchone()[0]
        self.price = {
            name: (cin, cout)
            for name, cin, cout in conn.execute(
                "SELECT name, cost_in_per_m, cost_out_per_m FROM avengers.models"
            ).fetchall()
        }
        rows = conn.execute(
            """SELECT a.cluster, m.name, o.samples, o.tokens_in, char_length(q.text),
                      o.tokens_out, o.cost
               FROM avengers.assignments a
               JOIN avengers.outcomes o ON o.query_id = a.query_id
               JOIN avengers.queries q ON q.id = a.query_id
               JOIN avengers.models m ON m.id = o.model_id
               WHERE a.clustering_id = %s""",
            (cid,),
        ).fetchall()
        self.rows = rows

    def _mean(self, name, cluster, value_col):
        picked = [r for r in self.rows if r[1] == name and r[value_col] is not None]
        near = [r for r in picked if r[0] == cluster]
        use = near or picked
        if not use:
            return None
        return sum(r[value_col] for r in use) / sum(r[2] for r in use)

    def cost(self, name: str, cluster: int, chars: int, completions: int = 1) -> float | None:
        measured = self._mean(name, cluster, 6)
        if measured is not None:
            return completions * measured
        cin, cout = self.price[name]
        if cin is None and cout is None:
            return None
        with_in = [r for r in self.rows if r[1] == name and r[3] is not None]
        per_char = sum(r[3] for r in with_in) / sum(r[4] for r in with_in) if with_in else 0.25
        out = self._mean(name, cluster, 5)
        out = 256 if out is None else out
        return ((cin or 0) * chars * per_char + completions * (cout or 0) * out) / 1e6


def _same(a, b, *, scores_exact: bool = True):
    assert (a.clustering_id, a.cluster, a.distance) == (b.clustering_id, b.cluster, b.distance)
    assert [(c.model, c.rank) for c in a.candidates] == [(c.model, c.rank) for c in b.candidates]
    for x, y in zip(a.candidates, b.candidates, strict=True):
        assert x.score == y.score if scores_exact else x.score == pytest.approx(y.score)
        assert (x.mean_score, x.n, x.wilson_low, x.wilson_high, x.endpoint) == (
            y.mean_score, y.n, y.wilson_low, y.wilson_high, y.endpoint)  # fmt: skip


@pytest.mark.parametrize("method", [routing.AVENGERS, routing.PAPER], ids=lambda m: m.name)
def test_tradeoff_one_is_exactly_the_plain_routing(store, conn, method):
    chars = [len(f"question {i}") * 7 for i in range(len(store))]
    plain = decide(conn, store, top_n=len(MODELS), method=method)
    one = decide(conn, store, top_n=len(MODELS), method=method, tradeoff=1.0, prompt_chars=chars)
    for a, b in zip(plain, one, strict=True):
        _same(a, b)
        assert not a.costed and all(c.expected_cost is None for c in a.candidates)
        assert b.costed and b.tradeoff == 1.0 and not b.over_budget
        assert all(c.expected_cost is not None for c in b.candidates if c.model != "model-6")
    # The single decision: the same decisions.
    for q, n, expected in zip(store[:30], chars[:30], one[:30], strict=True):
        got = decide_one(conn, q, top_n=len(MODELS), method=method, tradeoff=1.0, prompt_chars=n)
        _same(got, expected)
        assert [c.expected_cost for c in got.candidates] == [
            c.expected_cost for c in expected.candidates
        ]


def test_expected_cost_is_the_documented_cost_model(store, conn):
    ref = CostReference(conn)
    chars = [10 + 7 * i for i in range(len(store))]
    for completions in (1, 3):
        decisions = decide(
            conn, store, top_n=len(MODELS), method=routing.PAPER, tradeoff=0.5,
            completions=completions, prompt_chars=chars,
        )  # fmt: skip
        for d, n in zip(decisions, chars, strict=True):
            for c in d.candidates:
                want = ref.cost(c.model, d.cluster, n, completions)
                if want is None:
                    assert c.expected_cost is None
                else:
                    assert c.expected_cost == pytest.approx(want, rel=1e-5)
    # Without its text a vector is priced at the calibration texts' mean length.
    mean_chars = conn.execute("SELECT mean_chars FROM avengers.routing_state").fetchone()[0]
    d = decide_one(conn, store[0], top_n=len(MODELS), method=routing.PAPER, tradeoff=0.5)
    priced = {c.model: c.expected_cost for c in d.candidates}
    assert priced["model-0"] == pytest.approx(ref.cost("model-0", d.cluster, mean_chars), 1e-6)


def _normalised(values):
    lo, hi = min(values), max(values)
    return [1.0 if hi == lo else (v - lo) / (hi - lo) for v in values]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7])
def test_utility_orders_the_candidates(store, conn, alpha):
    chars = [50] * len(store)
    for d in decide(conn, store, top_n=len(MODELS), tradeoff=alpha, prompt_chars=chars):
        cands = d.candidates
        q = _normalised([c.score for c in cands])
        known = [c.expected_cost for c in cands if c.expected_cost is not None]
        lo, hi = min(known), max(known)
        for c, qn in zip(cands, q, strict=True):
            cn = 1.0 if c.expected_cost is None else (
                0.0 if hi == lo else (c.expected_cost - lo) / (hi - lo))  # fmt: skip
            assert c.utility == pytest.approx(alpha * qn + (1 - alpha) * (1 - cn), abs=1e-9)
        keys = [(-c.utility, -c.score) for c in cands]
        assert keys == sorted(keys)
        if alpha == 0.0:
            # The cheapest model whatever its quality; the better score among equal costs.
            low = min(known)
            tied = [c for c in cands if c.expected_cost == low]
            assert d.model == max(tied, key=lambda c: c.score).model


def test_max_cost_keeps_to_the_budget_or_flags_the_cheapest(store, conn):
    chars = [40] * len(store)
    everything = decide(conn, store, top_n=len(MODELS), tradeoff=1.0, prompt_chars=chars)
    costs = sorted(c.expected_cost for c in everything[0].candidates if c.expected_cost)
    ceiling = costs[len(costs) // 2]
    capped = decide(conn, store, top_n=len(MODELS), max_cost=ceiling, prompt_chars=chars)
    for full, d in zip(everything, capped, strict=True):
        fits = [c for c in full.candidates if c.expected_cost is not None and
                c.expected_cost <= ceiling]  # fmt: skip
        if fits:
            # The plain order (alpha 1) among the candidates that fit; never an unpriced one.
            assert [c.model for c in d.candidates] == [c.model for c in fits]
            assert not d.over_budget and all(c.over_budget is False for c in d.candidates)
        else:
            assert len(d.candidates) == 1 and d.over_budget
    # Below every model: the cheapest one alone, flagged.
    below = decide(conn, store[:10], top_n=3, tradeoff=0.8, max_cost=0.0, prompt_chars=chars[:10])
    for d in below:
        assert d.over_budget and len(d.candidates) == 1
        assert d.model == "model-0" and d.candidates[0].over_budget
        assert "no candidate fits max cost 0" in d.explain()
        assert "(over budget)" in d.explain()
    one = decide_one(conn, store[0], top_n=3, max_cost=0.0)
    full = decide_one(conn, store[0], top_n=len(MODELS), tradeoff=1.0)
    cheapest = min(
        (c for c in full.candidates if c.expected_cost is not None),
        key=lambda c: c.expected_cost,
    )
    assert one.over_budget and one.model == cheapest.model


@pytest.mark.parametrize("policy", [
    Policy(tradeoff=1.0), Policy(tradeoff=0.4), Policy(tradeoff=0.0, completions=4),
    Policy(tradeoff=0.6, max_cost=2e-4), Policy(max_cost=0.0),
], ids=["one", "0.4", "zero", "ceiling", "nothing-fits"])  # fmt: skip
def test_single_decision_equals_the_batch_form_with_costs(store, conn, policy):
    queries = list(store[:80])
    chars = [30 + i for i in range(len(queries))]
    policy = policy.replace(top_n=len(MODELS))
    batch = routing.decide(conn, queries, policy, prompt_chars=chars)
    for q, n, b in zip(queries, chars, batch, strict=True):
        (a,) = routing.decide(conn, [q], policy, prompt_chars=[n])
        assert a == b
        assert a.costed and a.policy == policy
        if policy.max_cost is not None:
            fits = all(c.expected_cost <= policy.max_cost for c in a.candidates)
            assert fits != a.over_budget


def test_bad_trade_off_arguments_are_named(store, conn):
    with pytest.raises(InputError) as err:
        Policy(tradeoff=1.5)
    assert err.value.location == "tradeoff"
    with pytest.raises(InputError) as err:
        Policy(max_cost=-1)
    assert err.value.location == "max_cost"
    with pytest.raises(InputError) as err:
        Policy(completions=0)
    assert err.value.location == "completions"
    with pytest.raises(InputError) as err:
        decide(conn, store[:2], tradeoff=0.5, prompt_chars=[1])
    assert err.value.location == "prompt_chars"
    with pytest.raises(InputError) as err:
        decide(conn, store[:2], tradeoff=0.5, prompt_chars=[1, -3])
    assert err.value.location == "prompt_chars 2"
    # Called directly, the SQL checks them too (SQLSTATE VA422).
    with (
        pytest.raises(InputError, match="tradeoff must be between 0 and 1"),
        driver_errors.translated("query"),
    ):
        conn.execute(
            "SELECT * FROM avengers.route(%s::vector, 1, tradeoff => 2)",
            (store[0].tolist(),),
        )
    conn.rollback()
    with (
        pytest.raises(InputError, match="max_cost must be a finite number >= 0") as err,
        driver_errors.translated(),
    ):
        conn.execute(
            "SELECT * FROM avengers.decide_many(%s::vector[], avengers.policy(max_cost => -1))",
            ([store[0]],),
        )
    assert err.value.location == "max_cost"
    conn.rollback()
    with (
        pytest.raises(InputError, match="the routing policy is NULL") as err,
        driver_errors.translated(),
    ):
        conn.execute("SELECT * FROM avengers.decide(%s::vector, NULL)", (store[0].tolist(),))
    assert err.value.location == "policy"
    conn.rollback()


def test_a_valid_policy_is_checked_when_planned_not_on_every_decision(store, conn):
    # A composite with NULL fields is not "IS NOT NULL": the check once called the plpgsql
    # error function on every decision. A valid constant policy now folds to nothing.
    plan = "\n".join(
        line
        for (line,) in conn.execute(
            "EXPLAIN (VERBOSE, GENERIC_PLAN) SELECT * FROM avengers.decide($1::vector, "
            "avengers.policy(3, tradeoff => 0.5))"
        )
    )
    assert "model" in plan and "policy_error" not in plan
    # Fields left unset (a row of NULLs) route with the defaults instead of failing.
    rows = conn.execute(
        "SELECT model FROM avengers.decide(%s::vector, ROW(NULL, NULL, NULL, NULL, NULL, NULL, "
        "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::avengers.routing_policy)",
        (store[0].tolist(),),
    ).fetchall()
    assert len(rows) == 1 and rows[0][0] is not None


def test_route_log_usage_feeds_the_completion_tokens(store, conn):
    cluster = decide_one(conn, store[0], method=routing.PAPER).cluster
    cid = conn.execute("SELECT id FROM avengers.active_clustering").fetchone()[0]
    before = conn.execute(
        "SELECT answers, tokens_out_sum FROM avengers.cluster_costs c JOIN avengers.models m "
        "ON m.id = c.model_id WHERE c.cluster = %s AND m.name = 'model-5'",
        (cluster,),
    ).fetchone()
    assert before is None  # nothing measured for model-5
    usage = [{"model": "model-5", "samples": 4, "tokens_out": 400, "tokens_in": 9}]
    conn.execute(
        "INSERT INTO avengers.route_log (query_hash, clustering_id, cluster, strategy, metadata) "
        "VALUES (%s, %s, %s, 'self-consistency', %s)",
        ("0" * 64, cid, cluster, json.dumps({"usage": usage})),
    )
    conn.execute("CALL avengers.refresh_profiles()")
    after = conn.execute(
        "SELECT answers, tokens_out_sum FROM avengers.cluster_costs c JOIN avengers.models m "
        "ON m.id = c.model_id WHERE c.cluster = %s AND m.name = 'model-5'",
        (cluster,),
    ).fetchone()
    assert after == (4.0, 400.0)
    d = decide_one(
        conn, store[0], top_n=len(MODELS), method=routing.PAPER, tradeoff=0.5, prompt_chars=0
    )
    five = next(c for c in d.candidates if c.model == "model-5")
    assert five.expected_cost == pytest.approx(0.3 * 100 / 1e6)  # price_out x 400 / 4 tokens


def test_unprepared_cost_aware_decision_is_the_prepared_one(store, conn):
    policy = {"top_n": 3, "tradeoff": 0.4, "max_cost": 3e-4}
    prepared = [decide_one(conn, q, prompt_chars=50, **policy) for q in store[:20]]
    threshold = conn.prepare_threshold
    conn.prepare_threshold = None
    try:
        unprepared = [decide_one(conn, q, prompt_chars=50, **policy) for q in store[:20]]
    finally:
        conn.prepare_threshold = threshold
    for a, b in zip(prepared, unprepared, strict=True):
        assert [(c.model, c.over_budget) for c in a.candidates] == [
            (c.model, c.over_budget) for c in b.candidates
        ]
        for x, y in zip(a.candidates, b.candidates, strict=True):
            assert x.expected_cost == pytest.approx(y.expected_cost, rel=1e-12)
            assert x.utility == pytest.approx(y.utility, abs=1e-12)
