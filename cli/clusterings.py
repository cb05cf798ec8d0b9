"""``avengers clusterings``: list stored clustering versions, switch or delete one."""

from __future__ import annotations

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Group
from avengers_store.cli.output import emit

from avengers_store.calibration.clusterings import (
    activate_clustering,
    list_clusterings,
    remove_clustering,
)


@click.group("clusterings", cls=Group)
def command() -> None:
    """Stored clustering versions: list them, serve one, delete old ones.

    \b
    Example:
      avengers clusterings list
      avengers clusterings activate 3
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
