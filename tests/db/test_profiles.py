"""Served profiles: `avengers profile` against a pandas recomputation on real data, the 8th-model
check (no re-cluster, rank 1 exactly where it leads), filters, errors and the heatmap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from avengers_store.cli.testing import run_cli, run_cli_error

from avengers_store.calibration import clusterings, reclustering
from avengers_store.calibration.profiles import get_profiles, plot_profiles, profile_matrix
from avengers_store.errors import InputError, NotFound, StoreStateError
from avengers_store.ingest.text_identity import content_hash
from avengers_store.store import connections
from avengers_store.testing import MODELS, ROUTERDC, seed_store, throwaway_database

ROUTERDC_ARGS = [
    "--dataset-col", "benchmark", "--text-col", "question", "--outcome-prefix", "acc|",
    "--split-col", "split",
    "--split-map", "train=calibration,test=test,ood_test=test,extra_train=skip,extra_test=skip",
    "--ood-split", "ood_test",
]  # fmt: skip


@pytest.mark.skipif(not ROUTERDC.exists(), reason="shared data not present")
def test_routerdc_profiles_match_pandas_groupby(cli_env, tmp_path):
    """The issue's check on a seeded slice of the real table: load-table, embed --from-npy,
    recluster --k 64, profile --json == pandas groupby over the same assignments."""
    import pandas as pd

    full = pd.read_parquet(ROUTERDC / "routerdc_7models.parquet")
    rows = np.sort(np.random.default_rng(7).choice(len(full), size=2500, replace=False))
    sample = full.iloc[rows].reset_index(drop=True)
    table = tmp_path / "routerdc_slice.parquet"
    sample.to_parquet(table)
    vectors = tmp_path / "routerdc_slice.npy"
    np.save(vectors, np.load(ROUTERDC / "embeddings_minilm.npy", mmap_mode="r")[rows])

    run_cli("load-table", str(table), *ROUTERDC_ARGS)
    run_cli("embed", "--from-npy", str(vectors), "--source", str(table))
    run_cli("recluster", "--k", "64")
    profile = json.loads(run_cli("profile", "--json").stdout)

    models = [c[len("acc|") :] for c in sample.columns if c.startswith("acc|")]
    assert len(models) == 7
    assert {p["cluster"] for p in profile} == set(range(64))
    assert len(profile) == 64 * 7

    with connections.connect(cli_env) as c:
        assigned = c.execute(
            """SELECT a.cluster, d.name, q.text FROM avengers.assignments a
               JOIN avengers.clusterings k ON k.id = a.clustering_id AND k.status = 'active'
               JOIN avengers.queries q ON q.id = a.query_id
               JOIN avengers.datasets d ON d.id = q.dataset_id"""
        ).fetchall()
    # Each stored query is (dataset, normalised text); duplicates' outcomes are averaged.
    sample["key"] = [content_hash(t) for t in sample["question"]]
    per_query = sample.groupby(["benchmark", "key"])[[f"acc|{m}" for m in models]].mean()
    clusters = pd.DataFrame(
        [(cl, ds, content_hash(text)) for cl, ds, text in assigned],
        columns=["cluster", "benchmark", "key"],
    )
    joined = clusters.join(per_query, on=["benchmark", "key"], how="left")
    assert joined[f"acc|{models[0]}"].notna().all()
    expected = joined.groupby("cluster")[[f"acc|{m}" for m in models]].agg(["mean", "count"])
    for p in profile:
        mean, count = expected.loc[p["cluster"], (f"acc|{p['model']}", slice(None))]
        assert p["n"] == count
        assert p["mean_score"] == pytest.approx(mean, abs=1e-9)
        assert p["cluster_size"] == count


@pytest.fixture(scope="module")
def synthetic_store(pg_admin_url, template_db):
    with throwaway_database(pg_admin_url, template=template_db) as url:
        with connections.connect(url) as c:
            syn = seed_store(c)
            c.commit()
        reclustering.recluster(k=4, seed=1, url=url)
        yield url, syn


@pytest.fixture
def synthetic(synthetic_store, monkeypatch):
    """The synthetic store, clustered (k=4), with the CLI pointed at it."""
    url, syn = synthetic_store
    monkeypatch.setenv("AVENGERS_DATABASE_URL", url)
    return syn


@pytest.fixture
def syn_url(synthetic_store):
    return synthetic_store[0]


def test_eighth_model_takes_rank_one_exactly_where_it_leads(synthetic, syn_url, tmp_path):
    before = clusterings.active_clustering(url=syn_url)
    # The newcomer is perfect on alpha's blob 0, mediocre elsewhere (0.5).
    lines = ["text,model,score"]
    for dataset in ("alpha", "beta"):
        for qid in synthetic.query_ids[dataset]:
            i = synthetic.query_ids[dataset].index(qid)
            blob = synthetic.blob_of[qid]
            per_blob = 30
            text = f"{dataset} blob {blob} question {i % per_blob}"
            score = 1.0 if blob == 0 else (0.5 if i % 2 else 0.0)
            lines.append(f"{text},newcomer,{score}")
        path = tmp_path / f"{dataset}.csv"
        path.write_text("\n".join(lines) + "\n")
        run_cli("outcomes", "import", str(path), "--dataset", dataset, "--create-models")
        lines = ["text,model,score"]

    assert clusterings.active_clustering(url=syn_url).id == before.id
    profile = json.loads(run_cli("profile", "--json").stdout)
    by_cluster: dict[int, dict[str, float]] = {}
    rank_one = {}
    for p in profile:
        by_cluster.setdefault(p["cluster"], {})[p["model"]] = p["mean_score"]
        if p["rank"] == 1:
            rank_one[p["cluster"]] = p["model"]
    assert len(by_cluster) == 4 and all(len(m) == 8 for m in by_cluster.values())
    led = {
        cl
        for cl, means in by_cluster.items()
        if means["newcomer"] > max(v for m, v in means.items() if m != "newcomer")
    }
    assert led  # it leads in blob 0's cluster
    assert {cl for cl, m in rank_one.items() if m == "newcomer"} == led


def test_filters_formats_and_errors(synthetic, syn_url):
    one = json.loads(run_cli("profile", "--cluster", "2", "--json").stdout)
    assert {p["cluster"] for p in one} == {2} and [p["rank"] for p in one] == list(
        range(1, len(one) + 1)
    )
    by_model = get_profiles(model=MODELS[3], url=syn_url)
    assert {e.model for e in by_model} == {MODELS[3]} and len(by_model) == 4
    csv_out = run_cli("profile", "--model", MODELS[0], "--csv").stdout.splitlines()
    assert csv_out[0].startswith("cluster,cluster_size,model,n,mean_score") and len(csv_out) == 5
    table = run_cli("profile", "--cluster", "0").stdout
    assert "wilson_low" in table and MODELS[0] in table
    with pytest.raises(InputError, match="clusters 0..3"):
        get_profiles(cluster=9, url=syn_url)
    with pytest.raises(NotFound, match="not in the pool"):
        get_profiles(model="nope", url=syn_url)
    assert isinstance(run_cli_error("profile", "--model", "nope"), NotFound)


def test_no_active_clustering_is_a_clear_error(pg_admin_url, template_db):
    with (
        throwaway_database(pg_admin_url, template=template_db) as url,
        pytest.raises(StoreStateError, match="avengers recluster"),
    ):
        get_profiles(url=url)


def test_heatmap_groups_clusters_by_winner(synthetic, syn_url, tmp_path):
    entries = get_profiles(url=syn_url)
    grid = profile_matrix(entries)
    order = [grid.models.index(w) for w in grid.winners]
    assert order == sorted(order)
    out = run_cli("profile", "--plot", str(tmp_path / "heat.png")).stdout
    assert "heatmap written to" in out
    png = (tmp_path / "heat.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert plot_profiles(tmp_path / "sub" / "again.png", entries).exists()
