"""Clustering fits, pure: vectors in, labels and a ``Partition`` out; no database.

One rule assigns queries everywhere: the nearest centroid by Euclidean distance, which is what
routing does at query time. Whatever the algorithm, ``partition`` takes the member means of the
clusters it found as centroids and reassigns every vector to its nearest one; clusters left empty
are dropped and the rest numbered by size, largest first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from avengers_store.errors import InputError

ALGORITHMS = ("kmeans", "minibatch-kmeans", "ward", "gmm", "spectral", "birch")
# Above this many vectors "kmeans" runs as MiniBatchKMeans: full Lloyd passes get slow on 2 cores.
MINIBATCH_THRESHOLD = 50_000
KMEANS_N_INIT = 4
STRATIFY = ("dataset", "none")
# Ward keeps an n x n distance matrix; spectral an eigensolve of an n-node graph.
MAX_VECTORS = {"ward": 20_000, "spectral": 50_000}


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
            f"{algorithm} is limited to {limit:,} vectors here (got {n:,}); use kmeans",
            location="algorithm",
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
                location="algorithm",
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
