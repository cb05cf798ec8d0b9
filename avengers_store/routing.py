"""Routing reads: one SQL call (``avengers.route`` / ``avengers.route_many``) per decision or batch,
results as small frozen dataclasses, and the centroid index that makes large clusterings fast.

The rule lives in ``sql/030_routing.sql``: the nearest centroid of the active clustering by
Euclidean distance of the L2-normalised query (the rule K-means assigned with), then the top-n
active models of that cluster by profile score (ties: overall calibration score, then name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector
from psycopg import sql
from psycopg.adapt import PyFormat

from . import db
from .errors import InputError, NotFound, StoreStateError

# Nearest-centroid search is an exact scan: ≈ 0.3-0.6 µs per centroid per query at 384
# dimensions on 2 shared cores (route_many: ≈ 1.2 ms per query at k = 2,048; ≈ 5-10 ms expected at
# k = 16,384), always equal to numpy's argmin. The HNSW path costs ≈ 5-11 ms per query at
# k = 2,048 (ef_search 1,000) and is approximate, so an index is built only from k = HNSW_MIN_K,
# where the exact scan stops being cheaper. Below it routing is exact by construction.
HNSW_MIN_K = 16384
# The HNSW path re-ranks the index's 1,000 nearest candidates (nearest_centroids' `candidates`,
# pgvector's maximum ef_search) by exact distance: 1,000 random unit queries against 2,048
# centroids (random points, or means of random unit vectors) matched numpy's argmin on 99.9-100%
# of queries; with 200 candidates on 98.9-99.8%.
# pgvector indexes vector columns of up to 2,000 dimensions with HNSW.
HNSW_MAX_DIMENSION = 2000

NO_ACTIVE_CLUSTERING = (
    "no clustering is active, so nothing can be routed: build one with `avengers recluster` "
    "(or activate a ready one: CALL avengers.activate_clustering(id))."
)


@dataclass(frozen=True)
class Candidate:
    """One model proposed for a query, best first (rank 1)."""

    model: str
    rank: int
    mean_score: float
    n: int
    wilson_low: float | None
    wilson_high: float | None
    endpoint: str | None
    served_name: str | None
    overall_score: float | None = None
    model_id: int | None = None
    api_key_env: str | None = None


@dataclass(frozen=True)
class RouteDecision:
    """Why a query goes where it goes: its cluster in a clustering version and the ranked models."""

    clustering_id: int
    cluster: int
    distance: float
    candidates: tuple[Candidate, ...]

    @property
    def model(self) -> str | None:
        """The first-ranked model, or None when the cluster has no eligible model."""
        return self.candidates[0].model if self.candidates else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> str:
        lines = [
            f"clustering {self.clustering_id}: nearest cluster {self.cluster} "
            f"(Euclidean distance {self.distance:.4f})"
        ]
        if not self.candidates:
            lines.append("  no active model has a profile for this cluster")
        for c in self.candidates:
            bounds = (
                f" [{c.wilson_low:.3f}, {c.wilson_high:.3f}]"
                if c.wilson_low is not None and c.wilson_high is not None
                else ""
            )
            where = f" via {c.endpoint}" if c.endpoint else " (no endpoint)"
            lines.append(
                f"  {c.rank}. {c.model}: mean score {c.mean_score:.3f} over {c.n} "
                f"calibration queries{bounds}{where}"
            )
        return "\n".join(lines)


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
    return CentroidIndex(clustering_id, k, dimension, name)


def drop_centroid_index(conn: psycopg.Connection, clustering_id: int) -> None:
    """Remove the clustering's HNSW index (e.g. before deleting the clustering)."""
    conn.execute(
        sql.SQL("DROP INDEX IF EXISTS avengers.{}").format(
            sql.Identifier(index_name(clustering_id))
        )
    )


def as_query_vector(value: Any, *, location: str = "query vector") -> Vector:
    """A finite float32 pgvector ``Vector`` (SQL normalises it; zero vectors are refused)."""
    try:
        arr = np.asarray(value.to_numpy() if isinstance(value, Vector) else value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"not a vector of numbers ({exc})", location=location) from exc
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(
            f"expected a flat list of numbers, got shape {arr.shape}", location=location
        )
    if not np.all(np.isfinite(arr)) or not np.any(arr):
        raise InputError("the vector must be finite and non-zero", location=location)
    return Vector(arr)


def _ensure_vector_types(conn: psycopg.Connection) -> None:
    try:
        conn.adapters.get_dumper(Vector, PyFormat.BINARY)
    except psycopg.ProgrammingError:
        db.register_vector(conn)


ROUTE_MANY_SQL = """
SELECT ord, clustering_id, cluster, distance, rank, model_id, model, mean_score, n,
       wilson_low, wilson_high, overall_score, endpoint, served_name, api_key_env
FROM avengers.route_many(%b::vector[], %s, %s)
"""


def route_vectors(
    conn: psycopg.Connection,
    vectors: Sequence[Any],
    top_n: int = 1,
    *,
    require_endpoint: bool = False,
) -> list[RouteDecision]:
    """Route many vectors in one statement (one snapshot of the store); decisions in input order."""
    if top_n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}", location="top_n")
    queries = [as_query_vector(v, location=f"query vector {i + 1}") for i, v in enumerate(vectors)]
    if not queries:
        return []
    _ensure_vector_types(conn)
    try:
        rows = conn.execute(ROUTE_MANY_SQL, (queries, top_n, require_endpoint)).fetchall()
    except psycopg.errors.DataException as exc:
        raise InputError(
            f"{exc.diag.message_primary}; {exc.diag.message_hint or ''}".strip("; "),
            location="query vectors",
        ) from exc
    return decisions_from_rows(rows, len(queries))


def route_vector(
    conn: psycopg.Connection, vector: Any, top_n: int = 1, *, require_endpoint: bool = False
) -> RouteDecision:
    """Route one vector: nearest cluster of the active clustering and its top_n active models."""
    return route_vectors(conn, [vector], top_n, require_endpoint=require_endpoint)[0]


def decisions_from_rows(rows: Sequence[Sequence[Any]], count: int) -> list[RouteDecision]:
    """Group ``route_many`` rows (ord first) into one decision per query."""
    heads: dict[int, tuple[int, int, float]] = {}
    picks: dict[int, list[Candidate]] = {}
    for (ord_, clustering_id, cluster, distance, rank, model_id, model, mean, n, lo, hi,
         overall, endpoint, served, key_env) in rows:  # fmt: skip
        if clustering_id is None:
            raise StoreStateError(NO_ACTIVE_CLUSTERING)
        heads[ord_] = (clustering_id, cluster, distance)
        if model is not None:
            picks.setdefault(ord_, []).append(
                Candidate(
                    model, rank, mean, n, lo, hi, endpoint, served, overall, model_id, key_env
                )
            )
    if len(heads) != count:
        raise StoreStateError(NO_ACTIVE_CLUSTERING)
    return [
        RouteDecision(*heads[i], candidates=tuple(picks.get(i, ()))) for i in range(1, count + 1)
    ]
