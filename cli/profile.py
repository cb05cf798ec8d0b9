"""``avengers profile``: the capability profiles served for routing."""

from __future__ import annotations

import dataclasses

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.output import emit

from avengers_store.calibration.profiles import get_profiles, plot_profiles

COLUMNS = [
    "cluster",
    "cluster_size",
    "model",
    "n",
    "mean_score",
    "wilson_low",
    "wilson_high",
    "rank",
    "active_rank",
    "active",
    "production_n",
    "production_mean",
    "pooled_mean",
]


@click.command("profile", cls=Command)
@click.option("--cluster", type=int, help="Only this cluster.")
@click.option("--model", help="Only this model.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Also write the cluster x model heatmap to this PNG file.",
)
@options.output_format
def command(cluster, model, plot, fmt) -> None:
    """Print the capability profiles of the active clustering.

    Per cluster and model: number of scored calibration queries, mean score, Wilson 95% bounds
    and rank (1 = best; active_rank among active models); beside them the production outcomes
    (feedback rows served, their mean) and the two pooled at the clustering's production weight.

    \b
    Example:
      avengers profile --cluster 3
      avengers profile --model qwen2.5-7b-instruct --csv > qwen.csv
      avengers profile --json > profiles.json
      avengers profile --plot profiles.png
    """
    entries = get_profiles(cluster, model)
    rows = [dataclasses.asdict(e) for e in entries]
    if plot:
        # The heatmap always shows every cluster and model; filters apply to the printed rows.
        path = plot_profiles(plot)
        click.echo(f"heatmap written to {path}", err=fmt != "table")
    emit(rows, fmt, None if fmt == "json" else COLUMNS)
