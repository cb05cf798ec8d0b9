"""Embedding speed of each backend of the default embedder in one run: sentence-transformers on
torch, ONNX Runtime fp32 (the default where onnxruntime is installed: same vectors), ONNX
Runtime int8 (``all-MiniLM-L6-v2-int8``, its own space) and, with ``--model2vec DIR``, a static
Model2Vec model. CPU, max_seq_length 128. For each: texts/s for short (~10 words) and long
(~120 words) texts in batches, and the latency of embedding one short text (what ``ask`` pays
per question), with the runtime's default thread count and with 1 thread. One-text calls and
batch repeats are timed round-robin across backends so machine noise falls on all alike; figures
are also given as ratios to torch's in the same run. Texts are real questions from ../shared/data when
present, synthetic otherwise.

Example:
    .venv/bin/python bench/embedding_throughput.py
    .venv/bin/python bench/embedding_throughput.py --short 1024 --long 256 --repeat 3
    .venv/bin/python bench/embedding_throughput.py --model2vec minilm-m2v
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from _common import SHARED_DATA, Timer, finish, median, parser, say, summary_us

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from avengers_store.calibration.embedders import (  # noqa: E402
    MINILM,
    MINILM_INT8,
    SentenceTransformerEmbedder,
    get_embedder,
)


def real_questions() -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for path in sorted(SHARED_DATA.glob("*/*.parquet")):
        column = pq.read_table(path, columns=["question"]).column("question").to_pylist()
        texts.extend(t for t in column if isinstance(t, str) and t.strip())
    return texts


def pick_texts(n_short: int, n_long: int, seed: int) -> tuple[list[str], list[str], str]:
    rng = np.random.default_rng(seed)
    questions = real_questions()
    source = "real questions from ../shared/data" if questions else "synthetic"
    if not questions:
        words = [f"word{i}" for i in range(5000)]
        questions = [" ".join(rng.choice(words, int(rng.integers(5, 40)))) for _ in range(5000)]
    words = [q.split() for q in questions]
    short = [q for q, w in zip(questions, words, strict=True) if 8 <= len(w) <= 12]
    long = [q for q, w in zip(questions, words, strict=True) if 100 <= len(w) <= 140]
    if len(long) < n_long:
        # Few questions are that long: join consecutive random questions up to ~120 words.
        pool = [w for w in words if len(w) >= 5]
        while len(long) < n_long:
            acc: list[str] = []
            while len(acc) < 120:
                acc.extend(pool[int(rng.integers(len(pool)))])
            long.append(" ".join(acc[:120]))
        source += " (long texts: questions joined to 120 words where too few are that long)"
    short = [short[i] for i in rng.permutation(len(short))[:n_short]]
    long = [long[i] for i in rng.permutation(len(long))[:n_long]]
    return short, long, source


def rate(embedder, texts: list[str], batch_size: int) -> float:
    t0 = time.perf_counter()
    vectors = embedder.embed(texts, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    assert vectors.shape == (len(texts), embedder.dimension)
    return len(texts) / seconds


def throughput(embedders: dict, texts: list[str], repeat: int, batch_size: int) -> dict:
    """texts/s of each embedder, the repeats round-robin across embedders."""
    rates: dict[str, list[float]] = {label: [] for label in embedders}
    for _ in range(repeat):
        for label, emb in embedders.items():
            rates[label].append(rate(emb, texts, batch_size))
    words = float(np.mean([len(t.split()) for t in texts]))
    return {
        label: {
            "texts": len(texts),
            "mean_words": round(words, 1),
            "texts_per_s": round(median(r), 1),
            "runs": [round(x, 1) for x in r],
        }
        for label, r in rates.items()
    }


def backends(model2vec: str | None) -> dict:
    """Label -> a fresh embedder (each loads its own engine)."""
    out = {
        "torch": lambda: SentenceTransformerEmbedder(MINILM, backend="torch", dimension=384),
        "onnx-fp32": lambda: SentenceTransformerEmbedder(MINILM, backend="onnx", dimension=384),
        "onnx-int8": lambda: get_embedder(MINILM_INT8),
    }
    if model2vec:
        out["model2vec"] = lambda: get_embedder(f"model2vec:{model2vec}")
    return out


def single_latency(embedders: dict, texts: list[str], n: int) -> dict[str, dict]:
    """One short text at a time, round-robin across the embedders."""
    times: dict[str, list[float]] = {label: [] for label in embedders}
    for i in range(n + 5):
        for label, emb in embedders.items():
            t0 = time.perf_counter()
            emb.embed([texts[i % len(texts)]])
            if i >= 5:  # warm-up calls are not counted
                times[label].append(time.perf_counter() - t0)
    return {
        label: {
            k.removesuffix("_us"): round(v / 1000, 2) for k, v in summary_us(t).items() if k != "n"
        }
        for label, t in times.items()
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--short", type=int, default=256, help="short texts per run")
    ap.add_argument("--long", type=int, default=64, help="long texts per run")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--single", type=int, default=60, help="one-text calls timed per backend")
    ap.add_argument("--model2vec", default=None, help="a Model2Vec model directory to measure too")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    short, long, source = pick_texts(args.short, args.long, args.seed)
    say(f"texts: {source}")
    import torch

    default_threads = torch.get_num_threads()
    makers = backends(args.model2vec)
    loaded: dict[str, dict] = {}
    for threads in (None, 1):
        embedders = {}
        for label, make in makers.items():
            emb = make()
            with Timer() as load:
                emb.load()
                if threads:
                    emb.set_threads(threads)
                elif label == "torch":
                    torch.set_num_threads(default_threads)
                emb.embed(["warm up the model"])
            embedders[label] = emb
            # A Model2Vec model is named by its directory's name: results name no machine path.
            name = f"model2vec:{Path(args.model2vec).name}" if label == "model2vec" else emb.name
            loaded.setdefault(label, {"name": name, "load_seconds": round(load.seconds, 2)})
        tag = f"{threads} thread" if threads else "default threads"
        # torch's thread count is process-wide: the one this pass set holds for all of it.
        torch.set_num_threads(threads or default_threads)
        one = single_latency(embedders, short, args.single)
        short_fig = throughput(embedders, short, args.repeat, args.batch_size)
        long_fig = throughput(embedders, long, args.repeat, args.batch_size)
        for label in embedders:
            loaded[label][tag] = {
                "short": short_fig[label],
                "long": long_fig[label],
                "single_short_ms": one[label],
            }
        base = loaded["torch"][tag]
        for label in embedders:
            fig = loaded[label][tag]
            fig["vs_torch"] = {
                "short_texts_per_s": round(
                    fig["short"]["texts_per_s"] / base["short"]["texts_per_s"], 2
                ),
                "long_texts_per_s": round(
                    fig["long"]["texts_per_s"] / base["long"]["texts_per_s"], 2
                ),
                "single_short_p50_speedup": round(
                    base["single_short_ms"]["p50"] / fig["single_short_ms"]["p50"], 2
                ),
            }
            say(
                f"{label:>10} ({tag}): short {fig['short']['texts_per_s']:,.0f} texts/s "
                f"(x{fig['vs_torch']['short_texts_per_s']:.2f} torch), long "
                f"{fig['long']['texts_per_s']:,.0f} texts/s (x{fig['vs_torch']['long_texts_per_s']:.2f}), "
                f"one short text p50 {fig['single_short_ms']['p50']:.1f} ms "
                f"(x{fig['vs_torch']['single_short_p50_speedup']:.2f} faster; p99 "
                f"{fig['single_short_ms']['p99']:.1f} ms)"
            )
    torch.set_num_threads(default_threads)
    default = get_embedder()
    default.load()
    finish(
        "embedding_throughput",
        {
            "default_embedder": default.name,
            "default_runtime": default.runtime,
            "texts_source": source,
            "batch_size": args.batch_size,
            "torch_default_threads": default_threads,
            "backends": loaded,
        },
    )


if __name__ == "__main__":
    main()
