"""``avengers models select``: keep the budget's worth of models with the highest s(m)."""

from __future__ import annotations

import dataclasses

import click
from avengers_store.cli.models import command as models
from avengers_store.cli.output import echo_json, echo_table

from avengers_store.calibration.model_selection import select_models


@models.command("select")
@click.option("--budget", type=int, required=True, help="Number of models to keep.")
@click.option(
    "--apply",
    is_flag=True,
    help="Make exactly the chosen models active (the rest inactive) and refresh profiles.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def select_cmd(budget: int, apply: bool, as_json: bool) -> None:
    """Score every model by s(m) = sum over clusters of 1/rank (the paper's model-set selection,
    over the active clustering; ties: overall calibration score, then name) and keep the top
    BUDGET. Without --apply nothing changes.

    \b
    Example:
      avengers models select --budget 3
      avengers models select --budget 3 --apply
    """
    result = select_models(budget, apply=apply)
    if as_json:
        echo_json(dataclasses.asdict(result))
        return
    echo_table(
        [dataclasses.asdict(s) for s in result.scores],
        [
            "selection_rank",
            "model",
            "selection_score",
            "clusters_won",
            "clusters_ranked",
            "overall_score",
            "selected",
            "active",
        ],
    )
    chosen = ", ".join(result.selected)
    if len(result.selected) < budget:
        click.echo(f"only {len(result.selected)} models have outcomes to rank")
    if apply:
        click.echo(f"active models now: {chosen} (profiles refreshed)")
    else:
        click.echo(f"selected: {chosen}  (add --apply to make them the active set)")
