"""Novelty of a query against a clustering's calibration set: the Mahalanobis distance of its
vector to a Gaussian fitted on the calibration vectors (covariance shrunk by Ledoit-Wolf), over
a threshold taken on held-out calibration vectors.

The distance to the nearest routing centroid does not tell off-topic text apart: with a small
sentence embedder and tens of clusters many clusters are loose, every query sits about as far
from a loose centroid, and chit-chat, other scripts or gibberish land there below any threshold
that keeps calibration queries in. Off-topic text differs in the directions calibration queries
barely vary in, which a shrunk covariance weighs and a distance to centroids does not.

Fit (``fit``, when a clustering version is stored): the Gaussian on a seeded random half of the
calibration vectors, its distances of the other half (``held_out``), whose ``ood_quantile`` is the
threshold, so the threshold is not measured on the points the Gaussian was fitted to; then the
Gaussian is refitted on all of them and the held-out threshold kept. Stored in
``avengers.novelty_profiles`` (mean, threshold, held-out distances) and ``avengers.novelty_axes``
(the shrunk covariance's eigenvectors and variances). Clients read a version's axes once
(``NoveltyCache``, by clustering id: versions are immutable) and pass a query's distance to
``avengers.decide``, which divides it by the clustering's current threshold, so a change of
``ood_quantile`` applies at once.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from avengers_store.store.statement import Statement, run

# At most this many calibration vectors are fitted on (each half of them): enough for a covariance
# of a few hundred dimensions, and a re-cluster of millions of queries stays quick.
MAX_FIT = 20_000
MIN_FIT = 4
# Versions whose axes a client keeps (a client serves one, a switch briefly two).
CACHED_VERSIONS = 4


@dataclass(frozen=True)
class NoveltyModel:
    """A fitted Gaussian: ``mean`` (d), ``axes`` (d x d, rows are eigenvectors of the shrunk
    covariance) and their ``variances`` (d, all positive)."""

    mean: np.ndarray
    axes: np.ndarray
    variances: np.ndarray

    def distances(self, vectors: Any) -> np.ndarray:
        """Mahalanobis distance of each vector to the mean."""
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float64)) - self.mean
        z = v @ self.axes.T
        return np.sqrt((z * z / self.variances).sum(axis=1))

    def query_distances(self, vectors: np.ndarray) -> np.ndarray:
        """``distances`` for routing: float32 on axes scaled by their deviations beforehand
        (relative error ~1e-6, as ``avengers.novelty``'s pgvector float32 has), one product of
        half the bytes: 15 µs for one 384-d query where ``distances`` takes 45."""
        mean, whitened = self._whitened
        z = (np.asarray(vectors, dtype=np.float32) - mean) @ whitened
        return np.sqrt(np.einsum("ij,ij->i", z, z, dtype=np.float64))

    @functools.cached_property
    def _whitened(self) -> tuple[np.ndarray, np.ndarray]:
        scaled = self.axes / np.sqrt(self.variances)[:, None]
        return self.mean.astype(np.float32), np.ascontiguousarray(scaled.T, dtype=np.float32)


@dataclass(frozen=True)
class NoveltyFit:
    """What ``fit`` stores: the model on all vectors, the threshold at ``quantile`` of the
    held-out distances, and those distances (the threshold is re-read from them when the
    clustering's ``ood_quantile`` changes)."""

    model: NoveltyModel
    threshold: float
    held_out: np.ndarray
    n_fit: int


def gaussian(vectors: np.ndarray) -> NoveltyModel:
    """The Ledoit-Wolf Gaussian of the vectors, in eigen form."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(vectors, dtype=np.float64)
    mean = x.mean(axis=0)
    cov = LedoitWolf(assume_centered=True).fit(x - mean).covariance_
    variances, vecs = np.linalg.eigh(cov)
    # Shrinkage keeps every variance above zero; the floor guards a degenerate (constant) set.
    floor = max(float(variances.max()), 1e-12) * 1e-9
    return NoveltyModel(mean, vecs.T.copy(), np.maximum(variances, floor))


def fit(vectors: np.ndarray, quantile: float, seed: int = 0) -> NoveltyFit | None:
    """The novelty model of a calibration set (module docstring); None below ``MIN_FIT``
    vectors (no held-out half to measure a threshold on)."""
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) < MIN_FIT:
        return None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))[:MAX_FIT]
    half = len(order) // 2
    held_out = gaussian(x[order[:half]]).distances(x[order[half:]])
    threshold = float(np.quantile(held_out, quantile))
    return NoveltyFit(gaussian(x[order]), threshold, np.sort(held_out), len(order))


def novelty(distance: float, threshold: float) -> float:
    """distance / threshold; a zero threshold makes any positive distance infinitely novel."""
    if threshold > 0:
        return float(distance) / float(threshold)
    return float("inf") if distance > 0 else 0.0


def store(conn: psycopg.Connection, clustering_id: int, fitted: NoveltyFit, seed: int) -> None:
    """Write a version's novelty model, in the caller's transaction."""
    model = fitted.model
    conn.execute(
        """INSERT INTO avengers.novelty_profiles
             (clustering_id, mean, threshold, held_out, n_fit, seed)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (
            clustering_id,
            model.mean.astype(np.float32),
            fitted.threshold,
            fitted.held_out.tolist(),
            fitted.n_fit,
            seed,
        ),
    )
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY avengers.novelty_axes (clustering_id, axis, direction, variance) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["integer", "integer", "vector", "float8"])
        for i, (axis, variance) in enumerate(zip(model.axes, model.variances, strict=True)):
            copy.write_row((clustering_id, i, axis.astype(np.float32), float(variance)))


