"""What the gateway (``avengers serve``) costs, on loopback only, bounded in requests and time.

(a) ``POST /v1/chat/completions`` (model "avengers", one sample) over a direct call to the same
    llama.cpp server (xllamacpp serving SmolLM2-135M in this process) with the same messages,
    temperature 0 and max_tokens: at 1, 8 and 32 concurrent clients, each client alternating the
    two calls (order swapped every pair); the figure is the distribution of paired differences
    (p50, p99). The two calls of a pair carry the same question under different tags, so neither
    finds the other's prompt in llama.cpp's prompt cache (an identical second prompt is ~100 ms
    faster, which made the differences bimodal). The gateway embeds the question (included); its
    mean embedding time, and its mean time per request outside the upstream call, are read from
    its own /metrics. A control run pairs direct with direct in the same way: the spread the
    pairing shows when the two calls are the same.
(b) ``POST /v1/route`` requests/s at 32 concurrent clients, against a floor measured in the same
    run: the same app and framework answering one ``SELECT 1`` from the same pool
    (bench/gateway_app.py adds that route). (c) with the embedding excluded (a vector in the
    request) and included (a text). Rounds alternate floor / vector / text; medians over rounds.

(d) The gateway's own tail: ``POST /v1/chat/completions`` in front of an upstream that answers
    at once (bench/instant_upstream.py, its own process; no model queue), closed loop at 1, 8,
    32 and 128 clients, against a floor in the same run: a bare Starlette proxy served the same
    way with the gateway's own HTTP client forwarding to the same upstream. requests/s against
    the floor's, p50 and p99: the gateway with the embedding included (its real embedder) and
    excluded (every text at one fixed vector, computed on the event loop: the embedding
    thread's hop is excluded with the embedding), and the excluded one on two worker processes.
    Targets: p99 <= 3x p50 at 32 clients; >= 0.5x the floor's requests/s, embedding excluded;
    two workers >= 1.6x one. ``--only-tail`` runs it alone (no SmolLM2 needed).

The gateway runs as its own process (bench/gateway_app.py = the app of ``avengers serve``), the
load comes from httpx in this one ((d): from aiohttp). Targets: (a) p50 overhead <= 5 ms + the embedding at one
client, p99 overhead <= 3x p50 at 32; (b) vector >= 0.5x the floor.

Example:
    .venv/bin/python bench/gateway.py
    .venv/bin/python bench/gateway.py --pairs 20 --route-requests 400 --rounds 3
    .venv/bin/python bench/gateway.py --only-tail --tail-clients 1 8 32 128
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time

import aiohttp
import httpx
import numpy as np
from _common import (
    BENCH,
    build_store,
    describe_server,
    finish,
    fresh_database,
    median,
    parser,
    percentile,
    say,
    serve_k,
)

from avengers_store.store import connections
from avengers_store.testing import free_port, serve_smol

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "How many legs does a spider have?",
    "What is 12 times 12?",
    "Which planet is closest to the sun?",
    "Who wrote Romeo and Juliet?",
]


def start_gateway(url: str | None, max_tokens: int, *extra: str) -> tuple[subprocess.Popen, str]:
    """bench/gateway_app.py in a process of its own (``extra``: its other options), once ready."""
    port = free_port()
    # A file, not a pipe nobody reads: a gateway that logs a lot would block on a full pipe.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the process)
    store = ["--url", url] if url else []
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "gateway_app.py"), "--port", str(port), *store,
         "--max-tokens", str(max_tokens), *extra],
        stdout=subprocess.DEVNULL, stderr=log, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the gateway exited: {log.read()[-4000:]}")
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the gateway did not become ready in 120 s")


def totals(base: str) -> dict[str, float]:
    """Seconds and counts the gateway reports so far on its /metrics: the embed and upstream
    stages and /v1/chat/completions requests (keys like ``embed_sum``, ``request_count``)."""
    text = httpx.get(base + "/metrics").text
    out: dict[str, float] = {}
    for name, label in (("embed", 'stage="embed"'), ("upstream", 'stage="upstream"'),
                        ("request", 'path="/v1/chat/completions"')):  # fmt: skip
        for kind in ("sum", "count"):
            metric = "stage" if name != "request" else "request"
            found = re.search(rf"avengers_gateway_{metric}_seconds_{kind}\{{{label}\}} (\S+)", text)
            out[f"{name}_{kind}"] = float(found.group(1)) if found else 0.0
    return out


def inside_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Means per request between two readings (ms): the embedding (``embed``) and the time the
    gateway held a request without waiting for llama.cpp (``gateway_side``: request time
    minus upstream time, as the gateway itself measured them)."""
    d = {k: after[k] - before[k] for k in after}
    embed = d["embed_sum"] / d["embed_count"] * 1000.0 if d["embed_count"] else float("nan")
    side = (
        (d["request_sum"] - d["upstream_sum"]) / d["request_count"] * 1000.0
        if d["request_count"]
        else float("nan")
    )
    return {"embed": round(embed, 1), "gateway_side": round(side, 1)}


