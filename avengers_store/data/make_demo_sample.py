"""Rebuild the bundled demo sample from the LLMRouter table (run from a checkout):

    python avengers_store/data/make_demo_sample.py /path/to/llmrouter_9models

Reads ``llmrouter_9models.parquet`` and ``embeddings_minilm.npy`` (all-MiniLM-L6-v2, one row per
parquet row) and writes ``llmrouter_sample.parquet`` and ``llmrouter_sample_minilm.npy`` beside
this file: every test row (500), plus a seeded draw of up to ``PER_TASK`` calibration rows per
task from ``split_clean == 'train'`` (train rows whose text also occurs in test are left out).
Row i of the .npy is the vector of row i of the parquet. Deterministic for a given input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20260101
PER_TASK = 72  # 14 tasks -> ~1,000 calibration rows
KEEP = ["split", "idx", "task_name", "metric", "question", "ground_truth"]
HERE = Path(__file__).resolve().parent


def build(source_dir: Path, out_dir: Path = HERE) -> pd.DataFrame:
    table = pd.read_parquet(source_dir / "llmrouter_9models.parquet")
    vectors = np.load(source_dir / "embeddings_minilm.npy", mmap_mode="r")
    if len(vectors) != len(table):
        raise SystemExit(f"{len(vectors)} vectors for {len(table)} rows")
    rng = np.random.default_rng(SEED)
    picked = list(np.flatnonzero(table["split_clean"].to_numpy() == "test"))
    train = table.index[table["split_clean"] == "train"]
    for task in sorted(table["task_name"].unique()):
        rows = np.asarray(train[table.loc[train, "task_name"] == task])
        take = min(PER_TASK, len(rows))
        picked += list(rng.choice(rows, size=take, replace=False))
    picked = np.sort(np.asarray(picked))
    scores = [c for c in table.columns if c.startswith("score|")]
    sample = table.iloc[picked][KEEP + scores].copy()
    sample["split"] = table["split_clean"].iloc[picked].to_numpy()  # train / test only
    sample["source_row"] = picked  # row in the upstream table, for provenance
    sample = sample.reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample.to_parquet(out_dir / "llmrouter_sample.parquet", index=False, compression="zstd")
    np.save(out_dir / "llmrouter_sample_minilm.npy", np.asarray(vectors[picked], np.float16))
    return sample


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/llmrouter_9models")
    built = build(src)
    print(built.groupby(["task_name", "split"]).size().unstack(fill_value=0))
    print(f"{len(built)} rows written to {HERE}")
