"""Routing reads: one SQL call (``avengers.route`` / ``avengers.route_many``) per decision or batch,
results as small frozen dataclasses, and the centroid index that makes large clusterings fast.

The rule lives in ``sql/030_routing.sql``: the nearest centroids of the active clustering by
Euclidean distance of the L2-normalised query (the rule K-means assigned with), then the top-n
active models by a score pooled over them (ties: overall calibration score, then name). A
``RoutingMethod`` holds its parameters: ``AVENGERS`` (the default) pools the 16 nearest clusters
weighted by distance and shrinks toward each model's calibration prior; ``PAPER`` is the plain
nearest-cluster rule.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector
from pgvector.psycopg.vector import VectorBinaryDumper
from psycopg import sql
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format

from avengers_store.errors import InputError, NotFound, StoreStateError
from avengers_store.store import connections

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


# Weight of the dataset-mixture prior in the default method: the one place to change it.
DATASET_PRIOR = 0.0


@dataclass(frozen=True)
class RoutingMethod:
    """Parameters of the routing score (see ``avengers.route_many`` in sql/030_routing.sql).

    ``neighbours``: nearest centroids pooled (L); ``temperature``: weight decay in units of the
    clustering's median squared distance to its centroid; ``shrinkage``: pseudo-queries of the
    model's dataset-balanced calibration mean added to every score; ``dataset_prior``: the same
    for the mean weighted by the neighbourhood's dataset make-up.
    """

    name: str
    neighbours: int = 16
    temperature: float = 0.1
    shrinkage: float = 1.0
    dataset_prior: float = DATASET_PRIOR

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise InputError(f"neighbours must be >= 1, got {self.neighbours}", location="method")
        for field_name in ("temperature", "shrinkage", "dataset_prior"):
            value = getattr(self, field_name)
            if not value >= 0:  # also refuses NaN
                raise InputError(f"{field_name} must be >= 0, got {value}", location="method")

    def sql_args(self) -> tuple[int, float, float, float]:
        return (self.neighbours, self.temperature, self.shrinkage, self.dataset_prior)


# The paper's rule: the nearest cluster's mean score (ties: overall score, then name).
PAPER = RoutingMethod("paper", neighbours=1, temperature=0.0, shrinkage=0.0, dataset_prior=0.0)
# Soft top-16 centroids at temperature 0.1, one pseudo-query of the prior (chosen by 5-fold
# cross-validation on calibration data of two outcome tables; docs/evaluation.md).
AVENGERS = RoutingMethod("avengers")
METHODS = {m.name: m for m in (AVENGERS, PAPER)}


def routing_method(method: str | RoutingMethod | None) -> RoutingMethod:
    """A RoutingMethod from a preset name (``avengers``, ``paper``), an instance, or None (the
    default, ``AVENGERS``)."""
    if method is None:
        return AVENGERS
    if isinstance(method, RoutingMethod):
        return method
    found = METHODS.get(str(method).strip().lower())
    if found is None:
        raise InputError(
            f"unknown routing method {method!r}; choose one of {', '.join(METHODS)}",
            location="method",
        )
    return found


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model proposed for a query, best first (rank 1). ``score`` is the routing score;
    ``mean_score``, ``n`` and the Wilson bounds describe the model on the nearest cluster (None
    when it has no outcome there)."""

    model: str
    rank: int
    mean_score: float | None
    n: int | None
    wilson_low: float | None
    wilson_high: float | None
    endpoint: str | None
    served_name: str | None
    overall_score: float | None = None
    model_id: int | None = None
    api_key_env: str | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True)
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
            score = f"score {c.score:.3f}; " if c.score is not None else ""
            here = (
                f"mean {c.mean_score:.3f} over {c.n} calibration queries of the cluster{bounds}"
                if c.mean_score is not None
                else "no outcome in the cluster"
            )
            lines.append(f"  {c.rank}. {c.model}: {score}{here}{where}")
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
        "SELECT 1 FROM avengers.clusterings WHERE id = %s AND status = 'active'", (clustering_id,)
    ).fetchone()
    if active:
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_state")
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_models")


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
        conn.adapters.get_dumper(_QueryVector, PyFormat.BINARY)
        return  # registered together with the two below
    except psycopg.ProgrammingError:
        pass
    try:
        conn.adapters.get_dumper(Vector, PyFormat.BINARY)
    except psycopg.ProgrammingError:
        connections.register_vector(conn)
    info = conn.adapters.types.get("vector")
    dumper = type(
        "VectorBatchDumper",
        (_VectorBatchDumper,),
        {"oid": info.array_oid, "vector_oid": info.oid},
    )
    conn.adapters.register_dumper(_VectorBatch, dumper)
    conn.adapters.register_dumper(
        _QueryVector, type("QueryVectorDumper", (_QueryVectorDumper,), {"oid": info.oid})
    )