async def overhead(
    base: str, llm: str, clients: int, pairs: int, max_tokens: int, *, control: bool = False
) -> dict:
    """Paired (gateway - direct) latencies with ``clients`` concurrent clients. ``control``:
    both calls of a pair go direct (an A/A run: what the pairing itself measures)."""
    diffs: list[float] = []
    gateway_ms: list[float] = []
    direct_ms: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=2 * clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:

        async def call(url: str, body: dict) -> float:
            t0 = time.perf_counter()
            response = await http.post(url, json=body)
            response.raise_for_status()
            return (time.perf_counter() - t0) * 1000.0

        async def client(c: int) -> None:
            nonlocal errors
            for i in range(pairs + 1):  # the first pair warms the connections up
                question = QUESTIONS[(c + i) % len(QUESTIONS)]
                # Each call gets its own tag before the question: a second call with the first's
                # exact prompt would find it whole in llama.cpp's prompt cache (~100 ms faster).
                tagged = {t: f"[{t}{c}-{i}] {question}" for t in ("g", "d")}
                via_model = "smol" if control else "avengers"
                bodies = {
                    t: {
                        "model": m,
                        "messages": [{"role": "user", "content": tagged[t]}],
                        "temperature": 0.0,
                        "max_tokens": max_tokens,
                    }
                    for t, m in (("g", via_model), ("d", "smol"))
                }
                via_url = llm + "/chat/completions" if control else base + "/v1/chat/completions"
                via = (via_url, bodies["g"])
                direct = (llm + "/chat/completions", bodies["d"])
                try:
                    if (c + i) % 2:
                        d, g = await call(*direct), await call(*via)
                    else:
                        g, d = await call(*via), await call(*direct)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if i:
                    diffs.append(g - d)
                    gateway_ms.append(g)
                    direct_ms.append(d)

        await asyncio.gather(*(client(c) for c in range(clients)))
    return {
        "clients": clients,
        "pairs": len(diffs),
        "errors": errors,
        "overhead_ms_p50": round(percentile(diffs, 50), 2),
        "overhead_ms_p99": round(percentile(diffs, 99), 2),
        "gateway_ms_p50": round(percentile(gateway_ms, 50), 1),
        "direct_ms_p50": round(percentile(direct_ms, 50), 1),
    }


