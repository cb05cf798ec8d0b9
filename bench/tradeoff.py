"""What a quality-cost trade-off costs a route: the cost-aware statement against the plain one,
interleaved in one run, single and batch.

Single route (vector in, decision out, on one connection): ``AvengersClient.route(vector,
conn=conn)`` plain, and with ``tradeoff=0.5`` (the query's length sent for its expected cost),
``max_cost`` (a ceiling about half the candidates fit) and ``tradeoff=1`` (the plain ranking with
costs computed), against numpy's argmin + ``SELECT 1`` as the floor, round-robin per iteration;
ratio = trade-off p50 / plain p50. Batch: 10k vectors in one statement
(``AvengersClient.route_many``), plain and with ``tradeoff=0.5``, round-robin per repeat;
ratio = plain queries/s / trade-off queries/s.

The synthetic store (bench/_common.py) gets prices (three tiers) and measured prompt and
completion tokens on half the outcomes, so the cost vectors the trade-off pools are not empty.

Example:
    .venv/bin/python bench/tradeoff.py
    .venv/bin/python bench/tradeoff.py --n 3000 --repeat 3 --batch 10000
"""

from __future__ import annotations

import time

import numpy as np
from _common import (
    Timer,
    build_store,
    describe_server,
    finish,
    freeze_setup_heap,
    fresh_database,
    interleaved,
    median,
    parser,
    say,
    serve_k,
    settle,
    summary_us,
)
from threadpoolctl import threadpool_limits

from avengers_store.client import AvengersClient
from avengers_store.store import connections

PRICES = (0.1, 0.2, 0.9)  # per 1M tokens, model i gets PRICES[i % 3]


def price_and_measure(conn, seed: int) -> None:
    """Prices for every model and measured tokens on half the outcomes, then a refresh."""
    conn.execute(
        "UPDATE avengers.models SET cost_in_per_m = (ARRAY[%s, %s, %s]::float8[])[id %% 3 + 1], "
        "cost_out_per_m = 2 * (ARRAY[%s, %s, %s]::float8[])[id %% 3 + 1]",
        (*PRICES, *PRICES),
    )
    conn.execute("SELECT setseed(%s)", (seed / 1000,))
    conn.execute(
        "UPDATE avengers.outcomes SET tokens_in = 20 + (random() * 40)::int, "
        "tokens_out = 50 + (random() * 400)::int WHERE random() < 0.5"
    )
    conn.execute("CALL avengers.refresh_profiles()")


