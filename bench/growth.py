"""How route latency and re-cluster time grow with the store: 10k -> 300k (-> 1M with --max)
calibration queries, synthetic 384-d vectors around 64 topics, k = 64.

One store grows step by step (each step adds a dataset of synthetic queries with vectors), then
re-clusters through the library (``reclustering.recluster``, k=64: read, fit, assign, write,
activate + profile refresh in one transaction) and times single routes through the client
(``AvengersClient.route(vector, conn=conn)``) interleaved with ``SELECT 1`` on the same
connection. Outcomes: every model on the first 10k queries only (re-cluster does not need more,
and 8 models x 1M outcomes would dominate the build). Writes results/growth.png (log-log).

Example:
    .venv/bin/python bench/growth.py
    .venv/bin/python bench/growth.py --max 1000000        # adds 1M (slow: minutes)
    .venv/bin/python bench/growth.py --sizes 10000 50000 200000
"""

from __future__ import annotations

import numpy as np
from _common import (
    DIM,
    RESULTS,
    Timer,
    add_models,
    add_queries,
    blob_vectors,
    describe_server,
    finish,
    fresh_database,
    interleaved,
    outcome_rows,
    parser,
    say,
    summary_us,
    unit_rows,
)
from _common import active_space as make_space

from avengers_store import figures
from avengers_store.calibration import fit, reclustering
from avengers_store.calibration.query_vectors import store_vectors
from avengers_store.client import AvengersClient
from avengers_store.ingest.outcomes import upsert_outcomes
from avengers_store.store import connections

DEFAULT_SIZES = [10_000, 30_000, 100_000, 300_000]
BIG_SIZES = [1_000_000]
SCORED = 10_000


def grow(conn, space_id: int, centres: np.ndarray, start: int, stop: int, seed: int) -> tuple:
    """Add queries start..stop-1 as one dataset with vectors; returns (ids, blobs)."""
    rng = np.random.default_rng(seed + stop)
    n = stop - start
    ids = add_queries(conn, f"grow-{stop}", n)
    blobs = np.empty(n, dtype=np.int64)
    step = 100_000
    for lo in range(0, n, step):
        vectors, labels = blob_vectors(rng, centres, min(step, n - lo))
        store_vectors(conn, space_id, ids[lo : lo + len(vectors)], vectors)
        blobs[lo : lo + len(vectors)] = labels
    return ids, blobs


def route_latency(url: str, centres: np.ndarray, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed + 99)
    queries, _ = blob_vectors(rng, centres, n)
    conn = connections.connect(url, autocommit=True)
    client = AvengersClient(url, pool_size=1)
    try:
        times = interleaved(
            {
                "route": lambda i: client.route(queries[i], conn=conn),
                "select1": lambda i: conn.execute("SELECT 1").fetchone(),
            },
            n,
        )
    finally:
        client.close()
        conn.close()
    return {name: summary_us(t) for name, t in times.items()}


def fit_slope(sizes: list[int], values: list[float]) -> float:
    return float(np.polyfit(np.log10(sizes), np.log10(values), 1)[0])