async def throughput(url: str, bodies: list[dict | None], clients: int) -> float:
    """Requests/s answering ``bodies`` (None: GET) with ``clients`` concurrent clients."""
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        queue = list(range(len(bodies)))

        async def client() -> None:
            while queue:
                body = bodies[queue.pop()]
                if body is None:
                    response = await http.get(url)
                else:
                    response = await http.post(url, json=body)
                response.raise_for_status()

        await asyncio.gather(*(client() for _ in range(clients)))  # warm-up round
        queue = list(range(len(bodies)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return len(bodies) / (time.perf_counter() - t0)


def start_upstream() -> tuple[subprocess.Popen, str]:
    """bench/instant_upstream.py in a process of its own; its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "instant_upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(base + "/chat/completions", json={}, timeout=2).raise_for_status()
            return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the instant upstream did not answer in 30 s")


async def closed_loop(url: str, clients: int, requests: int) -> dict:
    """``clients`` concurrent clients sending chat requests back to back until ``requests`` are
    answered (after one warm-up request each): requests/s and latency percentiles (ms). The load
    comes from aiohttp: httpx's async pool slows down as concurrency grows (encode/httpx#3215),
    which at 32 clients made the load generator, not the server, set the pace and the tail."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as http:

        async def one(i: int) -> float:
            body = {
                "model": "avengers",
                "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} #{i}"}],
                "max_tokens": 4,
            }
            t0 = time.perf_counter()
            async with http.post(url, json=body) as response:
                response.raise_for_status()
                await response.read()
            return (time.perf_counter() - t0) * 1000.0

        await asyncio.gather(*(one(i) for i in range(clients)))  # connections, caches
        left = requests

        async def client() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                try:
                    latencies.append(await one(left))
                except aiohttp.ClientError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - t0
    return {
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "errors": errors,
    }


