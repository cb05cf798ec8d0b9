"""Replay evaluation: hand-computable numbers on a tiny store, the rollback, the CLI JSON shape,
and the baselines against pandas on a real RouterDC slice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from avengers_store.cli.testing import run_cli, run_cli_error

import avengers_store
from avengers_store.calibration import reclustering
from avengers_store.errors import InputError
from avengers_store.evaluation import replay
from avengers_store.ingest.model_pool import list_models
from avengers_store.store import connections
from avengers_store.testing import ROUTERDC, build_replay_store


@pytest.fixture(scope="module")
def tiny(db_url) -> str:
    with connections.connect(db_url) as c:
        build_replay_store(c)
        reclustering.recluster(k=1, seed=0, conn=c)  # a served version the replay must not touch
        c.commit()
    return db_url


def _state(conn) -> tuple:
    return (
        conn.execute("SELECT id, status FROM avengers.clusterings ORDER BY id").fetchall(),
        conn.execute("SELECT * FROM avengers.cluster_profiles ORDER BY cluster, model").fetchall(),
        conn.execute("SELECT * FROM avengers.model_priors ORDER BY model_id").fetchall(),
        conn.execute("SELECT name, active FROM avengers.models ORDER BY name").fetchall(),
        conn.execute("SELECT id, split FROM avengers.queries ORDER BY id").fetchall(),
    )


@pytest.mark.parametrize("method", ["avengers", "paper"])
def test_hand_computed_numbers(tiny, method):
    result = avengers_store.evaluate(k=2, seeds=(1, 2), method=method, url=tiny)
    rows = {d.dataset: d for d in result.datasets}
    # alpha: routed m1 (1, missing -> 0); beta: routed m3 (m2 and m3 tie at 1.0 on beta's
    # calibration, m3 has the better overall score 4/7 > 2/7; shrunk, m3 wins outright);
    # gamma (OOD) routes like alpha: m1 (0, 0).
    assert [rows[n].routed.mean for n in ("alpha", "beta", "gamma")] == [50.0, 50.0, 0.0]
    assert rows["alpha"].routed.values == (50.0, 50.0) and rows["alpha"].routed.std == 0
    assert rows["alpha"].missing_outcomes == 2  # one per seed
    assert result.missing_outcomes == 2 and result.unrouted == 0
    # Chosen on calibration: query-weighted m1 (5/7), dataset-balanced m3 ((0.4 + 1) / 2).
    id_ = result.groups["id"]
    assert id_.best_single_cal_weighted.model == "m1"
    assert id_.best_single_cal_balanced.model == "m3"
    assert rows["alpha"].best_single_cal_weighted == 50.0  # m1 on alpha test; missing = 0
    assert rows["alpha"].best_single_cal_balanced == 0.0
    assert rows["beta"].best_single_cal_weighted == 100.0
    assert rows["beta"].best_single_cal_balanced == 50.0
    assert (rows["alpha"].max_expert.model, rows["alpha"].max_expert.score) == ("m2", 100.0)
    assert (rows["gamma"].max_expert.model, rows["gamma"].max_expert.score) == ("m3", 100.0)
    assert [rows[n].oracle for n in ("alpha", "beta", "gamma")] == [100.0, 100.0, 100.0]
    assert rows["alpha"].random == 50.0 and rows["beta"].random == pytest.approx(200 / 3)
    assert id_.routed.mean == 50.0 and result.id_macro == 50.0
    assert id_.best_single_cal_weighted.score == 75.0
    assert id_.best_single_cal_balanced.score == 25.0
    # Chosen on test: m1 and m2 tie at 75; the name decides.
    assert (id_.best_single_test.model, id_.best_single_test.score) == ("m1", 75.0)
    assert id_.max_expert == 100.0 and id_.oracle == 100.0
    assert id_.random == pytest.approx((50 + 200 / 3) / 2)
    assert id_.gap_closed.mean == pytest.approx(1 / 3)  # (50 - 25) / (100 - 25)
    ood = result.groups["ood"]
    assert ood.datasets == ("gamma",) and result.ood_macro == 0.0
    assert ood.best_single_cal_balanced.score == 100.0 and ood.best_single_test.model == "m3"
    assert result.calibration_macro.mean == 100.0
    assert result.clusters == (2, 2)
    d = result.to_dict()
    assert d["id_macro"] == 50.0 and d["ood_macro"] == 0.0
    assert d["datasets"][0]["dataset"] == "alpha" and d["method"]["name"] == method
    # The paper's recipe clusters all calibration queries at once; avengers per dataset.
    assert d["stratify"] == ("none" if method == "paper" else "dataset")


def test_rollback_leaves_the_store_unchanged(tiny):
    with connections.connect(tiny) as c:
        before = _state(c)
        c.rollback()
        replay.evaluate(k=2, seeds=(1,), budgets=(1, 2), calibration_fractions=(0.5,), conn=c)
        assert _state(c) == before
        c.rollback()
    with connections.connect(tiny) as c:
        assert _state(c) == before


def test_fraction_sweep_redraws_a_text_stored_in_both_splits(tiny):
    with connections.connect(tiny) as c:
        # A test copy of an alpha calibration text (as a benchmark with a leaked row loads).
        qid = c.execute(
            """INSERT INTO avengers.queries (dataset_id, text, split, content_hash, metadata)
               SELECT dataset_id, text, 'test', content_hash, metadata FROM avengers.queries
               WHERE text = 'alpha calibration question 0' RETURNING id"""
        ).fetchone()[0]
        c.execute(
            "INSERT INTO avengers.query_embeddings (space_id, query_id, embedding) "
            "SELECT space_id, %s, embedding FROM avengers.query_embeddings "
            "WHERE query_id = (SELECT min(id) FROM avengers.queries "
            "WHERE text = 'alpha calibration question 0')",
            (qid,),
        )
        c.execute(
            "INSERT INTO avengers.outcomes (query_id, model_id, score) SELECT %s, model_id, score "
            "FROM avengers.outcomes WHERE query_id = (SELECT min(id) FROM avengers.queries "
            "WHERE text = 'alpha calibration question 0')",
            (qid,),
        )
        before = _state(c)
        result = replay.evaluate(
            k=2, seeds=(1, 2, 3), calibration_fractions=(0.3, 0.6, 0.9), conn=c
        )
        points = result.sweeps["calibration_fraction"].points
        assert [p.value for p in points] == [0.3, 0.6, 0.9]
        assert _state(c) == before
        c.rollback()


def test_top_n_and_refusals(tiny):
    result = replay.evaluate(k=2, seeds=(1,), top_n=2, url=tiny)
    alpha = next(d for d in result.datasets if d.dataset == "alpha")
    # alpha's top-2 are m1 and m3 (shrunk: (5 + .5) / 6 > (2 + .7) / 6 > (0 + .5) / 6): best of
    # the two per query is 1 then 0 (m1 missing, m3 0).
    assert alpha.routed.mean == 50.0 and alpha.routed_top_n_best.mean == 50.0
    with pytest.raises(InputError, match="avengers ask"):
        replay.evaluate(strategy="model-switch", url=tiny)
    # Errors name the library's parameters; the CLI maps them to its flags.
    with pytest.raises(InputError, match="not an evaluated OOD dataset: alpha") as err:
        replay.evaluate(k=2, seeds=(1,), ood_macro=["alpha"], url=tiny)
    assert err.value.location == "ood_macro"
    with pytest.raises(InputError, match="no test queries in dataset.s. nope") as err:
        replay.evaluate(k=2, seeds=(1,), datasets=["nope"], url=tiny)
    assert err.value.location == "datasets"
    with pytest.raises(InputError, match="unknown stratify 'task'") as err:
        replay.evaluate(k=2, seeds=(1,), stratify="task", url=tiny)
    assert err.value.location == "stratify"
    explicit = replay.evaluate(k=2, seeds=(1,), method="paper", stratify="dataset", url=tiny)
    assert explicit.stratify == "dataset"


def test_cli_json_with_sweeps_and_plots(tiny, cli_env, tmp_path):
    out = run_cli(
        "evaluate", "--k", "2", "--seeds", "1,2", "--sweep-k", "1,2", "--budgets", "1,3",
        "--calibration-fractions", "0.3,0.7", "--plot", str(tmp_path), "--json",
    )  # fmt: skip
    data = json.loads(out.output)
    assert data["id_macro"] == 50.0 and data["ood_macro"] == 0.0
    assert {d["dataset"] for d in data["datasets"]} == {"alpha", "beta", "gamma"}
    ks = data["sweeps"]["k"]["points"]
    assert [p["value"] for p in ks] == [1, 2] and all(p["seeds"] == [1] for p in ks)
    assert ks[1]["id_macro"]["mean"] == 50.0 and ks[1]["calibration_macro"]["mean"] == 100.0
    budget = data["sweeps"]["budget"]["points"]
    assert [len(p["details"]["models"][0]) for p in budget] == [1, 3]
    assert len(data["sweeps"]["calibration_fraction"]["points"]) == 2
    for name in ("k", "budget", "calibration_fraction"):
        png = tmp_path / f"sweep_{name}.png"
        assert data["sweeps"][name]["plot"] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run_cli("evaluate", "--k", "2", "--seeds", "1", "--method", "paper").output
    assert "ID macro" in table and "alpha" in table and "OOD macro" in table


def test_cli_table_names_the_models_it_replays_and_those_left_out(tiny, cli_env):
    names = [m.name for m in list_models(url=tiny)]
    line = run_cli("evaluate", "--k", "2", "--seeds", "1").output.strip().splitlines()[-1]
    assert line.startswith(f"models: the {len(names)} active models (") and "inactive" not in line
    run_cli("models", "deactivate", names[0])
    try:
        line = run_cli("evaluate", "--k", "2", "--seeds", "1").output.strip().splitlines()[-1]
    finally:
        run_cli("models", "activate", names[0])
    assert line.startswith(f"models: the {len(names) - 1} active models (")
    assert (
        f"1 inactive, left out ({names[0]}); to replay with them: avengers models activate " in line
    )


@pytest.mark.skipif(not (ROUTERDC / "routerdc_7models.parquet").exists(), reason="no shared data")
def test_real_routerdc_slice_baselines_match_pandas(pg_admin_url, template_db, tmp_path):
    import pandas as pd

    from avengers_store.calibration.query_vectors import import_npy
    from avengers_store.ingest.wide_tables import load_table
    from avengers_store.testing import throwaway_database

    df = pd.read_parquet(ROUTERDC / "routerdc_7models.parquet")
    keep = df["benchmark"].isin(["humaneval", "gsm8k", "humanevalpack_js"]).to_numpy()
    keep = keep & df["split"].isin(["train", "test", "ood_test"]).to_numpy()
    part = df[keep].reset_index(drop=True)
    path = tmp_path / "slice.parquet"
    part.to_parquet(path)
    vectors = np.load(ROUTERDC / "embeddings_minilm.npy")[keep]
    np.save(tmp_path / "slice.npy", vectors)
    with throwaway_database(pg_admin_url, template=template_db) as url:
        report = load_table(
            path,
            dataset_col="benchmark",
            text_col="question",
            split_col="split",
            split_map={"train": "calibration", "test": "test", "ood_test": "test"},
            ood_splits=["ood_test"],
            outcome_prefix="acc|",
            url=url,
        )
        assert sum(d.merged_rows for d in report.datasets) == 0  # no duplicates to reconcile
        import_npy(tmp_path / "slice.npy", path, embedder="all-MiniLM-L6-v2", url=url)
        result = replay.evaluate(k=8, seeds=(42,), url=url)
    cols = [c for c in part.columns if c.startswith("acc|")]
    models = [c.split("|", 1)[1] for c in cols]
    cal = part[part["split"] == "train"]
    test = part[part["split"] != "train"]
    weighted = models[int(np.argmax(cal[cols].mean().to_numpy()))]
    balanced = models[int(np.argmax(cal.groupby("benchmark")[cols].mean().mean().to_numpy()))]
    rows = {d.dataset: d for d in result.datasets}
    for bench, group in test.groupby("benchmark"):
        means = group[cols].mean() * 100
        row = rows[bench]
        assert row.queries == len(group)
        assert row.oracle == pytest.approx(group[cols].max(axis=1).mean() * 100)
        assert row.random == pytest.approx(group[cols].to_numpy().mean() * 100)
        assert row.max_expert.score == pytest.approx(means.max())
        assert row.best_single_cal_weighted == pytest.approx(means["acc|" + weighted])
        assert row.best_single_cal_balanced == pytest.approx(means["acc|" + balanced])
        for m in models:
            assert row.per_model[m] == pytest.approx(means["acc|" + m])
    assert result.groups["id"].datasets == ("gsm8k", "humaneval")
    assert result.groups["ood"].datasets == ("humanevalpack_js",)
    assert 0 < result.id_macro <= result.groups["id"].oracle


PRICES = {"m1": 1.0, "m2": 0.1, "m3": 2.0}  # per 1M tokens, in = out


def _text_cost(price: float, text: str) -> float:
    return price * (len(text) / 4 + 256) / 1e6  # the cost model's defaults, nothing measured


def test_frontier_of_trade_offs(tiny):
    with connections.connect(tiny) as c:
        for name, price in PRICES.items():
            c.execute(
                "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s "
                "WHERE name = %s",
                (price, price, name),
            )
        result = replay.evaluate(k=2, seeds=(1, 2), tradeoffs=(1, 0, 0.5), conn=c)
        texts = dict(c.execute("SELECT id, text FROM avengers.queries").fetchall())
        # A measured cost on the outcome row is what that query cost (per sample).
        beta_m3 = c.execute(
            """SELECT o.query_id FROM avengers.outcomes o
               JOIN avengers.queries q ON q.id = o.query_id
               JOIN avengers.datasets d ON d.id = q.dataset_id
               JOIN avengers.models m ON m.id = o.model_id
               WHERE d.name = 'beta' AND q.split = 'test' AND m.name = 'm3' ORDER BY 1 LIMIT 1"""
        ).fetchone()[0]
        c.execute(
            "UPDATE avengers.outcomes SET cost = 0.004, samples = 2 WHERE query_id = %s "
            "AND model_id = (SELECT id FROM avengers.models WHERE name = 'm3')",
            (beta_m3,),
        )
        measured = replay.evaluate(k=2, seeds=(1,), tradeoffs=(1,), conn=c)
        c.execute("UPDATE avengers.models SET cost_in_per_m = NULL WHERE name = 'm2'")
        c.execute("UPDATE avengers.models SET cost_out_per_m = NULL WHERE name = 'm2'")
        with pytest.raises(Exception, match="no price and no measured cost for m2"):
            replay.evaluate(k=2, seeds=(1,), tradeoffs=(0.5,), conn=c)
        c.rollback()
    f = result.frontier
    assert [p.tradeoff for p in f.points] == [0.0, 0.5, 1.0] and f.group == "id"
    one = f.points[-1]
    # alpha = 1 is the plain replay, query by query.
    assert f.matches_plain is True
    assert one.quality["id"].values == result.groups["id"].routed.values
    assert one.quality["ood"].mean == result.ood_macro
    # alpha = 0: every query to the cheapest model, m2 (test: alpha 1, 1; beta 0, 1; gamma 1, 0).
    zero = f.points[0]
    assert zero.shares == {"m2": 1.0}
    assert zero.quality["id"].mean == 75.0 and zero.quality["ood"].mean == 50.0
    singles = {s.model: s for s in f.singles}
    assert zero.cost["id"].mean == pytest.approx(singles["m2"].cost["id"])
    by_set: dict[str, list[str]] = {}
    for text in texts.values():
        name = text.split()[0]
        if " test " in text:
            by_set.setdefault(name, []).append(text)
    for model, price in PRICES.items():
        want = np.mean(
            [np.mean([_text_cost(price, t) for t in by_set[n]]) for n in ("alpha", "beta")]
        )
        assert singles[model].cost["id"] == pytest.approx(want * 1e6)
    assert singles["m2"].quality["id"] == 75.0 and singles["m1"].quality["id"] == 75.0
    # m2 is cheapest and as good as any single model: it dominates them all.
    assert "m2" in f.non_dominated and "m1" not in f.non_dominated and "m3" not in f.non_dominated
    assert f.best_single == "m3"  # chosen on calibration, dataset-balanced
    head = f.quality_at_best_single_cost
    assert head.quality == max(p.quality["id"].mean for p in f.points)
    match = f.cost_to_match_best_single
    assert match.tradeoff == 0.0 and match.cost_share == pytest.approx(
        zero.cost["id"].mean / singles["m3"].cost["id"]
    )
    m3 = {s.model: s for s in measured.frontier.singles}["m3"]
    beta_texts = by_set["beta"]
    beta_costs = [_text_cost(2.0, t) for t in beta_texts]
    beta_costs[[i for i, t in enumerate(beta_texts)][0]] = 0.002  # the measured row, per sample
    want = np.mean([np.mean([_text_cost(2.0, t) for t in by_set["alpha"]]), np.mean(beta_costs)])
    assert m3.cost["id"] == pytest.approx(want * 1e6)


def test_cli_frontier_json_table_and_png(tiny, cli_env, tmp_path, monkeypatch):
    with connections.connect(tiny) as c:
        for name, price in PRICES.items():
            c.execute(
                "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s "
                "WHERE name = %s",
                (price, price, name),
            )
        c.commit()
    try:
        monkeypatch.chdir(tmp_path)
        out = run_cli("evaluate", "--k", "2", "--seeds", "1", "--tradeoffs", "0,0.5,1", "--json")
        data = json.loads(out.output)
        frontier = data["frontier"]
        assert frontier["matches_plain"] is True
        assert frontier["points"][-1]["quality"]["id"]["mean"] == data["id_macro"]
        assert (
            frontier["points"][-1]["quality"]["id"]["values"]
            == data["groups"]["id"]["routed"]["values"]
        )
        assert frontier["plot"] == "frontier.png"
        assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        table = run_cli(
            "evaluate", "--k", "2", "--seeds", "1", "--tradeoffs", "0,1",
            "--frontier-plot", str(tmp_path / "f2.png"),
        ).output  # fmt: skip
        assert "quality-cost frontier" in table and "alpha=0" in table
        assert "at the best single model's cost" in table and "to match" in table
        assert "alpha=1 routes every test query as the plain replay: yes" in table
        assert (tmp_path / "f2.png").exists()
        bad = run_cli_error("evaluate", "--k", "2", "--seeds", "1", "--tradeoffs", "1.5")
        assert str(bad) == "--tradeoffs: trade-offs must be between 0 and 1, got 1.5"
    finally:
        with connections.connect(tiny) as c:
            c.execute("UPDATE avengers.models SET cost_in_per_m = NULL, cost_out_per_m = NULL")
            c.commit()