class _QueryVector:
    """One checked float32 query vector, sent as a binary ``vector`` without a pgvector
    ``Vector`` object in between."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class _QueryVectorDumper(VectorBinaryDumper):
    # Registered with the vector oid, so it also serves binary COPY's set_types(["vector"]):
    # anything but a _QueryVector goes to pgvector's own dumper.
    def dump(self, obj: Any) -> bytes | None:
        if not isinstance(obj, _QueryVector):
            return super().dump(obj)
        # pgvector's binary vector: int16 dimension, int16 unused, big-endian float32s.
        return struct.pack(">hh", obj.array.size, 0) + obj.array.astype(">f4").tobytes()


def _query_vector(value: Any, *, location: str = "query vector") -> _QueryVector:
    """``as_query_vector`` for the single-vector path: the same checks and errors."""
    if isinstance(value, Vector):
        value = value.to_numpy()
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"not a vector of numbers ({exc})", location=location) from exc
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(
            f"expected a flat list of numbers, got shape {arr.shape}", location=location
        )
    # One dot product checks both on the common path (finite and non-zero iff 0 < sum of
    # squares < inf); the element-wise test decides only when that fails (or overflows).
    square = float(np.dot(arr, arr))
    if not 0.0 < square < math.inf and (not np.isfinite(arr).all() or not arr.any()):
        raise InputError("the vector must be finite and non-zero", location=location)
    return _QueryVector(arr)


class _VectorBatch:
    """Query vectors as one float32 matrix, sent as one binary ``vector[]``."""

    __slots__ = ("matrix",)

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix


class _VectorBatchDumper(Dumper):
    # Encodes the whole array with numpy: dumping a Vector object per row cost ≈ 20 µs each,
    # a third of the time of routing 10k vectors (bench/batch_routing.py).
    format = Format.BINARY
    vector_oid = 0

    def dump(self, obj: _VectorBatch) -> bytes:
        n, dim = obj.matrix.shape
        rows = np.empty(
            n, dtype=[("size", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("x", ">f4", (dim,))]
        )
        rows["size"] = 4 + 4 * dim  # pgvector's binary vector: int16 dim, int16 unused, floats
        rows["dim"] = dim
        rows["unused"] = 0
        rows["x"] = obj.matrix
        # Array header: 1 dimension, no NULLs, element type, length n, lower bound 1.
        return struct.pack(">iiIii", 1, 0, self.vector_oid, n, 1) + rows.tobytes()


def _query_matrix(vectors: Sequence[Any]) -> np.ndarray | None:
    """The vectors as one float32 matrix when they all are finite, non-zero rows of one length;
    None otherwise (the per-vector path then names the first bad one)."""
    if not isinstance(vectors, np.ndarray) and any(isinstance(v, Vector) for v in vectors):
        return None
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        return None
    if not np.isfinite(matrix).all() or not matrix.any(axis=1).all():
        return None
    return np.ascontiguousarray(matrix)


ROUTE_MANY_SQL = """
SELECT ord, clustering_id, cluster, distance, rank, model_id, model, mean_score, n,
       wilson_low, wilson_high, overall_score, endpoint, served_name, api_key_env, score
