"""Re-clustering: fit k clusters on the calibration embeddings and switch the served version.

One rule assigns queries everywhere: the nearest centroid by Euclidean distance (pgvector ``<->``),
which is what routing does at query time. Whatever the algorithm, the stored centroids are the
member means of the clusters it found, and every calibration query is then assigned to its nearest
stored centroid (for a converged K-means this changes nothing; for Ward, GMM, spectral or BIRCH a
few border queries move). Clusters left empty by that reassignment are dropped, and clusters are
numbered by size, largest first, so ``k`` of a version can be below the requested k (the request
is kept in ``params.requested_k``).

By default the fit is stratified by dataset (``stratify="dataset"``): each calibration dataset is
clustered on its own with a share of k proportional to its size, and the centroids are pooled
before the reassignment above. A plain fit over everything lets a large dataset's queries dominate
the clusters it shares with a smaller, similar one (MMLU and ARC-Challenge), and such a mixed
cluster ranks the large dataset's best model first for both; docs/evaluation.md has the
measurements. Two datasets that cover exactly the same ground get coincident centroids, and the
reassignment empties one of each pair: k then falls below the request. ``stratify="none"`` is one
fit over all calibration queries (the paper's recipe).

With ``with_production`` the embeddings of routed queries that clients logged
(``avengers.route_vectors``, ``log_vectors``) join the fit as one more group: production traffic
then shapes the centroids, and a kind of question calibration never had gets clusters of its
own. Only calibration queries are assigned and profiled; a cluster without any (size 0) is scored
from its neighbours and the priors until feedback on its traffic comes in.

The whole switch — the new version row, its centroids and assignments, the activation and the
profile refresh — is one transaction: a concurrent router sees the old version or the new one,
never a mix, and a failure anywhere leaves the previous version serving.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import psycopg

from avengers_store.arguments import one_of
from avengers_store.calibration import embedding_spaces
from avengers_store.calibration.clusterings import (
    Clustering,
    get_clustering,
    lock_for_activation,
    prune_clusterings,
    store_partition,
)
from avengers_store.calibration.fit import (
    ALGORITHMS,
    STRATIFY,
    Partition,
    fit_labels,
    fit_stratified,
    partition,
)
from avengers_store.errors import AvengersError, InputError, StoreStateError
from avengers_store.store import connections
from avengers_store.store.queries import query


def _as_array(value) -> np.ndarray:
    # pgvector's binary loader gives Vector objects, the text loader numpy arrays.
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value, np.float32)


def calibration_vectors(
    conn: psycopg.Connection, space_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query ids, float32 vectors, dataset names) of calibration queries of non-OOD datasets
    in a space."""
    with conn.cursor(binary=True) as cur:
        cur.execute(
            query("calibration", "calibration_vectors"),
            (space_id,),
        )
        rows = cur.fetchall()
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros((0, 0), dtype=np.float32), empty.astype(object)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.stack([_as_array(r[1]) for r in rows]).astype(np.float32, copy=False)
    names = np.array([r[2] for r in rows], dtype=object)
    return ids, vectors, names


PRODUCTION_GROUP = "(production)"


def production_vectors(conn: psycopg.Connection, space_id: int) -> np.ndarray:
    """The logged embeddings of routed queries in a space (``avengers.route_vectors``)."""
    with conn.cursor(binary=True) as cur:
        cur.execute(
            "SELECT embedding FROM avengers.route_vectors WHERE space_id = %s ORDER BY route_id",
            (space_id,),
        )
        rows = cur.fetchall()
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([_as_array(r[0]) for r in rows]).astype(np.float32, copy=False)


def _check_calibration_set(
    conn: psycopg.Connection, space: embedding_spaces.Space
) -> dict[str, int]:
    row = conn.execute(
        query("calibration", "stratify_counts"),
        {"s": space.id},
    ).fetchone()
    n, missing, scored = row
    if n == 0:
        raise StoreStateError(
            "no calibration queries in non-OOD datasets: load data first "
            "(`avengers datasets add` or `avengers load-table`)"
        )
    if missing == n:
        raise StoreStateError(
            f"no embeddings: none of the {n} calibration queries has a vector in the active "
            f"space {space.id} ({space.embedder}); run `avengers embed` first"
        )
    if missing:
        raise StoreStateError(
            f"{missing} of {n} calibration queries have no vector in the active space "
            f"{space.id} ({space.embedder}); run `avengers embed` (it embeds only those)"
        )
    if scored == 0:
        raise StoreStateError(
            f"no outcomes: none of the {n} calibration queries has an outcome; import them "
            "with `avengers outcomes import` before re-clustering"
        )
    return {"calibration_queries": n, "scored_queries": scored}


