"""Filling an embedding space: embed queries that have no vector yet, or import precomputed ones.

Only missing vectors are ever computed, so adding a dataset and re-embedding costs just the new
queries, and an interrupted ``embed`` resumes where it stopped (each batch commits on its own).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psycopg

from avengers_store.calibration import embedding_spaces
from avengers_store.calibration.embedders import (
    Embedder,
    embedder_for_space,
    get_embedder,
    normalize_rows,
)
from avengers_store.errors import InputError, NotFound
from avengers_store.store import connections
from avengers_store.store.bulk import copy_rows
from avengers_store.store.queries import query

# Column types of the binary COPY writes.
_LOAD_COLUMNS = {"space_id": "integer", "query_id": "bigint", "embedding": "vector"}


@dataclass(frozen=True)
class EmbedResult:
    space_id: int
    embedder: str
    dimension: int
    embedded: int
    already: int
    seconds: float


@dataclass(frozen=True)
class ImportResult:
    space_id: int
    embedder: str
    dimension: int
    source_file: str
    file_rows: int
    imported: int
    already: int
    seconds: float


Result = TypeVar("Result", EmbedResult, ImportResult)


def _result(
    kind: type[Result], space: embedding_spaces.Space, started: float, **counts: Any
) -> Result:
    """A ``kind`` result for ``space``: the space, ``counts`` and the seconds since ``started``
    (a ``perf_counter`` reading)."""
    return kind(
        space_id=space.id,
        embedder=space.embedder,
        dimension=space.dimension,
        seconds=time.perf_counter() - started,
        **counts,
    )


def store_vectors(
    conn: psycopg.Connection, space_id: int, query_ids: Sequence[int], vectors: np.ndarray
) -> int:
    """Insert vectors by binary COPY; rows a concurrent writer stored first are kept as they are.
    Returns the number of rows inserted."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(query_ids) != len(vectors):
        raise ValueError(f"{len(query_ids)} query ids for {len(vectors)} vectors")
    bad = unusable_rows(vectors)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{_fault(vectors[i])}: a query needs a direction to be clustered and routed"
            + (f" ({bad.size} such vectors)" if bad.size > 1 else ""),
            location=f"vector of query {int(query_ids[i])}",
        )
    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS avengers_embedding_load AS
           SELECT space_id, query_id, embedding FROM avengers.query_embeddings WITH NO DATA"""
    )
    conn.execute("TRUNCATE avengers_embedding_load")
    copy_rows(
        conn,
        "avengers_embedding_load",
        _LOAD_COLUMNS,
        ((space_id, int(qid), vec) for qid, vec in zip(query_ids, vectors, strict=True)),
    )
    inserted = conn.execute(
        """INSERT INTO avengers.query_embeddings (space_id, query_id, embedding)
           SELECT space_id, query_id, embedding FROM avengers_embedding_load
           ON CONFLICT (space_id, query_id) DO NOTHING"""
    ).rowcount
    conn.execute("TRUNCATE avengers_embedding_load")
    return inserted


def unusable_rows(vectors: np.ndarray) -> np.ndarray:
    """Indices of rows that cannot be unit vectors: any NaN or infinity, or all zeros."""
    wide = np.asarray(vectors, dtype=np.float64)
    finite = np.isfinite(wide).all(axis=1)
    zero = ~np.any(wide != 0, axis=1)
    return np.flatnonzero(~finite | zero)


def _fault(row: np.ndarray) -> str:
    if not np.isfinite(np.asarray(row, dtype=np.float64)).all():
        return "the vector holds NaN or infinite values"
    return "the vector is all zeros"


def _resolve_embedder(conn: psycopg.Connection, embedder: str | Embedder | None) -> Embedder:
    if isinstance(embedder, Embedder):
        return embedder
    if embedder is None:
        space = embedding_spaces.active_space(conn)
        if space is not None:
            return embedder_for_space(space)
        return get_embedder()
    space = embedding_spaces.get_space(conn, embedder)
    return embedder_for_space(space) if space is not None else get_embedder(embedder)


def _space_for(conn: psycopg.Connection, emb: Embedder, dimension: int) -> embedding_spaces.Space:
    space = embedding_spaces.get_or_create_space(conn, emb.name, dimension, emb.params)
    return embedding_spaces.activate_space(conn, space.id)


def _missing_count(conn: psycopg.Connection, space_id: int) -> tuple[int, int]:
    total, have = conn.execute(
        """SELECT (SELECT count(*) FROM avengers.queries),
                  (SELECT count(*) FROM avengers.query_embeddings WHERE space_id = %s)""",
        (space_id,),
    ).fetchone()
    return total - have, have


def embed_queries(
    embedder: str | Embedder | None = None,
    *,
    batch_size: int = 64,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    progress: bool = False,
) -> EmbedResult:
    """Embed every query that has no vector in the embedder's space, which becomes the active
    space. ``embedder`` defaults to the active space's embedder, else ``$AVENGERS_EMBEDDER``.

    On its own connection each batch commits as it finishes (an interrupted run resumes); with
    ``conn`` everything stays in the caller's transaction.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}", location="batch_size")
    started = time.perf_counter()
    own = conn is None
    with connections.connection(url, conn=conn) as c:
        emb = _resolve_embedder(c, embedder)
        space = _space_for(c, emb, emb.dimension)
        missing, already = _missing_count(c, space.id)
        if own:
            c.commit()
        done = 0
        last_id = 0
        with tqdm(
            total=missing,
            desc=f"embed {emb.name}",
            unit="q",
            file=sys.stderr,
            disable=not progress,
        ) as bar:
            while True:
                rows = c.execute(
                    query("calibration", "unembedded_queries"),
                    (last_id, space.id, batch_size),
                ).fetchall()
                if not rows:
                    break
                vectors = emb.embed([r[1] for r in rows], batch_size=batch_size)
                if vectors.shape != (len(rows), space.dimension):
                    raise InputError(
                        f"embedder {emb.name} returned shape {vectors.shape}, expected "
                        f"({len(rows)}, {space.dimension})"
                    )
                done += store_vectors(c, space.id, [r[0] for r in rows], vectors)
                if own:
                    c.commit()
                last_id = rows[-1][0]
                bar.update(len(rows))
    return _result(EmbedResult, space, started, embedded=done, already=already)