def plot(points: list[dict], path) -> None:
    plt = figures.pyplot()

    sizes = [p["queries"] for p in points]
    recluster = [p["recluster_s"] for p in points]
    route = [p["route_p50_us"] / 1000 for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.loglog(sizes, recluster, "o-", label="re-cluster k=64 (s)")
    ax.loglog(sizes, route, "s-", label="route p50 (ms)")
    ax.loglog(sizes, [p["select1_p50_us"] / 1000 for p in points], ":", label="SELECT 1 p50 (ms)")
    ax.axvline(fit.MINIBATCH_THRESHOLD, color="grey", linewidth=0.8, linestyle="--")
    ax.annotate(
        f"above {fit.MINIBATCH_THRESHOLD:,}: MiniBatchKMeans",
        (fit.MINIBATCH_THRESHOLD, max(recluster)),
        xytext=(4, 0),
        textcoords="offset points",
        fontsize=7,
        color="grey",
    )
    ax.set_xlabel("calibration queries in the store")
    ax.set_ylabel("time")
    ax.set_title("Growth: re-cluster time and single-route latency (384-d, k=64)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    figures.save(fig, path)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="store sizes to measure")
    ap.add_argument("--max", type=int, default=None, help="also measure 300k and 1M up to this")
    ap.add_argument("--n", type=int, default=1000, help="timed routes per size")
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = sorted(args.sizes or DEFAULT_SIZES + [s for s in BIG_SIZES if s <= (args.max or 0)])

    points = []
    with fresh_database("growth") as url:
        server = describe_server(url)
        rng = np.random.default_rng(args.seed)
        centres = unit_rows(rng, 64, DIM)
        have = 0
        with connections.connect(url) as conn:
            space_id = make_space(conn)
            model_ids = add_models(conn, args.models)
            conn.commit()
        for size in sizes:
            with connections.connect(url) as conn, Timer() as built:
                ids, blobs = grow(conn, space_id, centres, have, size, args.seed)
                if have < SCORED:
                    take = min(SCORED - have, len(ids))
                    rows = outcome_rows(rng, ids[:take], model_ids, blobs[:take])
                    upsert_outcomes(conn, rows)
                conn.commit()
            have = size
            with Timer() as rec:
                found = reclustering.recluster(k=64, seed=args.seed, keep=0, url=url)
            lat = route_latency(url, centres, args.n, args.seed)
            point = {
                "queries": size,
                "build_s": round(built.seconds, 1),
                "recluster_s": round(rec.seconds, 2),
                "fit": found.params.get("fit", found.algorithm),
                "route_p50_us": lat["route"]["p50_us"],
                "route_p99_us": lat["route"]["p99_us"],
                "select1_p50_us": lat["select1"]["p50_us"],
            }
            points.append(point)
            say(
                f"{size:>9,} queries: re-cluster {point['recluster_s']:.1f} s ({point['fit']}), "
                f"route p50 {point['route_p50_us']:.0f} µs p99 {point['route_p99_us']:.0f} µs "
                f"(SELECT 1 {point['select1_p50_us']:.0f} µs); added in {built.seconds:.0f} s"
            )
    sizes_done = [p["queries"] for p in points]
    slopes = {}
    if len(points) >= 2:
        slopes = {
            "recluster": round(fit_slope(sizes_done, [p["recluster_s"] for p in points]), 2),
            "route_p50": round(fit_slope(sizes_done, [p["route_p50_us"] for p in points]), 2),
        }
        # Above fit.MINIBATCH_THRESHOLD the fit changes algorithm: slope of that regime.
        big = [p for p in points if p["queries"] > fit.MINIBATCH_THRESHOLD]
        if len(big) >= 2:
            slopes["recluster_minibatch"] = round(
                fit_slope([p["queries"] for p in big], [p["recluster_s"] for p in big]), 2
            )
        say(
            f"log-log slopes: re-cluster {slopes['recluster']:.2f} over all sizes"
            + (
                f", {slopes['recluster_minibatch']:.2f} above "
                f"{fit.MINIBATCH_THRESHOLD:,} (MiniBatchKMeans)"
                if "recluster_minibatch" in slopes
                else ""
            )
            + f" (1 = linear in the store); route p50 {slopes['route_p50']:.2f} (0 = flat: "
            "routing reads the k centroids, not the queries)"
        )
    png = RESULTS / "growth.png"
    plot(points, png)
    say(f"plot: {png.relative_to(RESULTS.parent.parent)}")
    finish(
        "growth",
        {
            "k": 64,
            "scored_queries": SCORED,
            "points": points,
            "slopes": slopes,
            "plot": "bench/results/growth.png",
            "server": server,
        },
    )


if __name__ == "__main__":
    main()
