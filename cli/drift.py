"""``avengers drift``: production traffic and outcomes against the calibration."""

from __future__ import annotations

from datetime import timedelta

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.output import echo_json, echo_table
from avengers_store.cli.param_types import Duration

from avengers_store.production.drift import drift, plot_drift


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


@click.command("drift", cls=Command)
@click.option("--since", type=Duration(), default="7d", show_default=True,
              help="Window: requests and feedback of the last N (s, m, h, d, w).")  # fmt: skip
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Also write the shares per cluster and the OOD rate per day to this PNG.")  # fmt: skip
@options.json_output
def command(since: timedelta, plot: str | None, as_json: bool) -> None:
    """Has production moved away from the calibration? Per cluster of the active clustering.

    Prints each cluster's share of the calibration queries against its share of the requests
    routed in the window, its out-of-distribution requests, and the models whose production
    mean (feedback) left the calibration interval; '!' marks those clusters. Then the OOD rate
    per day. The same data: SQL views avengers.traffic_drift, ood_daily and outcome_drift.

    \b
    Example:
      avengers drift
      avengers drift --since 30d --plot drift.png
      avengers drift --since 12h --json
    """
    report = drift(since)
    path = plot_drift(report, plot) if plot else None
    if as_json:
        echo_json({"drifted_clusters": report.drifted_clusters, **report.__dict__,
                   "plot": str(path) if path else None})  # fmt: skip
        return
    left: dict[int, list[str]] = {}
    for o in report.outcomes:
        if o.outside:
            side = "<" if o.production_mean < (o.wilson_low or 0) else ">"
            left.setdefault(o.cluster, []).append(
                f"{o.model} {o.production_mean:.2f} (n {o.production_n}) {side} "
                f"[{o.wilson_low:.2f}, {o.wilson_high:.2f}]"
            )
    click.echo(
        f"clustering {report.clustering_id}: {report.routed} requests routed since "
        f"{report.since:%Y-%m-%d %H:%M %Z}, "
        f"{sum(o.production_n for o in report.outcomes)} feedback rows"
    )
    echo_table(
        [
            {
                "": "!" if t.cluster in left else "",
                "cluster": t.cluster,
                "calibration": _pct(t.calibration_share),
                "routed": _pct(t.routed_share),
                "ratio": "" if t.share_ratio is None else f"{t.share_ratio:.2f}",
                "requests": t.routed,
                "ood": t.ood,
                "production mean outside calibration interval": "; ".join(left.get(t.cluster, [])),
            }
            for t in report.traffic
        ]
    )
    if report.daily:
        click.echo("")
        echo_table(
            [
                {
                    "day": d.day.isoformat(),
                    "clustering": d.clustering_id,
                    "requests": d.routed,
                    "ood": d.ood,
                    "ood rate": _pct(d.ood_rate),
                    "mean distance": d.mean_distance,
                    "mean novelty": d.mean_novelty,
                }
                for d in report.daily
            ]
        )
    if path is not None:
        click.echo(f"plot written to {path}", err=True)
