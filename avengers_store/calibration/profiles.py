"""Capability profiles: the ``cluster_profiles`` materialized view and what reads it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from avengers_store import figures
from avengers_store.errors import InputError, NotFound, StoreStateError
from avengers_store.store import connections


def refresh_profiles(conn: psycopg.Connection) -> None:
    """Recompute the served profiles inside the caller's transaction (readers see the old rows
    until it commits). Call after anything that changes outcomes, models' active flags or the
    active clustering."""
    conn.execute("CALL avengers.refresh_profiles()")


@dataclass(frozen=True)
class ProfileEntry:
    """One cell of the capability profile: a model on the calibration queries of one cluster
    (``n``, ``mean_score``, the Wilson bounds and ranks), and beside it the production outcomes
    served for it (``production_*``, from feedback) and the two pooled at the clustering's
    production weight (``pooled_mean``)."""

    clustering_id: int
    cluster: int
    cluster_size: int
    model: str
    active: bool
    n: int
    mean_score: float
    wilson_low: float
    wilson_high: float
    rank: int
    active_rank: int | None
    overall_score: float
    production_n: int = 0
    production_mean: float | None = None
    production_decayed_n: float = 0.0
    pooled_mean: float | None = None


_FIELDS = (
    "p.clustering_id, p.cluster, p.cluster_size, p.model, p.active, p.n, p.mean_score, "
    "p.wilson_low, p.wilson_high, p.rank, p.active_rank, p.overall_score, r.production_n, "
    "r.production_mean, r.production_decayed_n, r.pooled_mean"
)


def _require_active(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT id FROM avengers.active_clustering").fetchone()
    if row is None:
        raise StoreStateError(
            "no active clustering, so no profiles yet: run `avengers recluster` "
            "(after `avengers embed`)"
        )
    return row[0]


def get_profiles(
    cluster: int | None = None,
    model: str | None = None,
    *,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> list[ProfileEntry]:
    """Served profiles of the active clustering, by cluster then rank; optionally one cluster
    and/or one model."""
    with connections.connection(url, conn=conn) as c:
        clustering_id = _require_active(c)
        if cluster is not None:
            known = c.execute(
                "SELECT k FROM avengers.clusterings WHERE id = %s", (clustering_id,)
            ).fetchone()[0]
            if not 0 <= cluster < known:
                raise InputError(
                    f"cluster {cluster} does not exist: clustering {clustering_id} has "
                    f"clusters 0..{known - 1}",
                    location="cluster",
                )
        if (
            model is not None
            and not c.execute("SELECT 1 FROM avengers.models WHERE name = %s", (model,)).fetchone()
        ):
            raise NotFound(f"model {model!r} is not in the pool (see `avengers models list`)")
        rows = c.execute(
            f"""SELECT {_FIELDS} FROM avengers.cluster_profiles p
                JOIN avengers.cluster_ranks r ON r.cluster = p.cluster AND r.model = p.model
                WHERE p.clustering_id = r.clustering_id
                  AND (%(cluster)s::integer IS NULL OR p.cluster = %(cluster)s)
                  AND (%(model)s::text IS NULL OR p.model = %(model)s)
                ORDER BY p.cluster, p.rank""",
            {"cluster": cluster, "model": model},
        ).fetchall()
    return [ProfileEntry(*row) for row in rows]


@dataclass(frozen=True)
class ProfileMatrix:
    """Profiles as a clusters x models grid of mean scores (NaN where a model has no outcome),
    clusters grouped by their best model and models ordered by overall score."""

    clustering_id: int
    clusters: tuple[int, ...]
    sizes: tuple[int, ...]
    models: tuple[str, ...]
    means: tuple[tuple[float, ...], ...]
    winners: tuple[str, ...]


def profile_matrix(entries: Sequence[ProfileEntry]) -> ProfileMatrix:
    if not entries:
        raise StoreStateError("no profile rows: import outcomes for the clustered queries")
    overall = {}
    for e in entries:
        overall[e.model] = e.overall_score
    models = sorted(overall, key=lambda m: (-overall[m], m))
    cells: dict[int, dict[str, float]] = {}
    sizes: dict[int, int] = {}
    winner: dict[int, str] = {}
    for e in entries:
        cells.setdefault(e.cluster, {})[e.model] = e.mean_score
        sizes[e.cluster] = e.cluster_size
        if e.rank == 1:
            winner[e.cluster] = e.model
    position = {m: i for i, m in enumerate(models)}
    # Clusters won by the same model sit together (in model order), the clearest wins first.
    clusters = sorted(
        cells,
        key=lambda c: (position[winner[c]], -cells[c][winner[c]], -sizes[c], c),
    )
    means = tuple(tuple(cells[c].get(m, math.nan) for m in models) for c in clusters)
    return ProfileMatrix(
        clustering_id=entries[0].clustering_id,
        clusters=tuple(clusters),
        sizes=tuple(sizes[c] for c in clusters),
        models=tuple(models),
        means=means,
        winners=tuple(winner[c] for c in clusters),
    )


def plot_profiles(
    path: str | Path,
    entries: Sequence[ProfileEntry] | None = None,
    *,
    title: str | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> Path:
    """Write the cluster x model heatmap of mean scores to ``path`` (PNG); returns the path.

    Rows are clusters grouped by their best model, columns models by overall score; the best
    model of each cluster is outlined.
    """
    plt = figures.pyplot()
    import numpy as np
    from matplotlib.patches import Rectangle

    if entries is None:
        entries = get_profiles(url=url, conn=conn)
    grid = profile_matrix(entries)
    data = np.array(grid.means, dtype=float)
    n_clusters, n_models = data.shape
    annotate = n_clusters <= 40
    height = max(3.5, 0.24 * n_clusters + 2.4)
    width = max(6.0, 0.9 * n_models + 3.5)
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    image = ax.imshow(
        np.ma.masked_invalid(data),
        aspect="auto",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    short = [m.rsplit("/", 1)[-1] for m in grid.models]
    labels = short if len(set(short)) == len(short) else list(grid.models)
    ax.set_xticks(range(n_models))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n_clusters))
    ax.set_yticklabels(
        [f"c{c}  (n={s})" for c, s in zip(grid.clusters, grid.sizes, strict=True)],
        fontsize=7 if n_clusters > 24 else 8,
    )
    ax.set_xlabel("model (by overall calibration score)")
    ax.set_ylabel("cluster (grouped by best model)")
    for row, best in enumerate(grid.winners):
        col = grid.models.index(best)
        ax.add_patch(
            Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.4)
        )
    if annotate:
        for (row, col), value in np.ndenumerate(data):
            if not math.isnan(value):
                ax.text(
                    col,
                    row,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="black" if value > 0.6 else "white",
                )
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("mean score on the cluster's calibration queries")
    ax.set_title(
        title
        or f"Capability profiles, clustering {grid.clustering_id} "
        f"({n_clusters} clusters; red: best model)",
        fontsize=10,
    )
    return figures.save(fig, path)
