"""The console's pages: each handler runs its named queries (``queries``) on one read
connection and renders a template with the rows, the charts drawn from them (``charts``) and
the queries' text."""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

import psycopg
import psycopg.sql
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from avengers_store.console import charts
from avengers_store.console import queries as q
from avengers_store.routing.decisions import Candidate, RouteDecision
from avengers_store.routing.policy import Policy

WINDOWS = {"24h": ("24 hours", "1 hour"), "7d": ("7 days", "6 hours"), "30d": ("30 days", "1 day")}
LAYERS = ("calibration", "production", "pooled")
REQUEST_LIMIT = 100
SPEND_DAYS = 30


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _money(value: Any) -> str:
    return "–" if value is None else f"{value:.6g}"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else "–"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.1%}"


ENV = Environment(
    loader=PackageLoader("avengers_store.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(num=_num, money=_money, when=_when, pct=_pct, heat=charts.heat)
ENV.globals.update(interval=charts.interval)

# The pages' scripts, styles and pictures come from the console itself; no inline script runs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
)


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = ENV.get_template(template).render(**context)
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def _labels(stamps: list[datetime], bucket: str) -> list[str]:
    fmt = "%m-%d" if bucket == "1 day" else "%m-%d %H:%M"
    return [s.strftime(fmt) for s in stamps]


async def overview(request: Request, conn: psycopg.AsyncConnection) -> HTMLResponse:
    window = request.query_params.get("window", "24h")
    if window not in WINDOWS:
        window = "24h"
    span, bucket = WINDOWS[window]
    traffic = await q.run(conn, q.TRAFFIC, {"window": span, "bucket": bucket})
    clustering = await q.run(conn, q.ACTIVE_CLUSTERING)
    pool = await q.run(conn, q.POOL)
    rows = traffic.rows
    labels = _labels([r["bucket_start"] for r in rows], bucket)
    totals = {
        key: sum(r[key] or 0 for r in rows)
        for key in ("requests", "answers", "errors", "fallbacks", "ood", "cost")
    }
    figures = {
        "traffic": charts.line_chart(
            labels,
            {
                "requests": [r["requests"] for r in rows],
                "answers": [r["answers"] for r in rows],
                "errors": [r["errors"] for r in rows],
                "fallbacks": [r["fallbacks"] for r in rows],
            },
            title="Requests per bucket",
            fmt=lambda v: f"{v:.0f}",
        ),
        "ood": charts.line_chart(
            labels,
            {"OOD share": [r["ood_share"] for r in rows]},
            title="Share of requests out of distribution",
            fmt=lambda v: f"{v:.0%}",
            y_max=1.0,
        ),
        "spend": charts.line_chart(
            labels,
            {"spend": [r["cost"] for r in rows]},
            title="Spend per bucket",
            fmt=lambda v: f"{v:.2g}",
        ),
    }
    return render(
        "overview.html",
        page="overview",
        window=window,
        windows=list(WINDOWS),
        totals=totals,
        figures=figures,
        clustering=clustering.rows[0] if clustering.rows else None,
        pool=pool.rows,
        defaults=request.app.state.console.gateway_defaults,
        results=[traffic, clustering, pool],
    )


async def profiles(request: Request, conn: psycopg.AsyncConnection) -> HTMLResponse:
    layer = request.query_params.get("layer", "calibration")
    if layer not in LAYERS:
        layer = "calibration"
    result = await q.run(conn, q.PROFILES)
    sizes = await q.run(conn, q.CLUSTER_SIZES)
    models = sorted({r["model"] for r in result.rows})
    cells: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in result.rows:
        value = {
            "calibration": r["mean_score"],
            "production": r["production_decayed_mean"],
            "pooled": r["pooled_mean"],
        }[layer]
        cells[r["cluster"]][r["model"]] = {**r, "value": value}
    clusters = [s["cluster"] for s in sizes.rows]
    return render(
        "profiles.html",
        page="profiles",
        layer=layer,
        layers=LAYERS,
        models=models,
        clusters=clusters,
        sizes={s["cluster"]: s["size"] for s in sizes.rows},
        cells=cells,
        results=[result, sizes],
    )


async def cluster(request: Request, conn: psycopg.AsyncConnection) -> HTMLResponse:
    target = request.path_params["cluster"]
    params = {"cluster": target}
    ranks = await q.run(conn, q.CLUSTER_RANKS, params)
    if not ranks.rows:
        return render(
            "missing.html", 404, page="profiles", what=f"cluster {target} of the active clustering"
        )
    examples = await q.run(conn, q.CLUSTER_EXAMPLES, params)
    neighbours = await q.run(conn, q.CLUSTER_NEIGHBOURS, params)
    traffic = await q.run(conn, q.CLUSTER_TRAFFIC_DRIFT, params)
    outcome = await q.run(conn, q.CLUSTER_OUTCOME_DRIFT, params)
    return render(
        "cluster.html",
        page="profiles",
        cluster=target,
        ranks=ranks.rows,
        examples=examples.rows,
        neighbours=neighbours.rows,
        traffic=traffic.rows[0] if traffic.rows else None,
        outcome=outcome.rows,
        results=[ranks, examples, neighbours, traffic, outcome],
    )


def _filters(request: Request) -> dict[str, Any]:
    args = request.query_params

    def text(name: str) -> str | None:
        value = args.get(name, "").strip()
        return value or None

    cluster = text("cluster")
    ood = text("ood")
    return {
        "cluster": int(cluster) if cluster and cluster.isdigit() else None,
        "model": text("model"),
        "key": text("key"),
        "ood": {"yes": True, "no": False}.get(ood or ""),
        "strategy": text("strategy"),
        "limit": REQUEST_LIMIT,
    }


async def requests(request: Request, conn: psycopg.AsyncConnection) -> HTMLResponse:
    filters = _filters(request)
    result = await q.run(conn, q.REQUESTS, filters)
    choices = await q.run(conn, q.FILTER_CHOICES)
    return render(
        "requests.html",
        page="requests",
        filters=filters,
        choices=choices.rows[0],
        rows=result.rows,
        limit=REQUEST_LIMIT,
        results=[result, choices],
    )


def decision(
    row: dict[str, Any], profiles: dict[str, dict[str, Any]], production_weight: float | None
) -> RouteDecision:
    """The logged decision rebuilt for ``explain()``: the candidates in their logged order with
    their logged scores and expected costs, and their profile in the cluster as it stands."""
    meta = row["metadata"] or {}
    names = list(row["candidates"] or [])
    scores = list(meta.get("scores") or [])
    costs = list(meta.get("expected_costs") or [])
    candidates = []
    for i, name in enumerate(names):
        p = profiles.get(name, {})
        candidates.append(
            Candidate(
                model=name,
                rank=i + 1,
                mean_score=p.get("mean_score"),
                n=p.get("n"),
                wilson_low=p.get("wilson_low"),
                wilson_high=p.get("wilson_high"),
                endpoint=p.get("endpoint"),
                served_name=p.get("served_name"),
                score=scores[i] if i < len(scores) else None,
                expected_cost=costs[i] if i < len(costs) else None,
                over_budget=(meta.get("over_budget") and i == 0) or None,
                production_n=p.get("production_n"),
                production_mean=p.get("production_decayed_mean"),
                propensity=row["propensity"] if i == 0 else None,
            )
        )
    policy = Policy.from_dict(meta["policy"]) if isinstance(meta.get("policy"), dict) else None
    return RouteDecision(
        clustering_id=row["clustering_id"],
        cluster=row["cluster"],
        distance=row["distance"] or 0.0,
        candidates=tuple(candidates),
        policy=policy,
        exploration=row["exploration"],
        explored=row["explored"],
        novelty=row["novelty"],
        ood=row["ood"],
        ood_policy=row["ood_policy"],
        production_weight=production_weight,
    )


async def request_page(request: Request, conn: psycopg.AsyncConnection) -> HTMLResponse:
    try:
        route_id = uuid.UUID(request.path_params["route_id"])
    except ValueError:
        return render("missing.html", 404, page="requests", what="a request with that route id")
    found = await q.run(conn, q.REQUEST, {"route_id": route_id})
    if not found.rows:
        return render("missing.html", 404, page="requests", what=f"request {route_id}")
    row = found.rows[0]
    results = [found]
    explanation, profiles, clustering = None, {}, None
    if row["clustering_id"] is not None and row["cluster"] is not None:
        params = {"clustering_id": row["clustering_id"]}
        found_clustering = await q.run(conn, q.CLUSTERING, params)
        clustering = found_clustering.rows[0] if found_clustering.rows else None
        cands = await q.run(
            conn,
            q.REQUEST_CANDIDATES,
            {**params, "cluster": row["cluster"], "models": list(row["candidates"] or [])},
        )
        profiles = {c["model"]: c for c in cands.rows}
        results += [found_clustering, cands]
        weight = clustering["production_weight"] if clustering else None
        explanation = decision(row, profiles, weight).explain()
    feedback = await q.run(conn, q.REQUEST_FEEDBACK, {"route_id": route_id})
    results.append(feedback)
    meta = row["metadata"] or {}
    votes = sorted((meta.get("votes") or {}).items(), key=lambda kv: -kv[1])
    total_votes = sum(v for _, v in votes) or 1
    return render(
        "request.html",
        page="requests",
        row=row,
        meta=meta,
        explanation=explanation,
        clustering=clustering,
        profiles=profiles,
        votes=[(answer, count, count / total_votes) for answer, count in votes],
        feedback=feedback.rows,
        results=results,
    )


def _pivot(
    rows: list[dict[str, Any]], by: str, value: str
) -> tuple[list[str], dict[str, list[float | None]]]:
    days = sorted({r["day"] for r in rows})
    names = sorted({r[by] for r in rows if r[by] is not None})
    table = {(r["day"], r[by]): r[value] for r in rows}
    return (
        [d.strftime("%m-%d") for d in days],
        {n: [table.get((d, n)) or 0.0 for d in days] for n in names},
    )


async def costs(request: Request, conn: psycopg.AsyncConnection) -> HTMLResponse:
    params = {"days": SPEND_DAYS}
    keys = await q.run(conn, q.KEY_SPEND, params)
    models = await q.run(conn, q.MODEL_SPEND, params)
    key_labels, key_series = _pivot(keys.rows, "key_name", "cost")
    model_labels, model_series = _pivot(models.rows, "model", "cost")
    return render(
        "costs.html",
        page="costs",
        keys=keys.rows,
        models=models.rows,
        key_chart=charts.line_chart(
            key_labels, key_series, title="Spend per key and day", fmt=lambda v: f"{v:.2g}"
        ),
        model_chart=charts.line_chart(
            model_labels, model_series, title="Spend per model and day", fmt=lambda v: f"{v:.2g}"
        ),
        days=SPEND_DAYS,
        results=[keys, models],
    )


async def drift(request: Request, conn: psycopg.AsyncConnection) -> HTMLResponse:
    traffic = await q.run(conn, q.TRAFFIC_DRIFT)
    ood = await q.run(conn, q.OOD_DAILY)
    outcome = await q.run(conn, q.OUTCOME_DRIFT)
    labels = [str(r["cluster"]) for r in traffic.rows]
    return render(
        "drift.html",
        page="drift",
        traffic=traffic.rows,
        ood=ood.rows,
        outcome=outcome.rows,
        shares=charts.paired_bars(
            labels,
            ("calibration share", [r["calibration_share"] for r in traffic.rows]),
            ("traffic share, 7 days", [r["routed_share"] for r in traffic.rows]),
            title="Each cluster's share of calibration and of traffic",
        ),
        ood_chart=charts.line_chart(
            [r["day"].strftime("%m-%d") for r in ood.rows],
            {"OOD rate": [r["ood_rate"] for r in ood.rows]},
            title="Out-of-distribution rate per day",
            fmt=lambda v: f"{v:.0%}",
            y_max=1.0,
        ),
        results=[traffic, ood, outcome],
    )


async def shadow(request: Request, conn: psycopg.AsyncConnection) -> HTMLResponse:
    views = await q.run(conn, q.SHADOW_VIEWS)
    results = [views]
    tables = []
    for view in views.rows:
        # The name comes from pg_class, not from the request; quoted as an identifier.
        ident = psycopg.sql.Identifier("avengers", view["name"]).as_string(conn)
        query = q.Query(
            view["name"], view["comment"] or view["name"], f"SELECT * FROM {ident} LIMIT 200"
        )
        result = await q.run(conn, query)
        results.append(result)
        tables.append(result)
    return render("shadow.html", page="shadow", views=views.rows, tables=tables, results=results)
