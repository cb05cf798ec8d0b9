"""psycopg wire adapters for query vectors: one checked float32 vector, or a whole batch as one
binary ``vector[]``, sent without a pgvector ``Vector`` object per row."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector
from pgvector.psycopg.vector import VectorBinaryDumper
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format

from avengers_store.errors import InputError
from avengers_store.store import connections


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


def _registered(conn: psycopg.Connection | psycopg.AsyncConnection, cls: type) -> bool:
    try:
        conn.adapters.get_dumper(cls, PyFormat.BINARY)
        return True
    except psycopg.ProgrammingError:
        return False


def ensure_vector_types(conn: psycopg.Connection) -> None:
    if _registered(conn, _QueryVector):
        return  # registered together with the batch dumper
    if not _registered(conn, Vector):
        connections.register_vector(conn)
    _register_query_dumpers(conn)


async def aensure_vector_types(conn: psycopg.AsyncConnection) -> None:
    """``ensure_vector_types`` for an async connection (pgvector's async registration)."""
    if _registered(conn, _QueryVector):
        return
    if not _registered(conn, Vector):
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
    _register_query_dumpers(conn)


def _register_query_dumpers(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    info = conn.adapters.types.get("vector")
    dumper = type(
        "VectorBatchDumper",
        (_VectorBatchDumper,),
        {"oid": info.array_oid, "vector_oid": info.oid},
    )
    conn.adapters.register_dumper(VectorBatch, dumper)
    conn.adapters.register_dumper(IntArray, _IntArrayDumper)
    conn.adapters.register_dumper(FloatArray, _FloatArrayDumper)
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


def query_vector(value: Any, *, location: str = "query vector") -> _QueryVector:
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


class VectorBatch:
    """Query vectors as one float32 matrix, sent as one binary ``vector[]``."""

    __slots__ = ("matrix",)

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix


class _VectorBatchDumper(Dumper):
    # Encodes the whole array with numpy: a Vector object dumped per row was a third of the time
    # of routing 10k vectors (bench/README.md).
    format = Format.BINARY
    vector_oid = 0

    def dump(self, obj: VectorBatch) -> bytes:
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


class NumberArray:
    """A batch's per-query numbers without NULLs (bigint seeds, float8 distances) as one numpy
    array, sent as one binary ``bigint[]`` (``IntArray``) or ``float8[]`` (``FloatArray``):
    psycopg's list dumper costs ~10 µs per thousand elements (20 ms of a 10,000-query batch for
    its two arrays)."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        self.values = values


class IntArray(NumberArray):
    __slots__ = ()


class FloatArray(NumberArray):
    __slots__ = ()


class _NumberArrayDumper(Dumper):
    format = Format.BINARY
    element_oid = 0
    element = ""

    def dump(self, obj: NumberArray) -> bytes:
        n = len(obj.values)
        rows = np.empty(n, dtype=[("size", ">i4"), ("x", self.element)])
        rows["size"] = 8
        rows["x"] = obj.values
        # Array header: 1 dimension, no NULLs, element type, length n, lower bound 1.
        return struct.pack(">iiIii", 1, 0, self.element_oid, n, 1) + rows.tobytes()


class _IntArrayDumper(_NumberArrayDumper):
    oid, element_oid, element = 1016, 20, ">i8"  # bigint[]


class _FloatArrayDumper(_NumberArrayDumper):
    oid, element_oid, element = 1022, 701, ">f8"  # float8[]


def number_array(values: Sequence[Any]) -> NumberArray | list[Any]:
    """``values`` as an ``IntArray`` or a ``FloatArray`` when they are all ints or all floats;
    as they are otherwise (NULLs, text: psycopg's list dumper)."""
    if all(type(v) is int for v in values):
        try:
            return IntArray(np.fromiter(values, dtype=np.int64, count=len(values)))
        except OverflowError:  # beyond bigint: the server names it
            return list(values)
    if all(type(v) is float for v in values):
        return FloatArray(np.fromiter(values, dtype=np.float64, count=len(values)))
    return list(values)


def query_matrix(vectors: Sequence[Any]) -> np.ndarray | None:
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
