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

The whole switch — the new version row, its centroids and assignments, the activation and the
profile refresh — is one transaction: a concurrent router sees the old version or the new one,
never a mix, and a failure anywhere leaves the previous version serving.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from avengers_store.calibration import embedding_spaces
from avengers_store.errors import AvengersError, InputError, NotFound, StoreStateError
from avengers_store.store import connections

ALGORITHMS = ("kmeans", "minibatch-kmeans", "ward", "gmm", "spectral", "birch")
# Above this many vectors "kmeans" runs as MiniBatchKMeans: full Lloyd passes get slow on 2 cores.
MINIBATCH_THRESHOLD = 50_000
KMEANS_N_INIT = 4
STRATIFY = ("dataset", "none")
# Ward keeps an n x n distance matrix; spectral an eigensolve of an n-node graph.
MAX_VECTORS = {"ward": 20_000, "spectral": 50_000}

_COLUMNS = (
    "id, space_id, k, algorithm, seed, n_queries, inertia, status, created_at, activated_at, params"
)


@dataclass(frozen=True)
class Clustering:
    id: int
    space_id: int
    k: int
    algorithm: str
    seed: int | None
    n_queries: int | None
    inertia: float | None
    status: str
    created_at: datetime
    activated_at: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _clustering(row) -> Clustering:
    return Clustering(
        id=row[0],
        space_id=row[1],
        k=row[2],
        algorithm=row[3],
        seed=row[4],
        n_queries=row[5],
        inertia=row[6],
        status=row[7],
        created_at=row[8],
        activated_at=row[9],
        params=dict(row[10] or {}),
    )


def get_clustering(clustering_id: int, *, url: str | None = None, conn=None) -> Clustering:
    with connections.connection(url, conn=conn) as c:
        row = c.execute(
            f"SELECT {_COLUMNS} FROM avengers.clusterings WHERE id = %s", (clustering_id,)
        ).fetchone()
    if row is None:
        raise NotFound(
            f"clustering {clustering_id} does not exist (see `avengers clusterings list`)"
        )
    return _clustering(row)


def active_clustering(*, url: str | None = None, conn=None) -> Clustering | None:
    with connections.connection(url, conn=conn) as c:
        row = c.execute(
            f"SELECT {_COLUMNS} FROM avengers.clusterings WHERE status = 'active'"
        ).fetchone()
    return _clustering(row) if row else None


def list_clusterings(*, url: str | None = None, conn=None) -> list[Clustering]:
    """Every stored version, newest first."""
    with connections.connection(url, conn=conn) as c:
        rows = c.execute(f"SELECT {_COLUMNS} FROM avengers.clusterings ORDER BY id DESC").fetchall()
    return [_clustering(r) for r in rows]


def activate_clustering(clustering_id: int, *, url: str | None = None, conn=None) -> Clustering:
    """Serve version ``clustering_id`` (``CALL avengers.activate_clustering``): switch and profile
    refresh in one transaction. Rolling back to an earlier version is the same call."""
    with connections.connection(url, conn=conn) as c:
        try:
            with c.transaction():
                c.execute("CALL avengers.activate_clustering(%s)", (clustering_id,))
        except psycopg.errors.RaiseException as exc:
            message = exc.diag.message_primary or str(exc)
            if "does not exist" in message:
                raise NotFound(f"{message} (see `avengers clusterings list`)") from exc
            raise StoreStateError(message) from exc
        return get_clustering(clustering_id, conn=c)


def remove_clustering(clustering_id: int, *, url: str | None = None, conn=None) -> None:
    """Delete a non-active version with its centroids and assignments."""
    with connections.connection(url, conn=conn) as c:
        found = get_clustering(clustering_id, conn=c)
        if found.status == "active":
            raise StoreStateError(
                f"clustering {clustering_id} is active: activate another version first "
                "(`avengers clusterings activate ID`)"
            )
        c.execute("DELETE FROM avengers.clusterings WHERE id = %s", (clustering_id,))


def prune_clusterings(
    keep: int, *, exclude: tuple[int, ...] = (), url: str | None = None, conn=None
) -> list[int]:
    """Delete all but the ``keep`` newest non-active versions (never those in ``exclude``);
    returns the deleted ids."""
    if keep < 0:
        raise InputError("--keep must be 0 or more", location="keep")
    with connections.connection(url, conn=conn) as c:
        rows = c.execute(
            """DELETE FROM avengers.clusterings
               WHERE id IN (SELECT id FROM avengers.clusterings
                            WHERE status <> 'active' AND id <> ALL(%s)
                            ORDER BY id DESC OFFSET %s)
               RETURNING id""",
            (list(exclude), keep),
        ).fetchall()
    return sorted(r[0] for r in rows)


