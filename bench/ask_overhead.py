"""Client overhead of ``AvengersClient.ask`` over a direct call to the same OpenAI-compatible server
(xllamacpp serving SmolLM2-135M in-process, started by tests/llm_server.serve_smol): same prompt
(the ensemble's prompt for the task type), same n, same temperature, small max_tokens so the
generation time is stable. ask and the direct call are timed round-robin per iteration.

added = median(ask) - median(direct); the embedding of the question (MiniLM, inside ask) is timed
separately — alone, and in the loop right after a generation (as inside ask: llama.cpp's threads
in this process may still be spinning) — as is a vector route through the client's pool, so
added - embedding is what the store costs: routing, prompt, extraction and voting, and the
route-log write.

Example:
    .venv/bin/python bench/ask_overhead.py
    .venv/bin/python bench/ask_overhead.py --n 20 --samples 1 4 --max-tokens 8
    .venv/bin/python bench/ask_overhead.py --torch-threads 1   # -> ask_overhead_torch1.json
"""

from __future__ import annotations

import os
import sys
import time

from _common import (
    REPO,
    build_store,
    describe_server,
    finish,
    fresh_database,
    median,
    parser,
    say,
    serve_k,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO))  # tests/llm_server.py holds the one way to start the server

from avengers_store.answering.chat import ChatClient  # noqa: E402
from avengers_store.answering.prompts import DEFAULT_PROMPTS  # noqa: E402
from avengers_store.client import AvengersClient  # noqa: E402
from avengers_store.store import connections  # noqa: E402
from avengers_store.testing import serve_smol  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "Which planet is known as the red planet?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
]
TASK = "text"


def measure(client: AvengersClient, chat: ChatClient, endpoint, samples: int, n: int, mt: int):
    # ask's strategies fix the temperature: "direct" is n=1 at T=0; self-consistency samples at
    # T=0.7, so the direct call uses the same T for the same work.
    strategy = "direct" if samples == 1 else "self-consistency"
    temperature = 0.0 if samples == 1 else 0.7
    ask_ms, direct_ms, embed_ms = [], [], []
    embedder = client.embedder()
    for i in range(n + 2):  # the first two warm up both paths
        # llama.cpp reuses a cached prompt prefix: a numbered question per call, and alternating
        # order, so neither path gets the other's prompt for free.
        base = QUESTIONS[i % len(QUESTIONS)]
        ask_q, direct_q = f"{base} (#{2 * i})", f"{base} (#{2 * i + 1})"
        messages = DEFAULT_PROMPTS.messages(TASK, direct_q)

        def ask(ask_q: str = ask_q) -> float:
            t0 = time.perf_counter()
            answer = client.ask(ask_q, samples=samples, strategy=strategy, task_type=TASK)
            assert len(answer.samples) == samples
            return (time.perf_counter() - t0) * 1000

        def direct(messages: list = messages) -> float:
            t0 = time.perf_counter()
            batch = chat.sample(endpoint, messages, samples, temperature=temperature, max_tokens=mt)
            assert len(batch.texts) == samples
            return (time.perf_counter() - t0) * 1000

        if i % 2:
            d, a = direct(), ask()
        else:
            a, d = ask(), direct()
        # The question's embedding under the same conditions as inside ask: right after a
        # generation, while llama.cpp's threads may still be spinning in this process.
        t0 = time.perf_counter()
        embedder.embed([ask_q])
        e = (time.perf_counter() - t0) * 1000
        if i >= 2:
            ask_ms.append(a)
            direct_ms.append(d)
            embed_ms.append(e)
    diffs = [a - d for a, d in zip(ask_ms, direct_ms, strict=True)]
    return {
        "samples": samples,
        "strategy": strategy,
        "temperature": temperature,
        "ask_ms_p50": round(median(ask_ms), 1),
        "direct_ms_p50": round(median(direct_ms), 1),
        "added_ms": round(median(ask_ms) - median(direct_ms), 1),
        "added_ms_paired_median": round(median(diffs), 1),
        "embed_after_generation_ms_p50": round(median(embed_ms), 1),
        "n": n,
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=15, help="timed asks per setting")
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 4], help="n sampled per ask")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with fresh_database("ask") as url, serve_smol() as endpoint:
        server = describe_server(url)
        with connections.connect(url) as conn:
            store = build_store(conn, n_queries=2000, n_blobs=16, n_models=4, seed=args.seed)
            conn.execute(
                "UPDATE avengers.models SET endpoint = %s, served_name = %s",
                (endpoint.base_url, endpoint.served_name),
            )
            serve_k(conn, store, 16, args.seed)
            conn.commit()
        say(f"server: SmolLM2-135M via xllamacpp at {endpoint.base_url}; store k=16, 4 models")
        with (
            ChatClient(max_concurrency=4) as chat,
            AvengersClient(url, chat=chat, max_tokens=args.max_tokens, pool_size=2) as client,
        ):
            embedder = client.embedder()
            embedder.embed(["warm up"])
            embed_ms = []
            for i in range(20):
                t0 = time.perf_counter()
                embedder.embed([QUESTIONS[i % len(QUESTIONS)]])
                embed_ms.append((time.perf_counter() - t0) * 1000)
            vector = embedder.embed([QUESTIONS[0]])[0]
            route_ms = []
            for _ in range(200):
                t0 = time.perf_counter()
                client.route(vector, 3, require_endpoint=True)
                route_ms.append((time.perf_counter() - t0) * 1000)
            embed_p50 = round(median(embed_ms), 2)
            route_p50 = round(median(route_ms), 3)
            say(f"embedding one question: p50 {embed_p50:.1f} ms; vector route: {route_p50} ms")
            results = []
            for samples in args.samples:
                r = measure(client, chat, endpoint, samples, args.n, args.max_tokens)
                r["added_minus_embedding_ms"] = round(
                    r["added_ms"] - r["embed_after_generation_ms_p50"], 1
                )
                results.append(r)
                say(
                    f"n={samples} ({r['strategy']}, T={r['temperature']}, max_tokens "
                    f"{args.max_tokens}): ask p50 {r['ask_ms_p50']:.0f} ms, direct "
                    f"{r['direct_ms_p50']:.0f} ms -> added {r['added_ms']:.1f} ms (paired median "
                    f"{r['added_ms_paired_median']:.1f}); embedding in the loop "
                    f"{r['embed_after_generation_ms_p50']:.1f} ms; without it "
                    f"{r['added_minus_embedding_ms']:.1f} ms"
                )
    finish(
        f"ask_overhead_torch{args.torch_threads}" if args.torch_threads else "ask_overhead",
        {
            "llm": "SmolLM2-135M-Instruct Q4_1 via xllamacpp, 1 thread, 4 slots",
            "max_tokens": args.max_tokens,
            "torch_threads": torch.get_num_threads(),
            "embed_one_ms_p50": embed_p50,
            "route_vector_ms_p50": route_p50,
            "by_samples": results,
            "server": server,
        },
    )


if __name__ == "__main__":
    main()