class _Phases:
    """A tqdm bar over the named phases of a re-cluster."""

    def __init__(self, names: list[str], enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=len(names), desc="recluster", unit="step", file=sys.stderr, disable=not enabled
        )

    def start(self, name: str) -> None:
        self.bar.set_postfix_str(name)

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def recluster(
    k: int = 64,
    algorithm: str = "kmeans",
    seed: int = 42,
    keep: int | None = None,
    *,
    stratify: str = "dataset",
    activate: bool = True,
    with_production: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    progress: bool = False,
) -> Clustering:
    """Fit a new clustering version on the calibration queries of non-OOD datasets in the active
    space, store it and (unless ``activate=False``) serve it, all in one transaction.

    ``stratify``: ``"dataset"`` fits each calibration dataset on its own with k split in
    proportion to dataset size (see the module docstring); ``"none"`` fits all queries at once.
    ``keep``: afterwards delete all but the ``keep`` newest non-active versions. The result's
    ``replaced`` is the version it took over from, read under the lock of the switch, so it is
    right when re-clusters run at once (they switch one after the other).
    ``with_production``: fit on the logged embeddings of routed queries too (module docstring).
    """
    one_of(stratify, STRATIFY, "stratify", "stratify")
    one_of(algorithm, ALGORITHMS, "algorithm", "algorithm")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", location="k")
    if keep is not None and keep < 0:
        raise InputError(f"keep must be 0 or more, got {keep}", location="keep")
    phases = _Phases(["read", "fit", "assign", "write", "activate"], progress)
    try:
        with connections.connection(url, conn=conn) as c, c.transaction():
            space = embedding_spaces.active_space(c)
            if space is None:
                raise StoreStateError(
                    "no embeddings: no embedding space exists yet; run `avengers embed` first"
                )
            counts = _check_calibration_set(c, space)
            phases.start("read vectors")
            query_ids, vectors, dataset_names = calibration_vectors(c, space.id)
            phases.done()
            n = len(query_ids)
            if k > n:
                raise InputError(
                    f"k={k} is larger than the number of calibration queries ({n}); "
                    f"choose a smaller k (e.g. {max(1, min(64, n // 10 or 1))}) or load more data",
                    location="k",
                )
            extra = production_vectors(c, space.id) if with_production else np.zeros((0, 0))
            fitted_vectors, groups = vectors, dataset_names
            if len(extra):
                fitted_vectors = np.vstack([vectors, extra])
                groups = np.concatenate(
                    [dataset_names, np.full(len(extra), PRODUCTION_GROUP, dtype=object)]
                )
            phases.start(
                f"fit {algorithm} k={k} on {len(fitted_vectors):,} vectors, stratify={stratify}"
            )
            try:
                if stratify == "dataset":
                    labels, fit_params = fit_stratified(fitted_vectors, groups, k, algorithm, seed)
                else:
                    labels, fit_params = fit_labels(fitted_vectors, k, algorithm, seed)
                    fit_params["stratify"] = "none"
            except AvengersError:
                raise
            except (ValueError, MemoryError, np.linalg.LinAlgError) as exc:
                raise AvengersError(f"{algorithm} fit failed on {n} vectors: {exc}") from exc
            phases.done()
            phases.start("assign to nearest centroid")
            part = partition(fitted_vectors, labels)
            if len(extra):
                # Centroids of everything fitted; assignments and sizes of calibration only.
                part = Partition(
                    centroids=part.centroids,
                    sizes=np.bincount(part.labels[:n], minlength=len(part.centroids)),
                    labels=part.labels[:n],
                    distances=part.distances[:n],
                )
            phases.done()
            phases.start("write centroids and assignments")
            # Before the version is written: what it replaces is read under the switch's lock.
            replaced = lock_for_activation(c) if activate else None
            # Every calibration query has a vector (checked above), so these are the counts.
            names, sizes = np.unique(dataset_names, return_counts=True)
            params = {
                "requested_k": k,
                **fit_params,
                "assignment": "nearest member-mean centroid (Euclidean)",
                "datasets": dict(zip(names.tolist(), sizes.tolist(), strict=True)),
                **counts,
            }
            if with_production:
                params["production_vectors"] = len(extra)
            stored = store_partition(
                c,
                space.id,
                query_ids,
                part,
                algorithm=algorithm,
                seed=seed,
                params=params,
                activate=False,
                vectors=vectors,
            )
            clustering_id = stored.id
            phases.done()
            phases.start("activate and refresh profiles")
            if activate:
                c.execute("CALL avengers.activate_clustering(%s)", (clustering_id,))
            if keep is not None:
                prune_clusterings(keep, exclude=(clustering_id,), conn=c)
            phases.done()
            return dataclasses.replace(get_clustering(clustering_id, conn=c), replaced=replaced)
    finally:
        phases.close()