FROM avengers.route_many(%b::vector[], %s, %s, %s, %s, %s, %s)
"""


def route_vectors(
    conn: psycopg.Connection,
    vectors: Sequence[Any],
    top_n: int = 1,
    *,
    require_endpoint: bool = False,
    method: str | RoutingMethod | None = None,
) -> list[RouteDecision]:
    """Route many vectors in one statement (one snapshot of the store); decisions in input order.
    ``method``: a RoutingMethod or preset name (default ``AVENGERS``)."""
    chosen = routing_method(method)
    if top_n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}", location="top_n")
    if len(vectors) == 0:
        return []
    matrix = _query_matrix(vectors)
    if matrix is not None:
        queries: Any = _VectorBatch(matrix)
    else:
        queries = [
            as_query_vector(v, location=f"query vector {i + 1}") for i, v in enumerate(vectors)
        ]
    _ensure_vector_types(conn)
    with _vector_errors("query vectors"):
        rows = conn.execute(
            ROUTE_MANY_SQL, (queries, top_n, require_endpoint, *chosen.sql_args()), binary=True
        ).fetchall()
    return decisions_from_rows(rows, len(vectors))


@contextmanager
def _vector_errors(location: str) -> Iterator[None]:
    """The routing functions reject bad vectors (wrong dimension, NaN) with a data exception:
    surface its message and hint as an InputError naming the argument."""
    try:
        yield
    except psycopg.errors.DataException as exc:
        raise _vector_error(exc, location) from exc


def _vector_error(exc: psycopg.errors.DataException, location: str) -> InputError:
    return InputError(
        f"{exc.diag.message_primary}; {exc.diag.message_hint or ''}".strip("; "),
        location=location,
    )


_ROUTE_COLUMNS = """clustering_id, cluster, distance, rank, model_id, model, mean_score, n,
       wilson_low, wilson_high, overall_score, endpoint, served_name, api_key_env, score"""
ROUTE_SQL = (
    "SELECT " + _ROUTE_COLUMNS + "\nFROM avengers.route(%b::vector, {top_n}, {require_endpoint}, "
    "{neighbours}, {temperature}::float8, {shrinkage}::float8, {dataset_prior}::float8)"
)
ROUTE_POOLED_SQL = (
    "SELECT " + _ROUTE_COLUMNS + "\nFROM avengers.route_pooled(%b::vector, {top_n}, "
    "{require_endpoint}, {neighbours}, {temperature}::float8, {shrinkage}::float8)"
)


@lru_cache(maxsize=256)
def _route_sql(
    template: str,
    top_n: int,
    require_endpoint: bool,
    neighbours: int,
    temperature: float,
    shrinkage: float,
    dataset_prior: float,
) -> str:
    return template.format(
        top_n=int(top_n),
        require_endpoint="true" if require_endpoint else "false",
        neighbours=int(neighbours),
        temperature=_float_literal(temperature),
        shrinkage=_float_literal(shrinkage),
        dataset_prior=_float_literal(dataset_prior),
    )


def _float_literal(value: float) -> str:
    return "'" + repr(float(value)) + "'"


def route_sql(
    top_n: int, require_endpoint: bool, method: RoutingMethod, *, pooled: bool = False
) -> str:
    """The ``avengers.route`` (or, with ``pooled``, ``avengers.route_pooled``) statement for one
    method, top_n and require_endpoint, the vector its only parameter: binding the six settings
    as parameters costs ~20 µs more per route (most of it in the driver), and each distinct text
    is one prepared statement on the connection."""
    template = ROUTE_POOLED_SQL if pooled else ROUTE_SQL
    return _route_sql(template, top_n, bool(require_endpoint), *method.sql_args())


def route_vector(
    conn: psycopg.Connection,
    vector: Any,
    top_n: int = 1,
    *,
    require_endpoint: bool = False,
    method: str | RoutingMethod | None = None,
) -> RouteDecision:
    """Route one vector: its nearest cluster and the top_n active models by routing score, in
    one round trip: ``avengers.route_pooled`` (the served path, a prepared statement), or
    ``avengers.route`` when the method has a dataset-mixture prior, the connection does not
    prepare statements, or route_pooled returned nothing (a clustering it does not serve, or
    none active). Same decisions as ``route_many``."""
    chosen = routing_method(method)
    if top_n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}", location="top_n")
    query = _query_vector(vector)
    _ensure_vector_types(conn)
    rows: list[Any] = []
    try:  # not _vector_errors: a generator context manager costs µs on this path
        # route_pooled's body is inlined into this statement, which pays off once the statement
        # is prepared, so it is prepared on first use; a connection that prepares nothing
        # (prepare_threshold None, e.g. behind a transaction-mode pooler) would plan the whole
        # body per call and uses avengers.route, which caches its plan, instead.
        if not chosen.dataset_prior and conn.prepare_threshold is not None:
            pooled = route_sql(top_n, require_endpoint, chosen, pooled=True)
            rows = conn.execute(pooled, (query,), prepare=True, binary=True).fetchall()
        if not rows:
            rows = conn.execute(
                route_sql(top_n, require_endpoint, chosen), (query,), binary=True
            ).fetchall()
    except psycopg.errors.DataException as exc:
        raise _vector_error(exc, "query vector") from exc
    if not rows or rows[0][0] is None:
        raise StoreStateError(NO_ACTIVE_CLUSTERING)
    clustering_id, cluster, distance = rows[0][0], rows[0][1], rows[0][2]
    candidates = tuple(
        Candidate(model, rank, mean, n, lo, hi, endpoint, served, overall, model_id, key_env, score)
        for (
            _,
            _,
            _,
            rank,
            model_id,
            model,
            mean,
            n,
            lo,
            hi,
            overall,
            endpoint,
            served,
            key_env,
            score,
        ) in rows  # fmt: skip
        if model is not None
    )
    return RouteDecision(clustering_id, cluster, distance, candidates)


def decisions_from_rows(rows: Sequence[Sequence[Any]], count: int) -> list[RouteDecision]:
    """Group ``route_many`` rows (ord first) into one decision per query."""
    heads: dict[int, tuple[int, int, float]] = {}
    picks: dict[int, list[Candidate]] = {}
    for (ord_, clustering_id, cluster, distance, rank, model_id, model, mean, n, lo, hi,
         overall, endpoint, served, key_env, score) in rows:  # fmt: skip
        if clustering_id is None:
            raise StoreStateError(NO_ACTIVE_CLUSTERING)
        heads[ord_] = (clustering_id, cluster, distance)
        if model is not None:
            picks.setdefault(ord_, []).append(
                Candidate(
                    model,
                    rank,
                    mean,
                    n,
                    lo,
                    hi,
                    endpoint,
                    served,
                    overall,
                    model_id,
                    key_env,
                    score,
                )
            )
    if len(heads) != count:
        raise StoreStateError(NO_ACTIVE_CLUSTERING)
    return [
        RouteDecision(*heads[i], candidates=tuple(picks.get(i, ()))) for i in range(1, count + 1)
    ]
