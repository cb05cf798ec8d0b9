"""The centroid index: an HNSW index over a very large clustering's centroids.

Built (or dropped) inside the transaction that writes a clustering, so routing finds it the
moment the clustering is served. Below ``HNSW_MIN_K`` routing scans the centroids exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from avengers_store.errors import NotFound

# Routing scans the centroids exactly (always equal to numpy's argmin) up to this k; from it on
# the exact scan is slower than an HNSW index, which is approximate (figures in docs/benchmarks.md).
HNSW_MIN_K = 16384
# pgvector indexes vector columns of up to 2,000 dimensions with HNSW.
HNSW_MAX_DIMENSION = 2000


@dataclass(frozen=True)
class CentroidIndex:
    """What prepare_centroid_index decided for one clustering."""

    clustering_id: int
    k: int
    dimension: int
    index: str | None  # name of the HNSW index, None when routing scans exactly

    @property
    def method(self) -> str:
        return "hnsw+exact-rerank" if self.index else "exact-scan"


def index_name(clustering_id: int) -> str:
    return f"centroids_hnsw_{int(clustering_id)}"


def prepare_centroid_index(
    conn: psycopg.Connection, clustering_id: int, *, min_k: int = HNSW_MIN_K
) -> CentroidIndex:
    """Build (or drop) the HNSW index routing uses for ``clustering_id``, inside the caller's
    transaction, after its centroids are written. Idempotent.

    An index is built when k >= ``min_k`` and the dimension is indexable; otherwise routing scans
    the clustering's centroids exactly and any earlier index for it is dropped.
    """
    row = conn.execute(
        """SELECT k.k, s.dimension, (SELECT count(*) FROM avengers.centroids c
                                     WHERE c.clustering_id = k.id)
           FROM avengers.clusterings k JOIN avengers.embedding_spaces s ON s.id = k.space_id
           WHERE k.id = %s""",
        (clustering_id,),
    ).fetchone()
    if row is None:
        raise NotFound(
            f"clustering {clustering_id} does not exist: "
            "SELECT id, status FROM avengers.clusterings ORDER BY id"
        )
    k, dimension, stored = row
    name = index_name(clustering_id)
    wanted = max(k, stored) >= min_k and dimension <= HNSW_MAX_DIMENSION
    if not wanted:
        conn.execute(sql.SQL("DROP INDEX IF EXISTS avengers.{}").format(sql.Identifier(name)))
        _refresh_routing_state(conn, clustering_id)
        return CentroidIndex(clustering_id, k, dimension, None)
    # Partial (this clustering's rows only) expression index: the column is dimensionless, so the
    # cast fixes the dimension HNSW needs. A small graph, so a generous build costs little.
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON avengers.centroids USING hnsw "
            "((centroid::vector({dim})) vector_l2_ops) WITH (m = 16, ef_construction = 200) "
            "WHERE clustering_id = {id}"
        ).format(
            name=sql.Identifier(name),
            dim=sql.Literal(int(dimension)),
            id=sql.Literal(int(clustering_id)),
        )
    )
    conn.execute(
        sql.SQL("COMMENT ON INDEX avengers.{} IS {}").format(
            sql.Identifier(name),
            sql.Literal(
                f"HNSW over the centroids of clustering {clustering_id} (k = {k}); "
                "avengers.nearest_centroids re-ranks its candidates by exact distance."
            ),
        )
    )
    _refresh_routing_state(conn, clustering_id)
    return CentroidIndex(clustering_id, k, dimension, name)


def drop_centroid_index(conn: psycopg.Connection, clustering_id: int) -> None:
    """Remove the clustering's HNSW index (e.g. before deleting the clustering)."""
    conn.execute(
        sql.SQL("DROP INDEX IF EXISTS avengers.{}").format(
            sql.Identifier(index_name(clustering_id))
        )
    )
    _refresh_routing_state(conn, clustering_id)


def _refresh_routing_state(conn: psycopg.Connection, clustering_id: int) -> None:
    """routing_state records whether the served clustering has an index (route and route_many
    read it there instead of looking the index up on every call): an index built or dropped on
    the active clustering refreshes it, and routing_models, which is built only without one."""
    active = conn.execute(
        "SELECT 1 FROM avengers.active_clustering WHERE id = %s", (clustering_id,)
    ).fetchone()
    if active:
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_state")
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_models")
