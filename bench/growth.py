"""How route latency and re-cluster time grow with the store, and how storing and activating a
clustering grows with k.

Size axis: 10k -> 300k (-> 1M with --max) calibration queries, synthetic 384-d vectors around 64
topics, k = 64. One store grows step by step (each step adds a dataset of synthetic queries with
vectors), then re-clusters through the library (``reclustering.recluster``, k=64: read, fit,
assign, write, activate + profile refresh in one transaction) and times single routes through the
client (``AvengersClient.route(vector, conn=conn)``) interleaved with ``SELECT 1`` on the same
connection. Outcomes: every model on the first 10k queries only (re-cluster does not need more,
and 8 models x 1M outcomes would dominate the build). Writes results/growth.png (log-log).

k axis (``--ks``, default 64 1,024 4,096): a store of ``--k-queries`` (16k) calibration queries
with outcomes of all 8 models; for each k, one K-means step from k calibration vectors as seeds
(the fit itself is not what is measured), then the library's write path
(``clusterings.store_partition``, which reports each step's seconds: write the centroids and
assignments, fit and store the novelty model, the distance statistics, the centroid index) and
the activation (``CALL avengers.activate_clustering``: production outcomes and the profile
refresh) in one transaction, committed; each step's seconds and its log-log slope over k.

Example:
    .venv/bin/python bench/growth.py
    .venv/bin/python bench/growth.py --max 1000000        # adds 1M (slow: minutes)
    .venv/bin/python bench/growth.py --sizes 10000 50000 200000
    .venv/bin/python bench/growth.py --axis k --ks 64 1024 4096
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
    build_store,
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
from avengers_store.calibration import clusterings, fit, reclustering
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


K_STEPS = ("write", "novelty_fit", "novelty_store", "distance_profile")


def k_axis(url: str, ks: list[int], n_queries: int, n_models: int, seed: int) -> dict:
    """Store and activate a k-cluster version of one calibration set for each k; seconds per
    step (``store_partition``'s timings, then the activation) and log-log slopes over k."""
    with connections.connect(url) as conn:
        store = build_store(conn, n_queries=n_queries, n_blobs=64, n_models=n_models, seed=seed)
        conn.commit()
    points = []
    for k in ks:
        rng = np.random.default_rng(seed + k)
        seeds = store.vectors[rng.choice(len(store.vectors), k, replace=False)]
        labels, _ = fit.nearest_centroids(store.vectors, seeds)
        part = fit.partition(store.vectors, labels)
        steps: dict[str, float] = {}
        with connections.connect(url) as conn, Timer() as total:
            stored = clusterings.store_partition(
                conn,
                store.space_id,
                store.query_ids,
                part,
                algorithm="kmeans",
                seed=seed,
                params={"synthetic": True},
                activate=False,
                vectors=store.vectors,
                timings=steps,
            )
            with Timer() as activation:
                clusterings.activate_clustering(stored.id, conn=conn)
            conn.commit()
        steps["activate"] = activation.seconds
        point = {
            "k": k,
            "clusters": len(part.centroids),
            "total_s": round(total.seconds, 3),
            "steps_s": {name: round(v, 3) for name, v in steps.items()},
        }
        points.append(point)
        say(
            f"k={k:>5,} ({point['clusters']:,} clusters over {n_queries:,} queries x {n_models} "
            f"models): store + activate {total.seconds:.2f} s ("
            + ", ".join(f"{name} {v:.2f}" for name, v in steps.items())
            + ")"
        )
    slopes = {}
    if len(points) >= 2:
        xs = [p["k"] for p in points]
        for name in (*K_STEPS, "activate"):
            values = [max(p["steps_s"].get(name, 0.0), 1e-4) for p in points]
            slopes[name] = round(fit_slope(xs, values), 2)
        slopes["total"] = round(fit_slope(xs, [p["total_s"] for p in points]), 2)
        say(
            "log-log slopes over k (1 = linear in k, 0 = flat): "
            + ", ".join(f"{name} {v:.2f}" for name, v in slopes.items())
        )
    return {"queries": n_queries, "models": n_models, "points": points, "slopes": slopes}


def size_axis(url: str, sizes: list[int], args) -> tuple[list[dict], dict]:
    points = []
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
    return points, slopes


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--axis", choices=["size", "k", "both"], default="both")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="store sizes to measure")
    ap.add_argument("--max", type=int, default=None, help="also measure 300k and 1M up to this")
    ap.add_argument("--n", type=int, default=1000, help="timed routes per size")
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--ks", type=int, nargs="+", default=[64, 1024, 4096], help="k axis")
    ap.add_argument("--k-queries", type=int, default=16_000, help="calibration queries, k axis")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = sorted(args.sizes or DEFAULT_SIZES + [s for s in BIG_SIZES if s <= (args.max or 0)])

    figures: dict[str, object] = {}
    previous = RESULTS / "growth.json"
    if args.axis != "both" and previous.exists():
        # One axis re-measured: the other's figures are kept from the last run.
        import json

        figures = {
            k: v for k, v in json.loads(previous.read_text()).items() if k not in ("bench", "env")
        }
    if args.axis in ("size", "both"):
        with fresh_database("growth") as url:
            figures["server"] = describe_server(url)
            points, slopes = size_axis(url, sizes, args)
        png = RESULTS / "growth.png"
        plot(points, png)
        say(f"plot: {png.relative_to(RESULTS.parent.parent)}")
        figures.update(
            {
                "k": 64,
                "scored_queries": SCORED,
                "points": points,
                "slopes": slopes,
                "plot": "bench/results/growth.png",
            }
        )
    if args.axis in ("k", "both"):
        with fresh_database("growth_k") as url:
            figures["server"] = describe_server(url)
            figures["k_axis"] = k_axis(url, sorted(args.ks), args.k_queries, args.models, args.seed)
    finish("growth", figures)


if __name__ == "__main__":
    main()
