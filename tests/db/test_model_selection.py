"""Model-set selection: s(m) = sum over clusters of 1/rank, recomputed from `avengers profile`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from avengers_store.cli.testing import run_cli

from avengers_store.calibration import embedding_spaces, reclustering
from avengers_store.calibration.model_selection import select_models
from avengers_store.calibration.query_vectors import store_vectors
from avengers_store.errors import InputError, StoreStateError
from avengers_store.store import connections
from avengers_store.testing import (
    add_dataset,
    add_models,
    add_outcomes,
    seed_store,
    throwaway_database,
    unit,
)


@pytest.fixture(scope="module")
def store(db_url):
    with connections.connect(db_url) as c:
        seed_store(c, n_blobs=4, per_blob=30)
        c.commit()
    reclustering.recluster(k=6, seed=5, url=db_url)
    return db_url


def recompute(profile: list[dict]) -> list[str]:
    scores: dict[str, float] = {}
    overall: dict[str, float] = {}
    for p in profile:
        scores[p["model"]] = scores.get(p["model"], 0.0) + 1.0 / p["rank"]
        overall[p["model"]] = p["overall_score"]
    return sorted(scores, key=lambda m: (-scores[m], -overall[m], m)), scores


def test_select_json_equals_recomputed_scores(cli_env, store):
    profile = json.loads(run_cli("profile", "--json").stdout)
    order, scores = recompute(profile)
    out = json.loads(run_cli("models", "select", "--budget", "3", "--json").stdout)
    assert out["selected"] == order[:3]
    assert [s["model"] for s in out["scores"]] == order
    for s in out["scores"]:
        assert s["selection_score"] == pytest.approx(scores[s["model"]], abs=1e-12)
    assert out["applied"] is False
    with connections.connect(store) as c:
        assert c.execute("SELECT bool_and(active) FROM avengers.models").fetchone()[0]


def test_apply_marks_the_chosen_set_and_refreshes(cli_env, store):
    text = run_cli("models", "select", "--budget", "2", "--apply").stdout
    assert "active models now" in text
    chosen = select_models(2, url=store).selected
    with connections.connect(store) as c:
        active = {r[0] for r in c.execute("SELECT name FROM avengers.models WHERE active")}
        routed = {
            r[0]
            for r in c.execute(
                "SELECT DISTINCT model FROM avengers.cluster_profiles WHERE active_rank IS NOT NULL"
            )
        }
        ranks = c.execute(
            "SELECT DISTINCT active_rank FROM avengers.cluster_profiles "
            "WHERE active_rank IS NOT NULL ORDER BY 1"
        ).fetchall()
    assert active == set(chosen) == routed
    assert ranks == [(1,), (2,)]
    # Ranks for selection are over all models, so the choice is stable once applied.
    assert select_models(2, url=store).selected == chosen
    select_models(7, apply=True, url=store)  # restore the full pool


def test_ties_fall_to_overall_score_then_name(pg_admin_url, template_db):
    """Two clusters; each model wins one and is second in the other: equal s(m) = 1.5."""
    with throwaway_database(pg_admin_url, template=template_db) as url:
        with connections.connect(url) as c:
            rng = np.random.default_rng(3)
            centres = unit(np.eye(4)[:2] * 1.0)
            vectors = unit(np.repeat(centres, 10, axis=0) + 0.01 * rng.normal(size=(20, 4)))
            ids = add_dataset(c, "tie", [f"q{i}" for i in range(20)], ["calibration"] * 20)
            models = add_models(c, ["zeta", "alpha", "mid"])
            rows = []
            for i, q in enumerate(ids):
                first = i < 10
                rows += [
                    (q, models["zeta"], 1.0 if first else 0.5),
                    (q, models["alpha"], 0.5 if first else 1.0),
                    (q, models["mid"], 0.1),
                ]
            add_outcomes(c, rows)
            space = embedding_spaces.get_or_create_space(c, "tie-4", 4)
            embedding_spaces.activate_space(c, space.id)
            store_vectors(c, space.id, ids, vectors)
            c.commit()
        reclustering.recluster(k=2, url=url)
        result = select_models(1, url=url)
        assert [s.selection_score for s in result.scores[:2]] == [1.5, 1.5]
        assert result.selected == ("alpha",)  # equal overall score: name decides
        with connections.connect(url) as c:
            c.execute(
                "UPDATE avengers.outcomes SET score = 0.6 WHERE model_id = %s AND score = 0.5",
                (models["zeta"],),
            )
            c.execute("CALL avengers.refresh_profiles()")
            c.commit()
        assert select_models(1, url=url).selected == ("zeta",)  # higher overall score wins


def test_errors(store, pg_admin_url, template_db):
    with pytest.raises(InputError, match="at least 1"):
        select_models(0, url=store)
    with (
        throwaway_database(pg_admin_url, template=template_db) as url,
        pytest.raises(StoreStateError, match="avengers recluster"),
    ):
        select_models(2, url=url)


def test_price_ceiling_ranks_the_affordable_models_among_themselves(cli_env, store):
    profile = json.loads(run_cli("profile", "--json").stdout)
    names = sorted({p["model"] for p in profile})
    prices = {n: 0.1 * (i + 1) for i, n in enumerate(names[:-1])}  # the last has no price
    with connections.connect(store) as c:
        for name, price in prices.items():
            c.execute(
                "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s "
                "WHERE name = %s",
                (price / 2, price, name),
            )
        c.commit()
    try:
        ceiling = 0.45  # the four cheapest
        affordable = {n for n, p in prices.items() if p <= ceiling}
        # Ranks per cluster recomputed among the affordable models (mean desc, then tie order).
        kept = [p for p in profile if p["model"] in affordable]
        reranked = []
        for cluster in sorted({p["cluster"] for p in kept}):
            rows = sorted((p for p in kept if p["cluster"] == cluster), key=lambda p: p["rank"])
            reranked += [{**p, "rank": i + 1} for i, p in enumerate(rows)]
        order, scores = recompute(reranked)
        out = json.loads(
            run_cli("models", "select", "--budget", "2", "--max-price", str(ceiling), "--json")
            .stdout
        )  # fmt: skip
        assert out["selected"] == order[:2] and out["max_price"] == ceiling
        assert [s["model"] for s in out["scores"]] == order
        for s in out["scores"]:
            assert s["selection_score"] == pytest.approx(scores[s["model"]], abs=1e-12)
            assert s["price_out"] <= ceiling
        assert set(out["priced_out"]) == set(names) - affordable  # dearer, or without a price
        text = run_cli("models", "select", "--budget", "2", "--max-price", str(ceiling)).stdout
        assert "left out by --max-price 0.45" in text and names[-1] in text
        with pytest.raises(StoreStateError, match="`max_price`"):
            select_models(2, max_price=0.01, url=store)
        with pytest.raises(InputError) as err:
            select_models(2, max_price=-1, url=store)
        assert err.value.location == "max_price"
    finally:
        with connections.connect(store) as c:
            c.execute("UPDATE avengers.models SET cost_in_per_m = NULL, cost_out_per_m = NULL")
            c.commit()
