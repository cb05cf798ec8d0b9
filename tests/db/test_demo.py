"""`avengers demo` on a fresh store: the bundled sample end to end, then an idempotent rerun."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from avengers_store.cli.testing import run_cli

from avengers_store import demo, evaluate
from avengers_store.calibration import clusterings, reclustering
from avengers_store.store import connections
from avengers_store.testing import LLMROUTER


def test_bundled_sample_is_aligned_and_small():
    parquet, npy = demo.sample_paths()
    table = pd.read_parquet(parquet)
    vectors = np.load(npy)
    assert len(table) == len(vectors) == 1508 and vectors.shape[1] == 384
    assert vectors.dtype == np.float16
    assert set(table["split"]) == {"train", "test"}
    assert set(table["task_name"]) == set(demo.TASK_TYPES)
    assert parquet.stat().st_size + npy.stat().st_size < 3_000_000
    assert (parquet.parent / "LICENSE_upstream_MIT.txt").read_text().startswith("MIT License")


@pytest.mark.skipif(not LLMROUTER.exists(), reason="shared data not present")
def test_sample_regenerates_identically(tmp_path):
    import importlib.util

    parquet, npy = demo.sample_paths()
    spec = importlib.util.spec_from_file_location(
        "make_demo_sample", parquet.parent / "make_demo_sample.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(LLMROUTER, tmp_path)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / demo.SAMPLE_FILE), pd.read_parquet(parquet)
    )
    assert np.array_equal(np.load(tmp_path / demo.VECTORS_FILE), np.load(npy))


def test_demo_runs_and_reruns_idempotently(cli_env, tmp_path):
    plot = tmp_path / "heat.png"
    first = json.loads(run_cli("demo", "--plot", str(plot), "--json").stdout)
    assert first["loaded"] and first["datasets"] == 14 and first["queries"] == 1508
    assert first["vectors_imported"] == 1508
    assert first["clustering"]["k"] == demo.DEFAULT_K and first["clustering"]["status"] == "active"
    assert first["clustering"]["n_queries"] == 1008
    assert len(first["clusters"]) == demo.DEFAULT_K
    selection = first["selection"]
    assert len(selection["selected"]) == demo.DEFAULT_BUDGET
    assert selection["selected"] == [s["model"] for s in selection["scores"][:3]]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    routed, replay = first["routed"], first["replay"]
    check_routed_questions(cli_env, routed)
    check_replay_line(cli_env, replay)

    text = run_cli("demo", "--plot", str(plot)).stdout
    assert "already loaded: 14 datasets, 1,508 queries" in text
    assert "(reused)" in text and "every query already has a vector" in text
    assert f"heatmap:    {plot}" in text
    # The rerun routes the same five questions the same way and replays to the same figures.
    for q in routed:
        assert f"-> cluster {q['cluster']}, {q['model']}: {q['why']}" in text
    assert (
        f"replay:     routed {replay['routed']:.2f} | best single model "
        f"{replay['best_single']['score']:.2f} ({replay['best_single']['model']}) | oracle "
        f"{replay['oracle']:.2f}" in text
    )
    with connections.connect(cli_env) as c:
        counts = c.execute(
            """SELECT (SELECT count(*) FROM avengers.clusterings),
                      (SELECT count(*) FROM avengers.queries),
                      (SELECT count(*) FROM avengers.query_embeddings),
                      (SELECT count(*) FROM avengers.models)"""
        ).fetchone()
    assert counts == (1, 1508, 1508, 9)
    assert clusterings.active_clustering(url=cli_env).id == first["clustering"]["id"]
    # A clustering fitted the older way (one fit over all datasets) is not reused.
    reclustering.recluster(k=demo.DEFAULT_K, seed=demo.SEED, stratify="none", url=cli_env)
    text = run_cli("demo", "--plot", str(plot)).stdout
    assert "(reused)" not in text
    assert clusterings.active_clustering(url=cli_env).params["stratify"] == "dataset"


def check_routed_questions(url, routed):
    """Five test questions of the sample, each routed where the store's SQL routes its vector."""
    assert len(routed) == demo.ROUTED_QUESTIONS
    # The sample's test split routes to five different models: the picks show all of them, each
    # on its own cluster and task.
    assert len({q["model"] for q in routed}) == 5
    assert len({q["cluster"] for q in routed}) == 5
    assert len({q["dataset"] for q in routed}) == 5
    with connections.connect(url) as c:
        for q in routed:
            split, dataset, text = c.execute(
                """SELECT q.split, d.name, q.text FROM avengers.queries q
                   JOIN avengers.datasets d ON d.id = q.dataset_id WHERE q.id = %s""",
                (q["query_id"],),
            ).fetchone()
            assert (split, dataset, text) == ("test", q["dataset"], q["text"])
            nearest = c.execute(
                """SELECT c.cluster FROM avengers.centroids c
                   JOIN avengers.clusterings k ON k.id = c.clustering_id AND k.status = 'active'
                   JOIN avengers.query_embeddings e ON e.space_id = k.space_id
                   WHERE e.query_id = %s
                   ORDER BY c.centroid <-> l2_normalize(e.embedding) LIMIT 1""",
                (q["query_id"],),
            ).fetchone()[0]
            ranked = c.execute(
                """SELECT r.cluster, r.model, r.mean_score, r.n, r.score, r.wilson_low, r.wilson_high
                   FROM avengers.query_embeddings e
                   JOIN avengers.clusterings k ON k.status = 'active' AND k.space_id = e.space_id,
                        avengers.route(e.embedding, 2) r
                   WHERE e.query_id = %s ORDER BY r.rank""",
                (q["query_id"],),
            ).fetchall()
            assert q["cluster"] == nearest == ranked[0][0]
            assert q["model"] == ranked[0][1]
            assert [c["model"] for c in q["decision"]["candidates"]] == [r[1] for r in ranked]
            best, second = ranked
            assert q["why"] == (
                f"pooled score {best[4]:.3f} vs {second[4]:.3f} for {second[1]}; "
                f"cluster {nearest} alone {best[2]:.2f} (n {best[3]}, "
                f"Wilson {best[5]:.2f}-{best[6]:.2f})"
            )


def check_replay_line(url, replay):
    """The replay figures are evaluate's on the sample's test datasets, with the demo's seed and k;
    and evaluate left the served clustering as it was."""
    active = clusterings.active_clustering(url=url).id
    table = pd.read_parquet(demo.sample_paths()[0])
    names = sorted(
        {demo.DATASET_PREFIX + t for t in table.loc[table["split"] == "test", "task_name"]}
    )
    result = evaluate(k=demo.DEFAULT_K, seeds=(demo.SEED,), datasets=names, url=url)
    group = result.groups["id"]
    assert (replay["seed"], replay["k"]) == (demo.SEED, demo.DEFAULT_K)
    assert replay["datasets"] == len(names) == 10 and replay["queries"] == 500
    assert replay["routed"] == pytest.approx(group.routed.mean, abs=1e-9)
    assert replay["best_single"]["model"] == group.best_single_cal_balanced.model
    assert replay["best_single"]["score"] == pytest.approx(group.best_single_cal_balanced.score)
    assert replay["oracle"] == pytest.approx(group.oracle)
    assert replay["best_single"]["score"] < replay["routed"] < replay["oracle"]
    assert clusterings.active_clustering(url=url).id == active