def tail_phase(url: str, args) -> dict:
    """The gateway's own latency and throughput in front of an upstream that answers at once
    (bench/instant_upstream.py), against a bare proxy to the same upstream (the floor), at each
    client count: the gateway with its real embedder (embedding included), with a fixed one
    (excluded), and the excluded one again on two worker processes. Rounds alternate the
    servers; medians over rounds."""
    upstream, upstream_url = start_upstream()
    with connections.connect(url) as conn:
        conn.execute(
            "UPDATE avengers.models SET endpoint = %s, served_name = %s", (upstream_url, "instant")
        )
        conn.commit()
    servers = {
        "floor": ("--floor-upstream", upstream_url),
        "excluded": ("--fixed-embedding",),
        "excluded_2_workers": ("--fixed-embedding", "--workers", "2"),
        "included": (),
    }
    running: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for name, extra in servers.items():
            store = None if name == "floor" else url
            running[name] = start_gateway(store, args.max_tokens, *extra)
        say(f"tail phase: instant upstream at {upstream_url}; " + ", ".join(
            f"{name} {base}" for name, (_, base) in running.items()))  # fmt: skip
        by_clients = []
        for clients in args.tail_clients:
            rounds: dict[str, list[dict]] = {name: [] for name in servers}
            for _ in range(args.tail_rounds):
                for name, (_, base) in running.items():
                    # The embedding bounds the included server's rate: fewer requests there.
                    n = (
                        max(args.tail_requests // 4, 2 * clients)
                        if name == "included"
                        else max(args.tail_requests, 4 * clients)
                    )
                    rounds[name].append(
                        asyncio.run(closed_loop(base + "/v1/chat/completions", clients, n))
                    )
            row: dict = {"clients": clients}
            for name, rs in rounds.items():
                row[name] = {
                    k: round(median([r[k] for r in rs]), 2) for k in ("rps", "p50_ms", "p99_ms")
                }
                row[name]["errors"] = sum(r["errors"] for r in rs)
            floor = row["floor"]["rps"]
            row["ratio_excluded"] = round(row["excluded"]["rps"] / floor, 3)
            row["ratio_included"] = round(row["included"]["rps"] / floor, 3)
            row["workers_2_over_1"] = round(
                row["excluded_2_workers"]["rps"] / row["excluded"]["rps"], 3
            )
            row["p99_over_p50_excluded"] = round(
                row["excluded"]["p99_ms"] / row["excluded"]["p50_ms"], 2
            )
            row["p99_over_p50_included"] = round(
                row["included"]["p99_ms"] / row["included"]["p50_ms"], 2
            )
            by_clients.append(row)
            say(
                f"(d) {clients:>3} clients: floor {floor:.0f}/s (p50 {row['floor']['p50_ms']:.1f}"
                f" ms, p99 {row['floor']['p99_ms']:.1f}); gateway, embedding excluded "
                f"{row['excluded']['rps']:.0f}/s ({row['ratio_excluded']:.2f}x; p50 "
                f"{row['excluded']['p50_ms']:.1f} ms, p99 {row['excluded']['p99_ms']:.1f}), two "
                f"workers {row['excluded_2_workers']['rps']:.0f}/s "
                f"({row['workers_2_over_1']:.2f}x one); included {row['included']['rps']:.0f}/s "
                f"({row['ratio_included']:.2f}x; p50 {row['included']['p50_ms']:.1f} ms, p99 "
                f"{row['included']['p99_ms']:.1f})"
            )
    finally:
        for process, _ in running.values():
            process.terminate()
        for process, _ in running.values():
            process.wait(timeout=60)
        upstream.terminate()
        upstream.wait(timeout=30)
    at32 = next((r for r in by_clients if r["clients"] == 32), by_clients[-1])
    return {
        "by_clients": by_clients,
        "met": {
            "p99_within_3x_p50_at_32": at32["p99_over_p50_excluded"] <= 3.0,
            "half_the_floor_excluded_at_32": at32["ratio_excluded"] >= 0.5,
            "two_workers_1_6x_at_32": at32["workers_2_over_1"] >= 1.6,
        },
        "cores": os.cpu_count(),
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--pairs", type=int, nargs=3, default=[60, 6, 3],
                    help="pairs per client at 1, 8 and 32 clients")  # fmt: skip
    ap.add_argument("--route-requests", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tail-clients", type=int, nargs="+", default=[1, 8, 32, 128],
                    help="client counts of the tail phase (d)")  # fmt: skip
    ap.add_argument("--tail-requests", type=int, default=600,
                    help="requests per measurement in (d) (a quarter with the embedding)")  # fmt: skip
    ap.add_argument("--tail-rounds", type=int, default=2)
    ap.add_argument("--only-tail", action="store_true",
                    help="run phase (d) alone, written to bench/results/gateway_tail.json")  # fmt: skip
    args = ap.parse_args()
    if args.only_tail:
        with fresh_database("gateway") as url:
            server = describe_server(url)
            with connections.connect(url) as conn:
                store = build_store(conn, n_queries=2000, n_blobs=16, n_models=4, seed=args.seed)
                serve_k(conn, store, 16, args.seed)
                conn.commit()
            tail = tail_phase(url, args)
        finish("gateway_tail", {**tail, "server": server})
        return
    with fresh_database("gateway") as url, serve_smol() as endpoint:
        server = describe_server(url)
        with connections.connect(url) as conn:
            store = build_store(conn, n_queries=2000, n_blobs=16, n_models=4, seed=args.seed)
            conn.execute(
                "UPDATE avengers.models SET endpoint = %s, served_name = %s",
                (endpoint.base_url, endpoint.served_name),
            )
            serve_k(conn, store, 16, args.seed)
            conn.commit()
        rng = np.random.default_rng(args.seed)
        vectors = store.vectors[rng.choice(len(store.vectors), 64, replace=False)].tolist()
        process, base = start_gateway(url, args.max_tokens)
        try:
            say(f"gateway {base} (bench/gateway_app.py) in front of SmolLM2 at {endpoint.base_url}")
            by_clients = []
            for clients, pairs in zip((1, 8, 32), args.pairs, strict=True):
                before = totals(base)
                r = asyncio.run(overhead(base, endpoint.base_url, clients, pairs, args.max_tokens))
                inside = inside_ms(before, totals(base))
                r["embed_ms_mean"] = inside["embed"]
                r["gateway_side_ms_mean"] = inside["gateway_side"]
                aa = asyncio.run(
                    overhead(base, endpoint.base_url, clients, pairs, args.max_tokens, control=True)
                )
                r["control"] = {k: aa[k] for k in ("pairs", "errors", "overhead_ms_p50",
                                                   "overhead_ms_p99")}  # fmt: skip
                by_clients.append(r)
                say(
                    f"(a) {clients:>2} clients, {r['pairs']} pairs: overhead p50 "
                    f"{r['overhead_ms_p50']:.1f} ms, p99 {r['overhead_ms_p99']:.1f} ms (gateway "
                    f"p50 {r['gateway_ms_p50']:.0f} ms, direct {r['direct_ms_p50']:.0f} ms; "
                    f"inside the gateway, mean: embedding {r['embed_ms_mean']:.1f} ms, all but "
                    f"the upstream call {r['gateway_side_ms_mean']:.1f} ms; {r['errors']} errors)"
                    f"; direct vs direct: p50 {aa['overhead_ms_p50']:.1f} ms, p99 "
                    f"{aa['overhead_ms_p99']:.1f} ms"
                )
            embed_ms = by_clients[0]["embed_ms_mean"]
            n = args.route_requests
            floor_bodies: list[dict | None] = [None] * n
            vector_bodies = [{"vector": vectors[i % 64], "top_n": 3} for i in range(n)]
            text_bodies = [
                {"input": f"{QUESTIONS[i % len(QUESTIONS)]} #{i}", "top_n": 3} for i in range(n)
            ]
            rounds: dict[str, list[float]] = {"floor": [], "vector": [], "text": []}
            for _ in range(args.rounds):
                rounds["floor"].append(
                    asyncio.run(throughput(base + "/bench/select1", floor_bodies, 32))
                )
                rounds["vector"].append(
                    asyncio.run(throughput(base + "/v1/route", vector_bodies, 32))
                )
                rounds["text"].append(asyncio.run(throughput(base + "/v1/route", text_bodies, 32)))
            rps = {k: round(median(v), 1) for k, v in rounds.items()}
            say(
                f"(b) /v1/route at 32 clients: vector {rps['vector']:.0f}/s, text "
                f"{rps['text']:.0f}/s; floor (SELECT 1 through the same app) {rps['floor']:.0f}/s"
                f" -> ratios {rps['vector'] / rps['floor']:.2f} / {rps['text'] / rps['floor']:.2f}"
            )
        finally:
            process.terminate()
            process.wait(timeout=60)
        tail = tail_phase(url, args)
    one, _, many = by_clients
    met_a1 = one["overhead_ms_p50"] <= 5.0 + embed_ms
    met_a32 = many["overhead_ms_p99"] <= 3.0 * many["overhead_ms_p50"]
    met_b = rps["vector"] >= 0.5 * rps["floor"]
    finish(
        "gateway",
        {
            "llm": "SmolLM2-135M-Instruct Q4_1 via xllamacpp, 1 thread, 4 slots",
            "max_tokens": args.max_tokens,
            "overhead": by_clients,
            "embed_ms_mean_1_client": embed_ms,
            "overhead_minus_embedding_ms_p50_1_client": round(one["overhead_ms_p50"] - embed_ms, 2),
            "gateway_side_minus_embedding_ms_mean_1_client": round(
                one["gateway_side_ms_mean"] - embed_ms, 2
            ),
            "route_rps": rps,
            "route_ratio_vector": round(rps["vector"] / rps["floor"], 3),
            "route_ratio_text": round(rps["text"] / rps["floor"], 3),
            "met": {"a_p50_1_client": met_a1, "a_p99_32_clients": met_a32, "b_route": met_b},
            "tail": tail,
            "server": server,
        },
    )


if __name__ == "__main__":
    main()