# --- reading the calibration set -------------------------------------------------------------


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
            """SELECT q.id, e.embedding, d.name
               FROM avengers.queries q
               JOIN avengers.datasets d ON d.id = q.dataset_id AND NOT d.is_ood
               JOIN avengers.query_embeddings e ON e.query_id = q.id AND e.space_id = %s
               WHERE q.split = 'calibration'
               ORDER BY q.id""",
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


def _check_calibration_set(
    conn: psycopg.Connection, space: embedding_spaces.Space
) -> dict[str, int]:
    row = conn.execute(
        """SELECT count(*) AS n,
                  count(*) FILTER (WHERE NOT EXISTS (
                      SELECT 1 FROM avengers.query_embeddings e
                      WHERE e.query_id = q.id AND e.space_id = %(s)s)) AS missing,
                  count(*) FILTER (WHERE EXISTS (
                      SELECT 1 FROM avengers.outcomes o WHERE o.query_id = q.id)) AS scored
           FROM avengers.queries q
           JOIN avengers.datasets d ON d.id = q.dataset_id AND NOT d.is_ood
           WHERE q.split = 'calibration'""",
        {"s": space.id},
    ).fetchone()
    n, missing, scored = row
    if n == 0:
        raise StoreStateError(
            "no calibration queries in non-OOD datasets: load data first "
            "(`avengers dataset add` or `avengers load-table`)"
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


# --- fitting ---------------------------------------------------------------------------------


def fit_labels(
    vectors: np.ndarray, k: int, algorithm: str, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster labels from a scikit-learn fit, and the parameters actually used."""
    from sklearn import cluster, mixture

    n = len(vectors)
    # float64: scikit-learn's distance kernels upcast float32 in small chunks, ~3x slower here.
    vectors = np.asarray(vectors, dtype=np.float64)
    params: dict[str, Any] = {}
    if algorithm == "kmeans" and n > MINIBATCH_THRESHOLD:
        algorithm = "minibatch-kmeans"
        params["fit"] = f"minibatch-kmeans (more than {MINIBATCH_THRESHOLD:,} vectors)"
    limit = MAX_VECTORS.get(algorithm)
    if limit is not None and n > limit:
        raise InputError(
            f"{algorithm} is limited to {limit:,} vectors here (got {n:,}); use --algorithm kmeans",
            location="--algorithm",
        )
    with warnings.catch_warnings():
        # Duplicate texts across datasets give fewer distinct points than k; sklearn warns.
        warnings.simplefilter("ignore", category=UserWarning)
        if algorithm == "kmeans":
            params.update(n_init=KMEANS_N_INIT, algorithm="lloyd")
            model = cluster.KMeans(
                n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed, algorithm="lloyd"
            )
            labels = model.fit_predict(vectors)
        elif algorithm == "minibatch-kmeans":
            batch = min(max(4096, 16 * k), n)
            params.update(n_init=3, batch_size=batch)
            model = cluster.MiniBatchKMeans(
                n_clusters=k, n_init=3, batch_size=batch, random_state=seed
            )
            labels = model.fit_predict(vectors)
        elif algorithm == "ward":
            params.update(linkage="ward")
            labels = cluster.AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(
                vectors
            )
        elif algorithm == "gmm":
            params.update(covariance_type="diag", reg_covar=1e-4)
            model = mixture.GaussianMixture(
                n_components=k, covariance_type="diag", reg_covar=1e-4, random_state=seed
            )
            labels = model.fit(vectors).predict(vectors)
        elif algorithm == "spectral":
            neighbours = max(2, min(10, n - 1))
            params.update(affinity="nearest_neighbors", n_neighbors=neighbours)
            labels = cluster.SpectralClustering(
                n_clusters=k,
                affinity="nearest_neighbors",
                n_neighbors=neighbours,
                assign_labels="cluster_qr",
                random_state=seed,
            ).fit_predict(vectors)
        elif algorithm == "birch":
            params.update(threshold=0.3)
            labels = cluster.Birch(n_clusters=k, threshold=0.3).fit_predict(vectors)
        else:
            raise InputError(
                f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}",
                location="--algorithm",
            )
    return np.asarray(labels, dtype=np.int64), params


def stratum_sizes(sizes: dict[str, int], k: int) -> dict[str, int]:
    """Split k over datasets in proportion to their sizes (largest remainder), at least one
    cluster each while k allows and never more clusters than a dataset has queries."""
    names = sorted(sizes)
    n = np.array([sizes[name] for name in names], dtype=np.float64)
    share = n / n.sum() * k
    ks = np.minimum(np.maximum(np.floor(share), 1), n).astype(np.int64)
    while ks.sum() > k:  # more datasets than k: the ones with the least share give way
        ks[int(np.argmax(np.where(ks > 0, ks - share, -np.inf)))] -= 1
    while ks.sum() < k and (ks < n).any():
        ks[int(np.argmax(np.where(ks < n, share - ks, -np.inf)))] += 1
    return {name: int(kd) for name, kd in zip(names, ks, strict=True)}


def fit_stratified(
    vectors: np.ndarray, groups: np.ndarray, k: int, algorithm: str, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """One fit per group (dataset) with k split by :func:`stratum_sizes`; labels are offset so
    the groups' clusters stay distinct. A group given no cluster (more groups than k) keeps label
    -1: :func:`partition` places its queries at their nearest centroid."""
    names, counts = np.unique(groups, return_counts=True)
    per = stratum_sizes(dict(zip(names.tolist(), counts.tolist(), strict=True)), k)
    labels = np.full(len(vectors), -1, dtype=np.int64)
    params: dict[str, Any] = {"stratify": "dataset", "k_per_dataset": per}
    fitted: dict[str, dict[str, Any]] = {}
    notes: dict[str, list[str]] = {}
    offset = 0
    for name in sorted(per):
        if per[name] == 0:
            continue
        rows = np.flatnonzero(groups == name)
        if per[name] == 1:  # one cluster: the dataset's mean, whatever the algorithm
            labels[rows] = offset
            offset += 1
            continue
        sub, sub_params = fit_labels(vectors[rows], per[name], algorithm, seed)
        labels[rows] = sub + offset
        offset += per[name]
        note = sub_params.pop("fit", None)
        if note:
            notes.setdefault(note, []).append(name)
        fitted[name] = sub_params
    if notes:
        params["fit"] = "; ".join(f"{note} in {', '.join(sets)}" for note, sets in notes.items())
    # One set of fit parameters when every dataset used the same, else each dataset's own.
    distinct = {repr(sorted(p.items())) for p in fitted.values()}
    if len(distinct) == 1:
        params.update(next(iter(fitted.values())))
    elif fitted:
        params["fit_per_dataset"] = fitted
    return labels, params


def nearest_centroids(
    vectors: np.ndarray, centroids: np.ndarray, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centroid, Euclidean distance to it) for every vector."""
    c = centroids.astype(np.float64)
    c_sq = (c * c).sum(axis=1)
    labels = np.empty(len(vectors), dtype=np.int64)
    dists = np.empty(len(vectors), dtype=np.float64)
    for start in range(0, len(vectors), chunk):
        x = vectors[start : start + chunk].astype(np.float64)
        sq = (x * x).sum(axis=1)[:, None] - 2.0 * (x @ c.T) + c_sq[None, :]
        best = sq.argmin(axis=1)
        labels[start : start + chunk] = best
        dists[start : start + chunk] = np.sqrt(np.maximum(sq[np.arange(len(x)), best], 0.0))
    return labels, dists


@dataclass(frozen=True)
class Partition:
    """Centroids (member means, float32), nearest-centroid assignments and distances."""

    centroids: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    distances: np.ndarray

    @property
    def inertia(self) -> float:
        return float((self.distances.astype(np.float64) ** 2).sum())


def partition(vectors: np.ndarray, labels: np.ndarray) -> Partition:
    """Member means of ``labels`` (-1: no cluster of its own), then nearest-centroid
    reassignment of every vector; empty clusters dropped and clusters renumbered by size (largest
    first)."""
    found = np.unique(labels[labels >= 0])
    means = np.stack([vectors[labels == lab].astype(np.float64).mean(axis=0) for lab in found])
    # Assign against the float32 values that will be stored, as the database will compare them.
    means = means.astype(np.float32)
    nearest, _ = nearest_centroids(vectors, means)
    counts = np.bincount(nearest, minlength=len(means))
    order = sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
    kept = means[order]
    final, dists = nearest_centroids(vectors, kept)
    return Partition(
        centroids=kept,
        sizes=np.bincount(final, minlength=len(kept)),
        labels=final,
        distances=dists,
    )


# --- writing ---------------------------------------------------------------------------------


def _write_centroids(conn: psycopg.Connection, clustering_id: int, part: Partition) -> None:
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY avengers.centroids (clustering_id, cluster, centroid, size) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["integer", "integer", "vector", "integer"])
        for cluster_index, (centroid, size) in enumerate(
            zip(part.centroids, part.sizes.tolist(), strict=True)
        ):
            copy.write_row((clustering_id, cluster_index, centroid, size))


def _write_assignments(
    conn: psycopg.Connection, clustering_id: int, query_ids: np.ndarray, part: Partition
) -> None:
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY avengers.assignments (clustering_id, query_id, cluster, distance) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["integer", "bigint", "integer", "real"])
        for qid, lab, dist in zip(
            query_ids.tolist(), part.labels.tolist(), part.distances.tolist(), strict=True
        ):
            copy.write_row((clustering_id, qid, lab, dist))


