"""Batch routing throughput: 10k query vectors routed in one statement (``avengers.decide_many``).

Timed five ways, round-robin per repeat: the client with its default routing policy
(``AvengersClient.route_many(vectors, conn=conn)``: vectors checked, novelty distances computed,
sent in binary, decisions built), the same client through a pool of five connections (no
``conn``: the batch split into parts run at once on four of them, in one snapshot; "pooled",
reported beside the targets, which compare like with like on one connection), the same with
method "paper" (nearest cluster only), the bare statement (the client's ``routing.decide``
statement for the batch, built once beforehand, run directly: rows only), and numpy's argmin over
the same centroids as the floor. queries/s = batch size / median seconds over repeats.

Example:
    .venv/bin/python bench/batch_routing.py
    .venv/bin/python bench/batch_routing.py --k 64 1024 --batch 10000 --repeat 5
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
    median,
    parser,
    say,
    serve_k,
    settle,
)
from threadpoolctl import threadpool_limits

from avengers_store.client import AvengersClient
from avengers_store.routing import novelty
from avengers_store.routing.decide import statement as decide_statement
from avengers_store.store import connections

# The targets: the client at least 0.9x the bare statement it sends and 1/10 of numpy's argmin
# over the same matrix (each k).
TARGET_OF_SQL = 0.9
TARGET_OF_NUMPY = 0.1
# The pooled client's connections: a batch's parts run at once on all but one (the one kept for
# the client's other callers, client_pools.RESERVED).
POOLED = 5


def measure_k(url: str, store, k: int, batch: int, repeat: int, seed: int) -> dict:
    with connections.connect(url) as conn, Timer() as took:
        cid, how = serve_k(conn, store, k, seed)
        conn.commit()
    with connections.connect(url) as conn:
        k_served = conn.execute(
            "SELECT count(*) FROM avengers.centroids WHERE clustering_id = %s", (cid,)
        ).fetchone()[0]
        c = np.stack(
            [
                v.to_numpy()
                for (v,) in conn.execute(
                    "SELECT centroid FROM avengers.centroids WHERE clustering_id = %s "
                    "ORDER BY cluster",
                    (cid,),
                    binary=True,
                )
            ]
        ).astype(np.float32)
    say(f"k={k}: {k_served} centroids served ({how}; {took.seconds:.1f} s)")
    rng = np.random.default_rng(seed + 2)
    picks = rng.integers(0, len(store.vectors), batch)
    queries = store.vectors[picks] + rng.standard_normal(
        (batch, store.vectors.shape[1]), dtype=np.float32
    ) * np.float32(0.02)
    c_sq = np.einsum("ij,ij->i", c, c)

    conn = connections.connect(url, autocommit=True)
    client = AvengersClient(url, pool_size=1)  # the default routing method ("avengers")
    paper = AvengersClient(url, pool_size=1, method="paper")
    # The same client through a pool of POOLED connections: the batch split into parts run at
    # once, in one snapshot (client_core.part_bounds, store/snapshots.py).
    pooled = AvengersClient(url, pool_size=POOLED)
    try:
        # What the client sends for this batch (its policy, seeds, the novelty distances).
        bare = decide_statement(
            queries, client.policy, seeds=client.seeds(batch), novelty=novelty.load(conn, cid),
            novelty_clustering=cid,
        )  # fmt: skip

        def run_client() -> int:
            return len(client.route_many(queries, conn=conn))

        def run_pooled() -> int:
            return len(pooled.route_many(queries))

        def run_paper() -> int:
            return len(paper.route_many(queries, conn=conn))

        def run_sql() -> int:
            rows = conn.execute(bare.sql, bare.params, binary=bare.binary).fetchall()
            return len(rows)

        def run_numpy() -> int:
            # One BLAS thread: OpenBLAS's idle threads spin after a call, and on 2 cores they
            # slowed the statement timed next by ~20%.
            with threadpool_limits(limits=1, user_api="blas"):
                u = queries / np.linalg.norm(queries, axis=1, keepdims=True)
                return len(np.argmin(c_sq[None, :] - 2.0 * (u @ c.T), axis=1))

        run_client()  # warm-up: plans, caches
        run_pooled()  # and the pool's connections
        settle(url)
        freeze_setup_heap()
        times: dict[str, list[float]] = {
            "client": [], "pooled": [], "paper": [], "sql": [], "numpy": []
        }  # fmt: skip
        for r in range(repeat):
            for name, fn in (
                ("client", run_client),
                ("pooled", run_pooled),
                ("paper", run_paper),
                ("sql", run_sql),
                ("numpy", run_numpy),
            ):
                t0 = time.perf_counter()
                assert fn() == batch
                times[name].append(time.perf_counter() - t0)
            say(
                f"  repeat {r + 1}: client {batch / times['client'][-1]:,.0f} q/s, "
                f"pooled {batch / times['pooled'][-1]:,.0f} q/s, "
                f"method paper {batch / times['paper'][-1]:,.0f} q/s, "
                f"bare SQL {batch / times['sql'][-1]:,.0f} q/s, "
                f"numpy {batch / times['numpy'][-1]:,.0f} q/s"
            )
    finally:
        client.close()
        pooled.close()
        paper.close()
        conn.close()
    result = {
        "k": k,
        "k_served": k_served,
        "batch": batch,
        "client_qps": round(batch / median(times["client"])),
        "pooled_qps": round(batch / median(times["pooled"])),
        "pooled_connections": POOLED,
        "paper_qps": round(batch / median(times["paper"])),
        "sql_qps": round(batch / median(times["sql"])),
        "method": client.method.name,
        "numpy_qps": round(batch / median(times["numpy"])),
        "client_seconds": [round(t, 4) for t in times["client"]],
        "sql_seconds": [round(t, 4) for t in times["sql"]],
    }
    say(
        f"k={k}: {result['client_qps']:,} queries/s through the client ({client.method.name}), "
        f"{result['pooled_qps']:,} through a pool of {POOLED}, "
        f"{result['paper_qps']:,} with method paper, {result['sql_qps']:,} bare SQL, {result['numpy_qps']:,} numpy; client/SQL {result['client_qps'] / result['sql_qps']:.2f} (target >= {TARGET_OF_SQL}), client/numpy {result['client_qps'] / result['numpy_qps']:.3f} (target >= {TARGET_OF_NUMPY})"
    )
    return result


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--k", type=int, nargs="+", default=[64, 1024], help="centroid counts")
    ap.add_argument("--batch", type=int, default=10_000, help="vectors per statement")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    n_queries = max(10_000, 4 * max(args.k))
    results = []
    with fresh_database("batch") as url:
        server = describe_server(url)
        with connections.connect(url) as conn:
            store = build_store(
                conn, n_queries=n_queries, n_blobs=64, n_models=args.models, seed=args.seed
            )
            conn.commit()
        say(f"store: {n_queries:,} calibration queries x {args.models} models (synthetic, 384-d)")
        for k in args.k:
            results.append(measure_k(url, store, k, args.batch, args.repeat, args.seed))
    head = next((r for r in results if r["k"] == 64), None)
    finish(
        "batch_routing",
        {
            "target_of_sql": TARGET_OF_SQL,
            "target_of_numpy": TARGET_OF_NUMPY,
            "qps_k64": head["client_qps"] if head else None,
            "pooled_qps_k64": head["pooled_qps"] if head else None,
            "met": {
                r["k"]: {
                    "of_sql": r["client_qps"] >= TARGET_OF_SQL * r["sql_qps"],
                    "of_numpy": r["client_qps"] >= TARGET_OF_NUMPY * r["numpy_qps"],
                }
                for r in results
            },
            "server": server,
            "by_k": results,
        },
    )


if __name__ == "__main__":
    main()
