"""``avengers recluster``: fit a new clustering version and serve it."""

from __future__ import annotations

import sys

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.output import echo_json

from avengers_store.calibration.reclustering import recluster


@click.command("recluster", cls=Command, flags={"activate": "--no-activate"})
@options.k()
@options.algorithm
@options.stratify(
    default="dataset",
    help="dataset: fit each calibration dataset on its own, k split in proportion to size, so no "
    "cluster mixes datasets at fit time; none: one fit over all queries (the paper's recipe).",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Random seed of the fit.")
@click.option(
    "--keep",
    type=int,
    help="Afterwards keep only the N newest non-active versions (older ones are deleted).",
)
@click.option(
    "--no-activate",
    "no_activate",
    is_flag=True,
    help="Store the version as ready without serving it (activate later with "
    "`avengers clusterings activate ID`).",
)
@click.option(
    "--with-production",
    is_flag=True,
    help="Fit on the logged embeddings of routed queries too (clients with log_vectors), so "
    "production traffic shapes the clusters; only calibration queries are profiled.",
)
@options.json_output
def command(k, algorithm, stratify, seed, keep, no_activate, with_production, as_json) -> None:
    """Cluster the calibration queries of non-OOD datasets in the active embedding space.

    Writes a new clustering version (centroids = member means; every query assigned to its
    nearest centroid, the rule routing uses), refreshes profiles and switches the served
    version in one transaction: routers see the old or the new version, never a mix, and a
    failure leaves the previous one serving. Above 50,000 vectors kmeans runs as MiniBatchKMeans.

    \b
    Example:
      avengers recluster --k 64
      avengers recluster --k 64 --stratify none
      avengers recluster --k 32 --algorithm ward --no-activate
      avengers recluster --keep 3
      avengers recluster --with-production     # production traffic joins the fit
    """
    result = recluster(
        k=k,
        algorithm=algorithm,
        stratify=stratify,
        seed=seed,
        keep=keep,
        activate=not no_activate,
        with_production=with_production,
        progress=sys.stderr.isatty(),
    )
    if as_json:
        echo_json({**result.__dict__, "previous_active": result.replaced})
        return
    note = result.params.get("fit")
    shrunk = (
        f" ({result.params['requested_k'] - result.k} empty clusters dropped)"
        if result.k < result.params.get("requested_k", result.k)
        else ""
    )
    click.echo(
        f"clustering {result.id}: {algorithm} k={result.k}{shrunk} on {result.n_queries:,} "
        f"calibration queries (stratify={stratify}), inertia {result.inertia:.2f}"
        + (f"; fitted as {note}" if note else "")
    )
    if result.status == "active":
        # The version replaced is the one read when this switch held the lock, not before the
        # fit: another re-cluster may have switched in between.
        previous = result.replaced
        click.echo(
            f"now active (was {previous or 'none'}); profiles refreshed"
            + (f". Roll back: avengers clusterings activate {previous}" if previous else "")
        )
    else:
        click.echo(f"stored as ready; serve it with: avengers clusterings activate {result.id}")
