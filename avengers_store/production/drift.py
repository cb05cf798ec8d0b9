"""Drift: production traffic and outcomes against the calibration, over a window.

Reads the analysts' definitions (sql/055_drift_views.sql): ``avengers.traffic_drift(since)``
(each cluster's routed share against its calibration share), ``avengers.ood_daily`` (OOD rate
and mean distance per day) and ``avengers.outcome_drift(since)`` (production mean per cluster
and model against its calibration interval). ``plot_drift`` draws the first two, marking the
clusters where a production mean left its interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg

from avengers_store import figures
from avengers_store.errors import InputError, StoreStateError
from avengers_store.store import connections


@dataclass(frozen=True)
class ClusterTraffic:
    cluster: int
    calibration_queries: int
    calibration_share: float | None
    routed: int
    routed_share: float | None
    share_ratio: float | None
    ood: int
    mean_distance: float | None


@dataclass(frozen=True)
class DailyOod:
    day: date
    clustering_id: int
    routed: int
    ood: int
    ood_rate: float | None
    mean_distance: float | None
    mean_novelty: float | None


@dataclass(frozen=True)
class OutcomeDrift:
    cluster: int
    model: str
    calibration_n: int | None
    calibration_mean: float | None
    wilson_low: float | None
    wilson_high: float | None
    production_n: int
    production_mean: float
    production_low: float | None
    production_high: float | None
    outside: bool


@dataclass(frozen=True)
class DriftReport:
    clustering_id: int
    since: datetime
    traffic: tuple[ClusterTraffic, ...]
    daily: tuple[DailyOod, ...]
    outcomes: tuple[OutcomeDrift, ...]

    @property
    def drifted_clusters(self) -> tuple[int, ...]:
        """Clusters where a model's production mean left its calibration interval."""
        return tuple(sorted({o.cluster for o in self.outcomes if o.outside}))

    @property
    def routed(self) -> int:
        return sum(t.routed for t in self.traffic)


def drift(
    since: timedelta | datetime = timedelta(days=7),
    *,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> DriftReport:
    """Drift of the active clustering since ``since`` (a start time, or how long ago)."""
    if isinstance(since, timedelta):
        if since <= timedelta(0):
            raise InputError(f"since must be a positive duration, got {since}", location="since")
        start = datetime.now(UTC) - since
    elif isinstance(since, datetime):
        start = since
    else:
        raise InputError(f"since must be a duration or a time, got {since!r}", location="since")
    with connections.connection(url, conn=conn) as c:
        active = c.execute("SELECT id FROM avengers.active_clustering").fetchone()
        if active is None:
            raise StoreStateError("no clustering is active: nothing to compare traffic with")
        traffic = c.execute(
            "SELECT cluster, calibration_queries, calibration_share, routed, routed_share, "
            "share_ratio, ood, mean_distance FROM avengers.traffic_drift(%s)",
            (start,),
        ).fetchall()
        daily = c.execute(
            "SELECT day::date, clustering_id, routed, ood, ood_rate, mean_distance, mean_novelty "
            "FROM avengers.ood_daily WHERE day >= date_trunc('day', %s::timestamptz) "
            "ORDER BY day, clustering_id",
            (start,),
        ).fetchall()
        outcomes = c.execute(
            "SELECT cluster, model, calibration_n, calibration_mean, wilson_low, wilson_high, "
            "production_n, production_mean, production_low, production_high, outside "
            "FROM avengers.outcome_drift(%s)",
            (start,),
        ).fetchall()
    return DriftReport(
        clustering_id=active[0],
        since=start,
        traffic=tuple(ClusterTraffic(*r) for r in traffic),
        daily=tuple(DailyOod(*r) for r in daily),
        outcomes=tuple(OutcomeDrift(*r) for r in outcomes),
    )


def plot_drift(report: DriftReport, path: str | Path) -> Path:
    """Write a PNG: calibration against routed share per cluster (drifted clusters in red) and
    the OOD rate and mean novelty per day."""
    import numpy as np

    plt = figures.pyplot()

    clusters = [t.cluster for t in report.traffic]
    drifted = set(report.drifted_clusters)
    x = np.arange(len(clusters))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(7.0, 0.22 * len(clusters) + 3), 7.5), dpi=110
    )
    top.bar(x - 0.2, [t.calibration_share or 0 for t in report.traffic], 0.4,
            label="calibration share", color="#9aa7b8")  # fmt: skip
    bars = top.bar(x + 0.2, [t.routed_share or 0 for t in report.traffic], 0.4,
                   label="routed share", color="#3b6ea8")  # fmt: skip
    for bar, cluster in zip(bars, clusters, strict=True):
        if cluster in drifted:
            bar.set_color("#c0392b")
    top.set_xticks(x)
    top.set_xticklabels([str(c) for c in clusters], fontsize=6 if len(clusters) > 40 else 8)
    top.set_xlabel("cluster (red: a model's production mean left its calibration interval)")
    top.set_ylabel("share")
    top.legend(fontsize=8)
    top.set_title(
        f"Clustering {report.clustering_id}: {report.routed} requests since "
        f"{report.since:%Y-%m-%d %H:%M}",
        fontsize=10,
    )
    if report.daily:
        days = [d.day for d in report.daily]
        bottom.plot(days, [d.ood_rate or 0 for d in report.daily], marker="o", label="OOD rate")
        bottom.set_ylabel("OOD rate")
        other = bottom.twinx()
        other.plot(days, [d.mean_novelty or 0 for d in report.daily], marker="s",
                   color="#7f8c8d", label="mean novelty")  # fmt: skip
        other.set_ylabel("mean novelty")
        fig.autofmt_xdate()
    else:
        bottom.text(0.5, 0.5, "no requests in the window", ha="center", va="center")
    bottom.set_title("Out-of-distribution requests per day", fontsize=10)
    return figures.save(fig, path)
