"""Clustering versions: reading, storing, activating and removing them.

``store_partition`` writes a fitted ``Partition`` as a new version (row, centroids by binary COPY,
assignments, the centroid index) and, unless asked not to, serves it with ``CALL
avengers.activate_clustering`` in the caller's transaction. Activation switches the served
version and refreshes the profiles atomically: routers see the old version or the new one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from avengers_store.calibration import novelty
from avengers_store.calibration.fit import Partition
from avengers_store.errors import InputError, NotFound, StoreStateError
from avengers_store.store import connections, driver_errors
from avengers_store.store.bulk import copy_rows
from avengers_store.store.queries import query

# Column types of the binary COPY writes.
CENTROID_COLUMNS = {
    "clustering_id": "integer",
    "cluster": "integer",
    "centroid": "vector",
    "size": "integer",
}
_ASSIGNMENTS_COLUMNS = {
    "clustering_id": "integer",
    "query_id": "bigint",
    "cluster": "integer",
    "distance": "real",
}

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
    # Set by the calls that activate a version: the version this activation replaced (None: no
    # version was active). Not a column; read under the lock the switch takes.
    replaced: int | None = None


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
        row = c.execute(f"SELECT {_COLUMNS} FROM avengers.active_clustering").fetchone()
    return _clustering(row) if row else None


def list_clusterings(*, url: str | None = None, conn=None) -> list[Clustering]:
    """Every stored version, newest first."""
    with connections.connection(url, conn=conn) as c:
        rows = c.execute(f"SELECT {_COLUMNS} FROM avengers.clusterings ORDER BY id DESC").fetchall()
    return [_clustering(r) for r in rows]


def lock_for_activation(conn: psycopg.Connection) -> int | None:
    """Take the lock ``avengers.activate_clustering`` takes, in the caller's transaction, and
    return the id of the version active now: the one the caller's activation will replace.

    Concurrent switches queue here until the caller commits, so the id read is still the active
    one when the caller activates. A re-cluster takes it before writing its version, too: two
    that had each written one would then wait for each other's lock (a deadlock).
    """
    conn.execute("LOCK TABLE avengers.clusterings IN SHARE ROW EXCLUSIVE MODE")
    row = conn.execute("SELECT id FROM avengers.active_clustering").fetchone()
    return row[0] if row else None


def activate_clustering(clustering_id: int, *, url: str | None = None, conn=None) -> Clustering:
    """Serve version ``clustering_id`` (``CALL avengers.activate_clustering``): switch and profile
    refresh in one transaction. Rolling back to an earlier version is the same call. The result's
    ``replaced`` is the version that was active until then."""
    with connections.connection(url, conn=conn) as c:
        with driver_errors.translated(), c.transaction():
            replaced = lock_for_activation(c)
            c.execute("CALL avengers.activate_clustering(%s)", (clustering_id,))
        return dataclasses.replace(get_clustering(clustering_id, conn=c), replaced=replaced)


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
        raise InputError(f"keep must be 0 or more, got {keep}", location="keep")
    with connections.connection(url, conn=conn) as c:
        rows = c.execute(
            query("calibration", "prune_versions"),
            (list(exclude), keep),
        ).fetchall()
    return sorted(r[0] for r in rows)


def _write_centroids(conn: psycopg.Connection, clustering_id: int, part: Partition) -> None:
    copy_rows(
        conn,
        ("avengers", "centroids"),
        CENTROID_COLUMNS,
        (
            (clustering_id, i, centroid, size)
            for i, (centroid, size) in enumerate(
                zip(part.centroids, part.sizes.tolist(), strict=True)
            )
        ),
    )


def _write_assignments(
    conn: psycopg.Connection, clustering_id: int, query_ids: np.ndarray, part: Partition
) -> None:
    copy_rows(
        conn,
        ("avengers", "assignments"),
        _ASSIGNMENTS_COLUMNS,
        (
            (clustering_id, qid, label, distance)
            for qid, label, distance in zip(
                query_ids.tolist(), part.labels.tolist(), part.distances.tolist(), strict=True
            )
        ),
    )


def store_partition(
    conn: psycopg.Connection,
    space_id: int,
    query_ids: np.ndarray,
    part: Partition,
    *,
    algorithm: str,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    activate: bool = True,
    vectors: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
) -> Clustering:
    """Store ``part`` (``fit.partition`` of the vectors of ``query_ids``, in that order) as a new
    clustering version of embedding space ``space_id``, in the caller's transaction: the version
    row (with the served version's loop settings), its centroids and assignments, their distance
    statistics (``avengers.cluster_distances``), with ``vectors`` (the calibration vectors of
    ``query_ids``, in order) its novelty model (``calibration.novelty``), the centroid index; then
    mark it ready and, with
    ``activate``, serve it (``replaced``: the version it took over from). Returns the stored
    version. ``timings``, if given, receives the seconds of each step (write,
    novelty_fit, novelty_store, distance_profile, activate)."""
    if len(query_ids) != len(part.labels):
        raise InputError(
            f"{len(query_ids)} query ids for a partition of {len(part.labels)} vectors",
            location="query_ids",
        )
    replaced = lock_for_activation(conn) if activate else None
    row = conn.execute(
        """INSERT INTO avengers.clusterings
             (space_id, algorithm, k, seed, params, status, n_queries, inertia)
           VALUES (%s, %s, %s, %s, %s, 'building', %s, %s)
           RETURNING id""",
        (
            space_id,
            algorithm,
            len(part.centroids),
            seed,
            Jsonb(dict(params or {})),
            len(query_ids),
            part.inertia,
        ),
    ).fetchone()
    clustering_id = row[0]
    # The loop's settings carry over from the served version: an operator sets them once.
    conn.execute(
        query("calibration", "copy_loop_settings"),
        (clustering_id,),
    )
    step = _Steps(timings)
    with step("write"):
        _write_centroids(conn, clustering_id, part)
        _write_assignments(conn, clustering_id, query_ids, part)
    if vectors is not None:
        quantile = conn.execute(
            "SELECT ood_quantile FROM avengers.clusterings WHERE id = %s", (clustering_id,)
        ).fetchone()[0]
        with step("novelty_fit"):
            fitted = novelty.fit(vectors, quantile, seed or 0)
        if fitted is not None:
            with step("novelty_store"):
                novelty.store(conn, clustering_id, fitted, seed or 0)
    # The distance statistics also bring the tables' planner statistics up to date with the
    # rows just written (sql/060_procedures_and_triggers.sql).
    with step("distance_profile"):
        conn.execute("CALL avengers.store_distance_profile(%s)", (clustering_id,))
    conn.execute("UPDATE avengers.clusterings SET status = 'ready' WHERE id = %s", (clustering_id,))
    if activate:
        with step("activate"):
            conn.execute("CALL avengers.activate_clustering(%s)", (clustering_id,))
    return dataclasses.replace(get_clustering(clustering_id, conn=conn), replaced=replaced)


class _Steps:
    """``with steps("name"): ...`` adds the block's seconds to ``timings["name"]`` (if given)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.timings is not None:
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started
