"""``avengers clusterings``: list stored clustering versions, switch, configure or delete one."""

from __future__ import annotations

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Group
from avengers_store.cli.output import echo_json, emit
from avengers_store.cli.param_types import Duration

from avengers_store.calibration.clusterings import (
    activate_clustering,
    list_clusterings,
    remove_clustering,
)
from avengers_store.production import settings as loop


@click.group("clusterings", cls=Group)
def command() -> None:
    """Stored clustering versions: list them, serve one, configure one, delete old ones.

    \b
    Example:
      avengers clusterings list
      avengers clusterings activate 3
      avengers clusterings configure --production-weight 0.5 --half-life 7d
    """


@command.command("list")
@options.output_format
def list_cmd(fmt: str) -> None:
    """Every clustering version, newest first; status active is the one served.

    \b
    Example:
      avengers clusterings list --json
    """
    rows = [
        {
            "id": c.id,
            "status": c.status,
            "algorithm": c.algorithm,
            # Versions from before per-dataset fits have no "stratify": they are one fit.
            "stratify": c.params.get("stratify", "none"),
            "k": c.k,
            "seed": c.seed,
            "n_queries": c.n_queries,
            "inertia": c.inertia,
            "space_id": c.space_id,
            "created_at": c.created_at,
            "activated_at": c.activated_at,
            **({"params": c.params} if fmt == "json" else {}),
        }
        for c in list_clusterings()
    ]
    emit(rows, fmt)


@command.command("activate")
@click.argument("clustering_id", type=int)
def activate_cmd(clustering_id: int) -> None:
    """Serve version CLUSTERING_ID (e.g. roll back), refreshing profiles in the same
    transaction. Same as `CALL avengers.activate_clustering(ID)` in psql.

    \b
    Example:
      avengers clusterings activate 3
    """
    result = activate_clustering(clustering_id)
    was = (
        f" (was {result.replaced or 'none'})" if result.replaced != result.id else " (already was)"
    )
    click.echo(f"clustering {result.id} ({result.algorithm}, k={result.k}) is active{was}")


@command.command("remove")
@click.argument("clustering_id", type=int)
@options.yes
def remove_cmd(clustering_id: int, yes: bool) -> None:
    """Delete a non-active version with its centroids and assignments.

    \b
    Example:
      avengers clusterings remove 2 --yes
    """
    if not yes:
        click.confirm(f"Delete clustering {clustering_id}?", abort=True)
    remove_clustering(clustering_id)
    click.echo(f"removed clustering {clustering_id}")


@command.command("configure")
@click.argument("clustering_id", type=int, required=False)
@click.option("--production-weight", type=float,
              help="Weight of one feedback row against one calibration outcome (0: calibration "
              "only, the static router).")  # fmt: skip
@click.option("--half-life", type=Duration(), help="Half-life of feedback rows, e.g. 14d.")
@click.option("--exploration", type=click.Choice(loop.EXPLORATION),
              help="off, targeted (a plausibly better candidate first for up to "
              "--exploration-share of requests), thompson (rank by Beta posterior draws) or "
              "epsilon (a random candidate first for --exploration-share of requests).")  # fmt: skip
@click.option("--exploration-share", type=float,
              help="targeted's and epsilon's share of requests, in [0,1].")  # fmt: skip
@click.option("--exploration-overlap", type=float,
              help="targeted: the chance of beating the leader from which a candidate is "
              "plausible, in [0,1).")  # fmt: skip
@click.option("--ood-quantile", type=float,
              help="Calibration quantile of scaled distances above which a query is OOD.")  # fmt: skip
@click.option("--change-threshold", type=float,
              help="z-score above which a model's feedback says it changed (default 3).")  # fmt: skip
@options.json_output
def configure_cmd(
    clustering_id, production_weight, half_life, exploration, exploration_share,
    exploration_overlap, ood_quantile, change_threshold, as_json,
) -> None:  # fmt: skip
    """Show or change the loop's settings of version CLUSTERING_ID (default: the active one).

    Without options, prints them. Changing the half-life recounts the version's production
    outcomes, changing the OOD quantile its distance statistics; routing sees the change when
    the command returns. New versions (recluster) start with the active version's settings.

    \b
    Example:
      avengers clusterings configure
      avengers clusterings configure --production-weight 0     # calibration only
      avengers clusterings configure 3 --half-life 7d --exploration thompson
    """
    result = loop.configure(
        clustering_id,
        production_weight=production_weight,
        half_life=half_life,
        exploration=exploration,
        exploration_share=exploration_share,
        exploration_overlap=exploration_overlap,
        ood_quantile=ood_quantile,
        change_threshold=change_threshold,
    )
    if as_json:
        echo_json({**result.__dict__, "half_life_s": result.half_life.total_seconds()})
        return
    explore = result.exploration
    if explore == "epsilon":
        explore += f" (share {result.exploration_share:g})"
    elif explore == "targeted":
        explore += f" (share {result.exploration_share:g}, overlap {result.exploration_overlap:g})"
    click.echo(
        f"clustering {result.clustering_id}: production weight {result.production_weight:g}, "
        f"half-life {result.half_life}, change threshold {result.change_threshold:g}, "
        f"exploration {explore}, OOD quantile {result.ood_quantile:g}"
    )