LOAD_SQL = """
SELECT p.mean::real[], a.directions, a.variances
FROM avengers.novelty_profiles p
CROSS JOIN LATERAL (
  SELECT array_agg(x.direction::real[] ORDER BY x.axis) AS directions,
         array_agg(x.variance ORDER BY x.axis) AS variances
  FROM avengers.novelty_axes x WHERE x.clustering_id = p.clustering_id) AS a
WHERE p.clustering_id = %s
"""


def load_statement(clustering_id: int) -> Statement:
    """The statement reading a version's novelty model (``model_from_row`` reads its row);
    binary, as its d x d floats read as text take several times as long."""
    return Statement(LOAD_SQL, (clustering_id,), binary=True)


def model_from_row(row: Any) -> NoveltyModel | None:
    """A version's novelty model from ``LOAD_SQL``'s row (None: it has none)."""
    if row is None or row[1] is None:
        return None
    mean, directions, variances = row
    return NoveltyModel(
        np.asarray(mean, dtype=np.float64),
        np.asarray(directions, dtype=np.float64),
        np.asarray(variances, dtype=np.float64),
    )


def load(conn: psycopg.Connection, clustering_id: int) -> NoveltyModel | None:
    """A version's novelty model (None: it has none)."""
    rows = run(conn, load_statement(clustering_id))
    return model_from_row(rows[0] if rows else None)


class NoveltyCache:
    """Novelty models by clustering id, read once each: a version's model never changes."""

    def __init__(self, size: int = CACHED_VERSIONS) -> None:
        self.size = size
        self._models: dict[int, NoveltyModel | None] = {}
        self._lock = threading.Lock()

    def get(self, clustering_id: int) -> tuple[bool, NoveltyModel | None]:
        """(found, model)."""
        with self._lock:
            if clustering_id in self._models:
                return True, self._models[clustering_id]
        return False, None

    def put(self, clustering_id: int, model: NoveltyModel | None) -> None:
        with self._lock:
            self._models.pop(clustering_id, None)
            while len(self._models) >= self.size:
                self._models.pop(next(iter(self._models)))
            self._models[clustering_id] = model
