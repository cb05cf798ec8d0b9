"""Embedding throughput of the default embedder (all-MiniLM-L6-v2 via
``embedders.get_embedder()``, CPU, max_seq_length 128): texts/s for short (~10 words) and long
(~120 words) texts in batches, and the latency of embedding one short text (what ``ask`` pays per
question), with torch's default thread count and with 1 thread. Texts are real questions from ../shared/data when present, synthetic otherwise.

Example:
    .venv/bin/python bench/embedding_throughput.py
    .venv/bin/python bench/embedding_throughput.py --short 1024 --long 256 --repeat 3
"""

from __future__ import annotations

import os
import time

import numpy as np
from _common import SHARED_DATA, Timer, finish, median, parser, say, summary_us

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from avengers_store.calibration.embedders import get_embedder  # noqa: E402


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


def throughput(embedder, texts: list[str], repeat: int, batch_size: int) -> dict:
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        vectors = embedder.embed(texts, batch_size=batch_size)
        rates.append(len(texts) / (time.perf_counter() - t0))
        assert vectors.shape == (len(texts), embedder.dimension)
    words = float(np.mean([len(t.split()) for t in texts]))
    return {
        "texts": len(texts),
        "mean_words": round(words, 1),
        "texts_per_s": round(median(rates), 1),
        "runs": [round(r, 1) for r in rates],
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--short", type=int, default=256, help="short texts per run")
    ap.add_argument("--long", type=int, default=64, help="long texts per run")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--single", type=int, default=30, help="one-text calls timed")
    ap.add_argument(
        "--threads", type=int, nargs="*", default=[1], help="torch thread counts also measured"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    short, long, source = pick_texts(args.short, args.long, args.seed)
    say(f"texts: {source}")
    embedder = get_embedder()
    with Timer() as load:
        embedder.embed(["warm up the model"])
    say(f"{embedder.name}: loaded in {load.seconds:.1f} s")
    import torch

    default_threads = torch.get_num_threads()
    by_threads = []
    for threads in dict.fromkeys([default_threads, *args.threads]):
        # torch's intra-op threads spin-wait: on a shared 2-core machine fewer can be faster.
        torch.set_num_threads(threads)
        short_fig = throughput(embedder, short, args.repeat, args.batch_size)
        long_fig = throughput(embedder, long, args.repeat, args.batch_size)
        single = []
        for i in range(args.single):
            t0 = time.perf_counter()
            embedder.embed([short[i % len(short)]])
            single.append(time.perf_counter() - t0)
        one = summary_us(single)
        by_threads.append(
            {
                "torch_threads": threads,
                "short": short_fig,
                "long": long_fig,
                "single_short_ms": {
                    k.removesuffix("_us"): round(v / 1000, 2) for k, v in one.items() if k != "n"
                },
            }
        )
        say(
            f"torch threads {threads}: short (~{short_fig['mean_words']:.0f} words) "
            f"{short_fig['texts_per_s']:,.0f} texts/s, long (~{long_fig['mean_words']:.0f} words) "
            f"{long_fig['texts_per_s']:,.0f} texts/s, one short text p50 "
            f"{one['p50_us'] / 1000:.1f} ms (p99 {one['p99_us'] / 1000:.1f} ms)"
        )
    torch.set_num_threads(default_threads)
    head = by_threads[0]
    finish(
        "embedding_throughput",
        {
            "embedder": embedder.name,
            "texts_source": source,
            "batch_size": args.batch_size,
            "load_seconds": round(load.seconds, 2),
            "default_threads": default_threads,
            "short_texts_per_s": head["short"]["texts_per_s"],
            "long_texts_per_s": head["long"]["texts_per_s"],
            "single_short_ms_p50": head["single_short_ms"]["p50"],
            "by_threads": by_threads,
        },
    )


if __name__ == "__main__":
    main()
