"""Feedback: what recording production outcomes costs, and what serving them costs, on a store
serving a k = 64 clustering of ``--calibration`` queries scored by ``--models`` models, with
``--route-log`` answered requests in avengers.route_log.

1. One at a time, as ``client.feedback`` does: ``production.feedback.record_feedback`` (the rules,
   the insert, the trigger's O(1) update of production_stats) per row, without and with the
   refresh that serves it; floor: one ``INSERT`` of the same values into a plain table per row,
   on the same connection, interleaved.
2. A file, as ``avengers feedback import`` does: ``import_feedback`` of ``--import`` rows from
   Parquet (read, COPY, every row checked, one INSERT, the triggers, the refresh); floor: COPY of
   the same rows into a plain table.
3. Serving: ``CALL avengers.refresh_production()`` (clusters x models rows from production_stats)
   with ``--feedback`` feedback rows counted, against ``CALL avengers.refresh_profiles()`` (what a
   refresh costs when it re-aggregates every calibration outcome) and
   ``CALL avengers.rebuild_production()`` (a recount of every feedback row, what activating a
   version or changing its half-life costs). The incremental path must not grow with the log.

Example:
    .venv/bin/python bench/feedback.py
    .venv/bin/python bench/feedback.py --route-log 200000 --feedback 200000 --import 20000
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import (
    Timer,
    build_store,
    describe_server,
    finish,
    fresh_database,
    interleaved,
    median,
    parser,
    say,
    serve_k,
    settle,
    summary_us,
)

from avengers_store.production.feedback import import_feedback, record_feedback
from avengers_store.store import connections


def fill_route_log(url: str, clustering_id: int, k: int, models: list[str], n: int) -> None:
    """``n`` answered requests, spread over the clusters and models (COPY; setup)."""
    rng = np.random.default_rng(1)
    with connections.connect(url) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY avengers.route_log (route_id, query_hash, clustering_id, cluster, distance, "
                "models, strategy, answer_model) FROM STDIN"
            ) as copy,
        ):
            buffer: list[str] = []
            clusters = rng.integers(0, k, n)
            picks = rng.integers(0, len(models), n)
            for i in range(n):
                model = models[picks[i]]
                buffer.append(
                    f"{uuid.uuid4()}\t{i:064x}\t{clustering_id}\t{clusters[i]}\t0.5\t"
                    f"{{{model}}}\tself-consistency\t{model}\n"
                )
                if len(buffer) >= 50_000:
                    copy.write("".join(buffer))
                    buffer.clear()
            copy.write("".join(buffer))
        conn.commit()


def route_ids(url: str, n: int, offset: int = 0) -> list[uuid.UUID]:
    with connections.connect(url) as conn:
        rows = conn.execute(
            "SELECT route_id FROM avengers.route_log ORDER BY id OFFSET %s LIMIT %s", (offset, n)
        ).fetchall()
    return [r[0] for r in rows]


def one_at_a_time(url: str, routes: list[uuid.UUID], n: int) -> dict:
    scores = np.random.default_rng(2).random(len(routes))
    with connections.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE floor_rows (route_id uuid, score double precision)")
        times = interleaved(
            {
                "feedback": lambda i: record_feedback(
                    conn, routes[i], float(scores[i]), source="bench", refresh=False
                ),
                "feedback_refresh": lambda i: record_feedback(
                    conn, routes[n + i], float(scores[n + i]), source="bench", refresh=True
                ),
                "floor": lambda i: conn.execute(
                    "INSERT INTO floor_rows VALUES (%s, %s)", (routes[i], float(scores[i]))
                ),
            },
            n - 50,
            warmup=50,
        )
    out = {name: summary_us(values) for name, values in times.items()}
    for name in ("feedback", "feedback_refresh", "floor"):
        out[name]["rows_per_s"] = round(1e6 / out[name]["mean_us"])
    out["ratio_to_floor"] = round(out["feedback"]["p50_us"] / out["floor"]["p50_us"], 2)
    return out


def from_file(url: str, routes: list[uuid.UUID], workdir: Path) -> dict:
    rng = np.random.default_rng(3)
    path = workdir / "feedback.parquet"
    pq.write_table(
        pa.table(
            {
                "route_id": [str(r) for r in routes],
                "score": (rng.random(len(routes)) < 0.6).astype(np.float64),
            }
        ),
        path,
    )
    with connections.connect(url) as conn:
        conn.execute("CREATE TEMP TABLE floor_rows (route_id uuid, score double precision)")
        with Timer() as floor:
            with conn.cursor() as cur, cur.copy("COPY floor_rows FROM STDIN") as copy:
                for r, s in zip(routes, rng.random(len(routes)).tolist(), strict=True):
                    copy.write_row((r, s))
            conn.commit()
    with Timer() as imported:
        report = import_feedback(path, source="file", url=url)
    return {
        "rows": report.stored,
        "import_s": round(imported.seconds, 2),
        "rows_per_s": round(report.stored / imported.seconds),
        "floor_copy_s": round(floor.seconds, 2),
        "floor_rows_per_s": round(len(routes) / floor.seconds),
    }


def counted_in_bulk(url: str, n: int, offset: int) -> dict:
    """``n`` feedback rows in one statement (the triggers count them together): setup for the
    serving measurements, timed too."""
    with connections.connect(url) as conn, Timer() as t:
        inserted = conn.execute(
            """INSERT INTO avengers.feedback (route_id, source, model_id, score, at)
               SELECT r.route_id, 'bulk', m.id, (random() < 0.6)::int,
                      now() - random() * interval '30 days'
               FROM (SELECT route_id, answer_model FROM avengers.route_log
                     ORDER BY id OFFSET %s LIMIT %s) AS r
               JOIN avengers.models m ON m.name = r.answer_model""",
            (offset, n),
        ).rowcount
        conn.commit()
    return {
        "rows": inserted,
        "seconds": round(t.seconds, 2),
        "rows_per_s": round(inserted / t.seconds),
    }


def serving(url: str, repeats: int) -> dict:
    times: dict[str, list[float]] = {"refresh_production": [], "refresh_profiles": [],
                                     "rebuild_production": []}  # fmt: skip
    with connections.connect(url, autocommit=True) as conn:
        active = conn.execute("SELECT id FROM avengers.active_clustering").fetchone()[0]
        cells = conn.execute("SELECT count(*) FROM avengers.production_profiles").fetchone()[0]
        counted = conn.execute("SELECT count(*) FROM avengers.feedback").fetchone()[0]
        for _ in range(repeats):
            for name, statement in (
                ("refresh_production", "CALL avengers.refresh_production()"),
                ("refresh_profiles", "CALL avengers.refresh_profiles()"),
            ):
                with Timer() as t:
                    conn.execute(statement)
                times[name].append(t.seconds)
        with Timer() as t, conn.transaction():
            conn.execute("CALL avengers.rebuild_production(%s)", (active,))
        times["rebuild_production"].append(t.seconds)
    out = {name: round(median(v) * 1000, 1) for name, v in times.items()}
    return {
        "feedback_rows": counted,
        "production_cells": cells,
        "refresh_production_ms": out["refresh_production"],
        "refresh_profiles_ms": out["refresh_profiles"],
        "rebuild_production_ms": out["rebuild_production"],
        "ratio_full_to_incremental": round(out["refresh_profiles"] / out["refresh_production"], 1),
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--calibration", type=int, default=50_000)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--route-log", type=int, default=1_000_000)
    ap.add_argument("--feedback", type=int, default=1_000_000)
    ap.add_argument("--import", dest="imported", type=int, default=100_000)
    ap.add_argument("--single", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with fresh_database("feedback") as url, tempfile.TemporaryDirectory() as tmp:
        with connections.connect(url) as conn:
            store = build_store(conn, n_queries=args.calibration, n_blobs=64, n_models=args.models)
            clustering_id, how = serve_k(conn, store, 64)
            models = [r[0] for r in conn.execute("SELECT name FROM avengers.models ORDER BY id")]
            conn.commit()
        say(f"store: {args.calibration:,} calibration queries x {args.models} models, {how}")
        with Timer() as t:
            fill_route_log(url, clustering_id, 64, models, args.route_log)
        say(f"route_log: {args.route_log:,} rows in {t.seconds:.1f} s (setup)")
        settle(url)
        single_routes = route_ids(url, 2 * args.single, 0)
        file_routes = route_ids(url, args.imported, 2 * args.single)
        single = one_at_a_time(url, single_routes, args.single)
        say(f"one at a time: {single}")
        empty = serving(url, args.repeats)
        say(f"serving with {empty['feedback_rows']:,} feedback rows: {empty}")
        imported = from_file(url, file_routes, Path(tmp))
        say(f"file import: {imported}")
        bulk = counted_in_bulk(url, args.feedback, 2 * args.single + args.imported)
        say(f"bulk: {bulk}")
        settle(url)
        loaded = serving(url, args.repeats)
        say(f"serving with {loaded['feedback_rows']:,} feedback rows: {loaded}")
        finish(
            "feedback",
            {
                "server": describe_server(url),
                "calibration_queries": args.calibration,
                "models": args.models,
                "route_log_rows": args.route_log,
                "one_at_a_time": single,
                "file_import": imported,
                "bulk_insert": bulk,
                "serving_few": empty,
                "serving_many": loaded,
            },
        )


if __name__ == "__main__":
    main()