def _prepare_routing(conn: psycopg.Connection, clustering_id: int) -> None:
    """Routing-side structures over the new centroids (an HNSW index for very large k), built
    in the same transaction so the version is servable the moment it is active."""
    from avengers_store.calibration.centroid_index import prepare_centroid_index

    prepare_centroid_index(conn, clustering_id)


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
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    progress: bool = False,
) -> Clustering:
    """Fit a new clustering version on the calibration queries of non-OOD datasets in the active
    space, store it and (unless ``activate=False``) serve it, all in one transaction.

    ``stratify``: ``"dataset"`` fits each calibration dataset on its own with k split in
    proportion to dataset size (see the module docstring); ``"none"`` fits all queries at once.
    ``keep``: afterwards delete all but the ``keep`` newest non-active versions.
    """
    if stratify not in STRATIFY:
        raise InputError(
            f"unknown stratify {stratify!r}; choose one of {', '.join(STRATIFY)}",
            location="--stratify",
        )
    if algorithm not in ALGORITHMS:
        raise InputError(
            f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}",
            location="--algorithm",
        )
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", location="--k")
    if keep is not None and keep < 0:
        raise InputError(f"keep must be 0 or more, got {keep}", location="--keep")
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
                    f"choose --k {max(1, min(64, n // 10 or 1))} or load more data",
                    location="--k",
                )
            phases.start(f"fit {algorithm} k={k} on {n:,} vectors, stratify={stratify}")
            try:
                if stratify == "dataset":
                    labels, fit_params = fit_stratified(vectors, dataset_names, k, algorithm, seed)
                else:
                    labels, fit_params = fit_labels(vectors, k, algorithm, seed)
                    fit_params["stratify"] = "none"
            except AvengersError:
                raise
            except (ValueError, MemoryError, np.linalg.LinAlgError) as exc:
                raise AvengersError(f"{algorithm} fit failed on {n} vectors: {exc}") from exc
            phases.done()
            phases.start("assign to nearest centroid")
            part = partition(vectors, labels)
            phases.done()
            phases.start("write centroids and assignments")
            # Every calibration query has a vector (checked above), so these are the counts.
            names, sizes = np.unique(dataset_names, return_counts=True)
            params = {
                "requested_k": k,
                **fit_params,
                "assignment": "nearest member-mean centroid (Euclidean)",
                "datasets": dict(zip(names.tolist(), sizes.tolist(), strict=True)),
                **counts,
            }
            row = c.execute(
                f"""INSERT INTO avengers.clusterings
                      (space_id, algorithm, k, seed, params, status, n_queries, inertia)
                    VALUES (%s, %s, %s, %s, %s, 'building', %s, %s)
                    RETURNING {_COLUMNS}""",
                (
                    space.id,
                    algorithm,
                    len(part.centroids),
                    seed,
                    Jsonb(params),
                    n,
                    part.inertia,
                ),
            ).fetchone()
            clustering_id = row[0]
            _write_centroids(c, clustering_id, part)
            _write_assignments(c, clustering_id, query_ids, part)
            _prepare_routing(c, clustering_id)
            c.execute(
                "UPDATE avengers.clusterings SET status = 'ready' WHERE id = %s", (clustering_id,)
            )
            phases.done()
            phases.start("activate and refresh profiles")
            if activate:
                c.execute("CALL avengers.activate_clustering(%s)", (clustering_id,))
            if keep is not None:
                prune_clusterings(keep, exclude=(clustering_id,), conn=c)
            phases.done()
            return get_clustering(clustering_id, conn=c)
    finally:
        phases.close()
