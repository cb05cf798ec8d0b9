"""Novelty of a query at routing time: the distance of its vector under a clustering version's
novelty model (fitted and stored by ``avengers_store.calibration.novelty``), read once per version.

Clients read a version's axes once (``NoveltyCache``, by clustering id: versions are immutable)
and pass a query's distance to ``avengers.decide``, which divides it by the clustering's current
threshold, so a change of ``ood_quantile`` applies at once.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import psycopg

from avengers_store.calibration.novelty import NoveltyModel
from avengers_store.store.queries import query
from avengers_store.store.statement import Statement, run

# Versions whose axes a client keeps (a client serves one, a switch briefly two).
CACHED_VERSIONS = 4


def novelty(distance: float, threshold: float) -> float:
    """distance / threshold; a zero threshold makes any positive distance infinitely novel."""
    if threshold > 0:
        return float(distance) / float(threshold)
    return float("inf") if distance > 0 else 0.0


LOAD_SQL = query("routing", "novelty_model")


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