NPY_MAGIC = b"\x93NUMPY"


def read_npy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped; a file that is not one (numpy would call
    anything without its magic bytes "pickled (object) data"), a cut-off one or one with a
    broken header is an ``InputError`` saying which."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(NPY_MAGIC))
    except OSError as exc:
        raise InputError(f"cannot read vectors: {exc}", location=str(path)) from exc
    if start != NPY_MAGIC:
        kind = (
            "a .npz archive (give the .npy inside it)"
            if start[:2] == b"PK"
            else ("empty" if not start else "not a .npy file")
        )
        raise InputError(
            f"{kind}: a .npy file starts with the bytes \\x93NUMPY (write vectors with numpy.save)",
            location=str(path),
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickled" in str(exc) or "Python objects" in str(exc):
            reason = "it holds Python objects, not numbers"
        elif "mmap length" in str(exc) or "cannot reshape" in str(exc):
            reason = "it is shorter than its header says (cut off?)"
        else:
            reason = f"its header cannot be read ({exc})"
        raise InputError(f"not a readable .npy file: {reason}", location=str(path)) from exc
    except OSError as exc:
        raise InputError(f"cannot read vectors: {exc}", location=str(path)) from exc


def import_npy(
    npy_path: str | Path,
    source_file: str | Path,
    *,
    embedder: str | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    progress: bool = False,
) -> ImportResult:
    """Import precomputed vectors for the queries loaded from ``source_file``: row i of the
    ``.npy`` file is the vector of row i of that file. Checked: the row count equals the loaded
    file's, the dimension equals the space's. float16 input is fine; rows are L2-normalised.
    Queries that already have a vector in the space keep it. One transaction.

    ``embedder`` names the space the vectors belong to (default: the active space's embedder,
    else ``$AVENGERS_EMBEDDER``); that space becomes active.
    """
    started = time.perf_counter()
    npy = Path(npy_path)
    source = str(Path(source_file).expanduser().resolve())
    matrix = read_npy(npy)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InputError(
            f"expected a 2-d array (rows x dimension), got shape {matrix.shape}", location=str(npy)
        )
    if not np.issubdtype(matrix.dtype, np.floating):
        raise InputError(f"expected floating-point vectors, got {matrix.dtype}", location=str(npy))
    file_rows, dimension = int(matrix.shape[0]), int(matrix.shape[1])
    with connections.connection(url, conn=conn) as c, c.transaction():
        datasets = c.execute(
            """SELECT name, metadata->>'source_file_rows' FROM avengers.datasets
               WHERE metadata->>'source_file' = %s ORDER BY name""",
            (source,),
        ).fetchall()
        if not datasets:
            raise NotFound(
                f"no dataset was loaded from {source}: load it first (`avengers load-table` or "
                "`avengers datasets add`) and pass the same file as `source`"
            )
        for name, rows in datasets:
            if rows is None or int(rows) != file_rows:
                raise InputError(
                    f"{file_rows} vectors but dataset {name!r} was loaded from a file of "
                    f"{rows} rows ({source}); the .npy must have one row per row of that file",
                    location=str(npy),
                )
        emb = _resolve_embedder(c, embedder)
        existing = embedding_spaces.get_space(c, emb.name)
        if existing is not None and existing.dimension != dimension:
            raise InputError(
                f"{dimension}-d vectors, but space {existing.id} ({existing.embedder}) is "
                f"{existing.dimension}-d; pass `embedder` naming the model that made them",
                location=str(npy),
            )
        declared = getattr(emb, "_dimension", None)  # known without running the model
        if declared is not None and declared != dimension:
            raise InputError(
                f"{dimension}-d vectors, but {emb.name} makes {declared}-d ones; pass "
                "`embedder` naming the model that made them",
                location=str(npy),
            )
        space = _space_for(c, emb, dimension)
        rows = c.execute(
            query("calibration", "file_queries"),
            (source, space.id),
        ).fetchall()
        total = c.execute(
            "SELECT count(*) FROM avengers.queries WHERE metadata->>'source_file' = %s", (source,)
        ).fetchone()[0]
        bad = [qid for qid, row in rows if row is None or not 0 <= row < file_rows]
        if bad:
            raise InputError(
                f"{len(bad)} queries from {source} have no valid metadata.source_row "
                f"(first query ids: {bad[:5]}); reload the file",
                location=str(npy),
            )
        imported = 0
        step = 8192
        from tqdm import tqdm

        with tqdm(
            total=len(rows),
            desc="import vectors",
            unit="q",
            file=sys.stderr,
            disable=not progress,
        ) as bar:
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                positions = np.fromiter((r[1] for r in chunk), dtype=np.int64, count=len(chunk))
                with np.errstate(over="ignore"):
                    # float32 is what is stored: values beyond its range become infinite here,
                    # and tiny ones zero, so the check sees what would be stored.
                    raw = np.asarray(matrix[positions]).astype(np.float32)
                bad = unusable_rows(raw)
                if bad.size:
                    row = int(positions[bad[0]])
                    raise InputError(
                        f"{_fault(raw[bad[0]])}: a query needs a direction to be clustered and "
                        "routed; nothing was imported",
                        location=f"{npy} row {row} (0-based: data row {row + 1} of {source})",
                    )
                block = normalize_rows(raw)
                imported += store_vectors(c, space.id, [r[0] for r in chunk], block)
                bar.update(len(chunk))
    return _result(
        ImportResult,
        space,
        started,
        source_file=source,
        file_rows=file_rows,
        imported=imported,
        already=total - len(rows),
    )
