"""Small stores for routing tests, written with plain SQL: an active embedding space, a clustering
with given centroids, one calibration query per (cluster, repeat) assigned to it, and models whose
outcomes give each cluster a chosen profile."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg

from avengers_store.ingest.text_identity import content_hash


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    a = rng.standard_normal((n, dim))
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def mean_centroids(rng: np.random.Generator, k: int, dim: int, members: int = 4) -> np.ndarray:
    """Centroids as K-means stores them: means of unit vectors, not renormalised."""
    return unit_rows(rng, k * members, dim).reshape(k, members, dim).mean(axis=1).astype(np.float32)


def ensure_space(conn: psycopg.Connection, dim: int, embedder: str | None = None) -> int:
    embedder = embedder or f"test-space-{dim}"
    row = conn.execute(
        "SELECT id FROM avengers.embedding_spaces WHERE embedder = %s", (embedder,)
    ).fetchone()
    if row:
        space_id = row[0]
    else:
        space_id = conn.execute(
            "INSERT INTO avengers.embedding_spaces (embedder, dimension) VALUES (%s, %s) "
            "RETURNING id",
            (embedder, dim),
        ).fetchone()[0]
    conn.execute("UPDATE avengers.embedding_spaces SET active = false WHERE id <> %s", (space_id,))
    conn.execute("UPDATE avengers.embedding_spaces SET active = true WHERE id = %s", (space_id,))
    return space_id


def add_clustering(
    conn: psycopg.Connection, centroids: np.ndarray, *, embedder: str | None = None
) -> int:
    """A 'ready' clustering with these centroids (not activated)."""
    k, dim = centroids.shape
    space_id = ensure_space(conn, dim, embedder)
    cid = conn.execute(
        "INSERT INTO avengers.clusterings (space_id, algorithm, k, seed, status) "
        "VALUES (%s, 'kmeans', %s, 0, 'ready') RETURNING id",
        (space_id, k),
    ).fetchone()[0]
    with conn.cursor().copy(
        "COPY avengers.centroids (clustering_id, cluster, centroid, size) FROM STDIN "
        "WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["integer", "integer", "vector", "integer"])
        for i, c in enumerate(centroids):
            copy.write_row((cid, i, c, 1))
    return cid


def ensure_model(
    conn: psycopg.Connection,
    name: str,
    *,
    endpoint: str | None = None,
    served_name: str | None = None,
    active: bool = True,
) -> int:
    return conn.execute(
        """INSERT INTO avengers.models (name, endpoint, served_name, active, cost_in_per_m,
                                        cost_out_per_m)
           VALUES (%s, %s, %s, %s, 0.2, 0.4)
           ON CONFLICT (name) DO UPDATE SET endpoint = excluded.endpoint,
             served_name = excluded.served_name, active = excluded.active
           RETURNING id""",
        (name, endpoint, served_name, active),
    ).fetchone()[0]


def add_profiles(
    conn: psycopg.Connection,
    clustering_id: int,
    scores: dict[str, Sequence[Sequence[float]]],
    *,
    dataset: str = "fixture",
    task_type: str = "text",
    texts: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
) -> None:
    """``scores[model][cluster]`` lists one outcome per calibration query of that cluster (every
    model gets the same number per cluster). Models must exist."""
    ds = conn.execute(
        "INSERT INTO avengers.datasets (name) VALUES (%s) ON CONFLICT (name) DO UPDATE "
        "SET name = excluded.name RETURNING id",
        (dataset,),
    ).fetchone()[0]
    first = next(iter(scores.values()))
    model_ids = {
        m: conn.execute("SELECT id FROM avengers.models WHERE name = %s", (m,)).fetchone()[0]
        for m in scores
    }
    serial = 0
    for cluster, outcomes in enumerate(first):
        for j in range(len(outcomes)):
            text = texts[serial] if texts else f"c{clustering_id} cluster {cluster} query {j}"
            ref = references[serial] if references else None
            serial += 1
            qid = conn.execute(
                """INSERT INTO avengers.queries (dataset_id, text, reference_answer, task_type,
                                                 split, content_hash)
                   VALUES (%s, %s, %s, %s, 'calibration', %s) RETURNING id""",
                (ds, text, ref, task_type, content_hash(text)),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO avengers.assignments (clustering_id, query_id, cluster, distance) "
                "VALUES (%s, %s, %s, 0)",
                (clustering_id, qid, cluster),
            )
            for model, per_cluster in scores.items():
                conn.execute(
                    "INSERT INTO avengers.outcomes (query_id, model_id, score, source) "
                    "VALUES (%s, %s, %s, 'fixture')",
                    (qid, model_ids[model], per_cluster[cluster][j]),
                )


def activate(conn: psycopg.Connection, clustering_id: int) -> None:
    conn.execute("CALL avengers.activate_clustering(%s)", (clustering_id,))


def exact_argmin(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid by Euclidean distance in float64; the lower index wins ties."""
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c = centroids.astype(np.float64)
    d = (q * q).sum(1)[:, None] - 2 * q @ c.T + (c * c).sum(1)[None, :]
    return d.argmin(axis=1)