def measure_single(url: str, queries: np.ndarray, c: np.ndarray, n: int, repeat: int) -> dict:
    conn = connections.connect(url, autocommit=True)
    client = AvengersClient(url, pool_size=1)
    c_sq = np.einsum("ij,ij->i", c, c)
    chars = 120
    try:
        ceiling_d = client.route(queries[0], 8, tradeoff=1.0, prompt_chars=chars, conn=conn)
        costs = sorted(x.expected_cost for x in ceiling_d.candidates)
        ceiling = costs[len(costs) // 2]

        def plain(i: int) -> object:
            return client.route(queries[i], conn=conn)

        def traded(i: int) -> object:
            return client.route(queries[i], tradeoff=0.5, prompt_chars=chars, conn=conn)

        def capped(i: int) -> object:
            return client.route(queries[i], max_cost=ceiling, prompt_chars=chars, conn=conn)

        def priced(i: int) -> object:
            return client.route(queries[i], tradeoff=1.0, prompt_chars=chars, conn=conn)

        def numpy_argmin(i: int) -> object:
            q = queries[i]
            return int(np.argmin(c_sq - 2.0 * (c @ (q / np.sqrt(q @ q)))))

        def select1(i: int) -> object:
            return conn.execute("SELECT 1").fetchone()

        # alpha = 1 with costs computed decides as the plain route (checked before timing).
        for i in range(200):
            a, b = plain(i), priced(i)
            assert [x.model for x in a.candidates] == [x.model for x in b.candidates]
        rounds = []
        for r in range(repeat):
            with threadpool_limits(limits=1, user_api="blas"):
                times = interleaved(
                    {"plain": plain, "tradeoff": traded, "max_cost": capped,
                     "tradeoff_1": priced, "numpy": numpy_argmin, "select1": select1},
                    n, warmup=50 if r == 0 else 10,
                )  # fmt: skip
            p50 = {k: summary_us(v)["p50_us"] for k, v in times.items()}
            floor = p50["numpy"] + p50["select1"]
            rounds.append(
                {
                    **{f"{k}_p50_us": v for k, v in p50.items()},
                    "ratio_tradeoff_to_plain": round(p50["tradeoff"] / p50["plain"], 3),
                    "ratio_max_cost_to_plain": round(p50["max_cost"] / p50["plain"], 3),
                    "ratio_tradeoff_1_to_plain": round(p50["tradeoff_1"] / p50["plain"], 3),
                    "ratio_plain_to_floor": round(p50["plain"] / floor, 2),
                    "ratio_tradeoff_to_floor": round(p50["tradeoff"] / floor, 2),
                }
            )
            say(
                f"  repeat {r + 1}: plain p50 {p50['plain']:.0f} µs, tradeoff 0.5 "
                f"{p50['tradeoff']:.0f}, max_cost {p50['max_cost']:.0f}, tradeoff 1 "
                f"{p50['tradeoff_1']:.0f}; numpy {p50['numpy']:.1f}, SELECT 1 "
                f"{p50['select1']:.0f} -> trade-off / plain "
                f"{rounds[-1]['ratio_tradeoff_to_plain']:.2f}"
            )
    finally:
        client.close()
        conn.close()
    return {key: median([r[key] for r in rounds]) for key in rounds[0]} | {"n": n, "rounds": rounds}


def measure_batch(url: str, queries: np.ndarray, repeat: int) -> dict:
    conn = connections.connect(url, autocommit=True)
    client = AvengersClient(url, pool_size=1)
    chars = [60 + (i % 200) for i in range(len(queries))]
    try:

        def plain() -> int:
            return len(client.route_many(queries, conn=conn))

        def traded() -> int:
            return len(client.route_many(queries, tradeoff=0.5, prompt_chars=chars, conn=conn))

        plain()
        traded()
        times: dict[str, list[float]] = {"plain": [], "tradeoff": []}
        for r in range(repeat):
            for name, fn in (("plain", plain), ("tradeoff", traded)):
                t0 = time.perf_counter()
                assert fn() == len(queries)
                times[name].append(time.perf_counter() - t0)
            say(
                f"  repeat {r + 1}: plain {len(queries) / times['plain'][-1]:,.0f} q/s, "
                f"tradeoff 0.5 {len(queries) / times['tradeoff'][-1]:,.0f} q/s"
            )
    finally:
        client.close()
        conn.close()
    plain_qps = len(queries) / median(times["plain"])
    traded_qps = len(queries) / median(times["tradeoff"])
    return {
        "batch": len(queries),
        "plain_qps": round(plain_qps),
        "tradeoff_qps": round(traded_qps),
        "ratio_plain_to_tradeoff": round(plain_qps / traded_qps, 3),
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--k", type=int, default=64, help="centroids (default 64)")
    ap.add_argument("--n", type=int, default=2000, help="timed single routes per repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10_000, help="vectors per batch statement")
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with fresh_database("tradeoff") as url:
        server = describe_server(url)
        with connections.connect(url) as conn, Timer() as took:
            store = build_store(
                conn, n_queries=10_000, n_blobs=64, n_models=args.models, seed=args.seed
            )
            cid, how = serve_k(conn, store, args.k, args.seed)
            price_and_measure(conn, args.seed)
            conn.commit()
            centroids = np.stack(
                [
                    np.asarray(v.to_numpy(), dtype=np.float32)
                    for (v,) in conn.execute(
                        "SELECT centroid FROM avengers.centroids WHERE clustering_id = %s "
                        "ORDER BY cluster",
                        (cid,),
                    ).fetchall()
                ]
            )
        say(
            f"store: 10,000 queries x {args.models} models, k={args.k} ({how}; {took.seconds:.1f} s)"
        )
        rng = np.random.default_rng(args.seed + 1)
        picks = rng.integers(0, len(store.vectors), max(args.n, args.batch))
        queries = store.vectors[picks] + np.float32(0.02) * rng.standard_normal(
            (len(picks), store.vectors.shape[1]), dtype=np.float32
        )
        settle(url)
        freeze_setup_heap()
        single = measure_single(url, queries[: args.n], centroids, args.n, args.repeat)
        batch = measure_batch(url, queries[: args.batch], args.repeat)
    say(
        f"single route, k={args.k}: plain p50 {single['plain_p50_us']:.0f} µs, trade-off "
        f"{single['tradeoff_p50_us']:.0f} µs (x{single['ratio_tradeoff_to_plain']:.2f}), "
        f"max_cost x{single['ratio_max_cost_to_plain']:.2f}, tradeoff 1 "
        f"x{single['ratio_tradeoff_1_to_plain']:.2f}; batch of {args.batch:,}: plain "
        f"{batch['plain_qps']:,} q/s, trade-off {batch['tradeoff_qps']:,} q/s "
        f"(x{batch['ratio_plain_to_tradeoff']:.2f})"
    )
    finish(
        "tradeoff",
        {"k": args.k, "models": args.models, "server": server, "single": single, "batch": batch},
    )


if __name__ == "__main__":
    main()
