"""`avengers demo` on a fresh store: the bundled sample end to end, then an idempotent rerun."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from avengers_store import demo
from avengers_store.calibration import clusterings, reclustering
from avengers_store.store import connections
from avengers_store.testing import LLMROUTER, run_cli


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

    text = run_cli("demo", "--plot", str(plot)).stdout
    assert "already loaded: 14 datasets, 1,508 queries" in text
    assert "(reused)" in text and "every query already has a vector" in text
    assert f"heatmap:    {plot}" in text
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
