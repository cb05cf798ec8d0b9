"""Small stores written with plain SQL for tests and benchmarks: vectors, clusterings, models,
profiles, the synthetic calibration store, and stores that route real text or the scripted
server's embeddings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from avengers_store.calibration import embedding_spaces
from avengers_store.calibration.clusterings import CENTROID_COLUMNS
from avengers_store.calibration.query_vectors import store_vectors
from avengers_store.ingest.text_identity import content_hash
from avengers_store.store.bulk import copy_rows


def unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random unit vectors of ``dim`` dimensions, float32."""
    return unit(rng.standard_normal((n, dim)))


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
    copy_rows(
        conn,
        ("avengers", "centroids"),
        CENTROID_COLUMNS,
        ((cid, i, c, 1) for i, c in enumerate(centroids)),
    )
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


SCRIPTED_EMBEDDER = "embed"
RANKED_MODELS = ("alpha", "bravo", "charlie")


def add_scripted_store(
    conn: psycopg.Connection,
    base_url: str,
    *,
    models: Sequence[str] = RANKED_MODELS,
    dim: int = 16,
    queries_per_cluster: int = 3,
) -> int:
    """A served store whose embedder is the scripted server's ``/v1/embeddings`` (so every
    client and process embeds text the same way, without a model to load) and whose ``models``
    all point at ``base_url`` (served under their own names), ranked in the given order in
    both of its two clusters. Returns the active clustering's id."""
    centroids = unit_rows(np.random.default_rng(7), 2, dim)
    cid = add_clustering(conn, centroids, embedder=f"openai:{base_url}#{SCRIPTED_EMBEDDER}")
    scores: dict[str, list[list[float]]] = {}
    for rank, name in enumerate(models):
        ensure_model(conn, name, endpoint=base_url, served_name=name)
        hits = max(0, queries_per_cluster - rank)
        row = [1.0] * hits + [0.0] * (queries_per_cluster - hits)
        scores[name] = [row, row]
    add_profiles(conn, cid, scores)
    activate(conn, cid)
    return cid


def exact_argmin(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid by Euclidean distance in float64; the lower index wins ties."""
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c = centroids.astype(np.float64)
    d = (q * q).sum(1)[:, None] - 2 * q @ c.T + (c * c).sum(1)[None, :]
    return d.argmin(axis=1)


class FixedEmbedder:
    """An embedder that puts every text at one unit vector (``direction``), for tests where the
    text's content does not matter; counts the batches it was asked to embed. ``inline``: called
    on the event loop (``EmbeddingBatcher`` then skips its worker thread and its batching)."""

    def __init__(
        self, direction: Sequence[float], name: str = "fixed", *, inline: bool = False
    ) -> None:
        self.inline = inline
        row = np.asarray(direction, dtype=np.float32)
        self.row = row / np.linalg.norm(row)
        self.name = name
        self.calls: list[int] = []

    @property
    def dimension(self) -> int:
        return int(self.row.size)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False):
        self.calls.append(len(texts))
        return np.tile(self.row, (len(texts), 1))


MODELS = [f"model-{i}" for i in range(7)]
SPACE = "synthetic-16"


@dataclass
class Synthetic:
    dim: int
    blobs: np.ndarray  # (n_blobs, dim) unit centres
    query_ids: dict[str, list[int]] = field(default_factory=dict)  # dataset -> ids in row order
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    blob_of: dict[int, int] = field(default_factory=dict)
    best_model: dict[int, str] = field(default_factory=dict)  # blob -> model that leads there
    space_id: int | None = None


def add_models(conn: psycopg.Connection, names: list[str]) -> dict[str, int]:
    ids = {}
    for name in names:
        ids[name] = conn.execute(
            "INSERT INTO avengers.models (name) VALUES (%s) RETURNING id", (name,)
        ).fetchone()[0]
    return ids


def add_dataset(
    conn: psycopg.Connection,
    name: str,
    texts: list[str],
    splits: list[str],
    *,
    is_ood: bool = False,
    source_file: str | None = None,
) -> list[int]:
    source_file = source_file or f"/synthetic/{name}.jsonl"
    dataset_id = conn.execute(
        """INSERT INTO avengers.datasets (name, is_ood, source, metadata)
           VALUES (%s, %s, %s, %s) RETURNING id""",
        (
            name,
            is_ood,
            source_file,
            json.dumps({"source_file": source_file, "source_file_rows": len(texts)}),
        ),
    ).fetchone()[0]
    ids = []
    for row, (text, split) in enumerate(zip(texts, splits, strict=True)):
        ids.append(
            conn.execute(
                """INSERT INTO avengers.queries (dataset_id, external_id, text, split,
                                                 content_hash, metadata)
                   VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
                (
                    dataset_id,
                    str(row),
                    text,
                    split,
                    content_hash(text),
                    json.dumps({"source_file": source_file, "source_row": row}),
                ),
            ).fetchone()[0]
        )
    return ids


def add_outcomes(conn: psycopg.Connection, rows: list[tuple[int, int, float]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO avengers.outcomes (query_id, model_id, score) VALUES (%s, %s, %s)
               ON CONFLICT (query_id, model_id) DO UPDATE SET score = excluded.score""",
            rows,
        )


def seed_store(
    conn: psycopg.Connection,
    *,
    n_blobs: int = 4,
    per_blob: int = 30,
    dim: int = 16,
    seed: int = 0,
    embed: bool = True,
) -> Synthetic:
    """Datasets ``alpha`` (blobs 0, 1) and ``beta`` (blobs 2, 3), OOD ``gamma`` (near blob 0);
    70% calibration. Model ``model-b`` is best on blob b (mean 0.9, others 0.2-0.6)."""
    rng = np.random.default_rng(seed)
    blobs = unit(rng.normal(size=(n_blobs, dim)) * 5)
    syn = Synthetic(dim=dim, blobs=blobs)
    model_ids = add_models(conn, MODELS)
    plan = {"alpha": [0, 1], "beta": [2, 3], "gamma": [0]}
    outcome_rows = []
    all_ids, all_vecs = [], []
    for dataset, blob_list in plan.items():
        texts, splits, vecs, owners = [], [], [], []
        for b in blob_list:
            pts = unit(blobs[b] + 0.15 * rng.normal(size=(per_blob, dim)))
            for i in range(per_blob):
                texts.append(f"{dataset} blob {b} question {i}")
                splits.append("calibration" if i < int(per_blob * 0.7) else "test")
                vecs.append(pts[i])
                owners.append(b)
        ids = add_dataset(conn, dataset, texts, splits, is_ood=dataset == "gamma")
        syn.query_ids[dataset] = ids
        for qid, vec, b in zip(ids, vecs, owners, strict=True):
            syn.vectors[qid] = vec
            syn.blob_of[qid] = b
            for mi, model in enumerate(MODELS):
                p = 0.9 if mi == b else 0.2 + 0.05 * mi
                outcome_rows.append((qid, model_ids[model], float(rng.random() < p)))
        all_ids += ids
        all_vecs += vecs
    for b in range(n_blobs):
        syn.best_model[b] = MODELS[b]
    add_outcomes(conn, outcome_rows)
    if embed:
        space = embedding_spaces.get_or_create_space(conn, SPACE, dim, {"synthetic": True})
        embedding_spaces.activate_space(conn, space.id)
        store_vectors(conn, space.id, all_ids, np.stack(all_vecs))
        syn.space_id = space.id
    return syn


ARITHMETIC = "What is 17 plus 25? Answer with a number."
LITERATURE = "Which playwright wrote the tragedy Hamlet?"


def two_topic_store(
    url: str,
    profiles: dict[str, list[list[int]]],
    prices: dict[str, tuple[float, float]] | None = None,
) -> str:
    """An active clustering of two clusters centred on the real all-MiniLM-L6-v2 embeddings of
    ARITHMETIC and LITERATURE, so a client or the gateway embeds and routes real text;
    ``profiles`` are each model's per-query scores in cluster 0 and 1 (add_profiles),
    ``prices`` optional (price in, price out) per 1M tokens. Returns ``url``."""
    from avengers_store.calibration.embedders import get_embedder
    from avengers_store.store import connections

    embedder = get_embedder("all-MiniLM-L6-v2")
    centroids = embedder.embed([ARITHMETIC, LITERATURE])
    with connections.connect(url) as conn:
        cid = add_clustering(conn, np.asarray(centroids, dtype=np.float32), embedder=embedder.name)
        conn.execute(
            "UPDATE avengers.embedding_spaces SET params = %s WHERE embedder = %s",
            (psycopg.types.json.Jsonb(embedder.params), embedder.name),
        )
        for name in profiles:
            ensure_model(conn, name)
        for name, (cost_in, cost_out) in (prices or {}).items():
            conn.execute(
                "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s "
                "WHERE name = %s",
                (cost_in, cost_out, name),
            )
        add_profiles(conn, cid, profiles)
        activate(conn, cid)
        conn.commit()
    return url


def two_cluster_store(url: str, space: str) -> str:
    """A store with one clustering of two centroids on the first two axes of ``space`` (4-d)
    and models alpha (best on cluster 0), bravo (best on 1) and charlie, served; returns
    ``url``."""
    from avengers_store.store import connections

    with connections.connect(url) as conn:
        cid = add_clustering(
            conn, np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32), embedder=space
        )
        for name in ("alpha", "bravo", "charlie"):
            ensure_model(conn, name)
        add_profiles(
            conn,
            cid,
            {"alpha": [[1, 1], [0, 0]], "bravo": [[1, 0], [1, 1]], "charlie": [[0, 0], [1, 0]]},
        )
        activate(conn, cid)
        conn.commit()
    return url


def set_endpoints(url: str, **endpoints: str | tuple[str, str] | None) -> None:
    """``name=(base_url, served_name)``, ``name=base_url`` (served as its own name) or
    ``name=None`` (no endpoint)."""
    with psycopg.connect(url) as conn:
        for name, target in endpoints.items():
            if isinstance(target, str):
                target = (target, name)
            base, served = target if target else (None, None)
            conn.execute(
                "UPDATE avengers.models SET endpoint = %s, served_name = %s WHERE name = %s",
                (base, served, name),
            )


def log_rows(url: str, route_ids: list[str]) -> dict[str, tuple]:
    """route_log rows by route id: strategy, models, cluster, final_answer, api_key_id,
    metadata."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT route_id::text, strategy, models, cluster, final_answer, api_key_id, metadata "
            "FROM avengers.route_log WHERE route_id::text = ANY(%s)",
            (route_ids,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


# Outcomes per dataset, split and model (one list entry per query). alpha and gamma (OOD) sit on
# e1, beta on e2, so k = 2 separates alpha from beta and gamma routes like alpha.
REPLAY_PLAN = {
    ("alpha", "calibration"): {"m1": [1, 1, 1, 1, 1], "m2": [0, 0, 0, 0, 0], "m3": [1, 1, 0, 0, 0]},
    ("beta", "calibration"): {"m1": [0, 0], "m2": [1, 1], "m3": [1, 1]},
    ("alpha", "test"): {"m1": [1, None], "m2": [1, 1], "m3": [0, 0]},  # None: not evaluated
    ("beta", "test"): {"m1": [1, 1], "m2": [0, 1], "m3": [1, 0]},
    ("gamma", "test"): {"m1": [0, 0], "m2": [1, 0], "m3": [1, 1]},
}
REPLAY_AXIS = {"alpha": 0, "beta": 1, "gamma": 0}


def build_replay_store(conn: psycopg.Connection) -> None:
    """A tiny store with hand-computable replays: 3 models, datasets alpha and beta (in
    distribution) and gamma (OOD) on a 4-d space, outcomes as ``REPLAY_PLAN`` says."""
    ids = add_models(conn, ["m1", "m2", "m3"])
    rng = np.random.default_rng(0)
    all_ids, vectors, outcomes = [], [], []
    for name in ("alpha", "beta", "gamma"):
        parts = [(split, REPLAY_PLAN[(n, split)]) for (n, split) in REPLAY_PLAN if n == name]
        texts, splits, cells = [], [], []
        for split, per_model in parts:
            for i in range(len(per_model["m1"])):
                texts.append(f"{name} {split} question {i}")
                splits.append(split)
                cells.append({m: per_model[m][i] for m in per_model})
        qids = add_dataset(conn, name, texts, splits, is_ood=name == "gamma")
        for qid, cell in zip(qids, cells, strict=True):
            v = np.zeros(4)
            v[REPLAY_AXIS[name]] = 1.0
            v += 0.01 * rng.normal(size=4)
            vectors.append(v / np.linalg.norm(v))
            all_ids.append(qid)
            outcomes += [(qid, ids[m], float(s)) for m, s in cell.items() if s is not None]
    add_outcomes(conn, outcomes)
    space = embedding_spaces.get_or_create_space(conn, "tiny-4", 4, {})
    embedding_spaces.activate_space(conn, space.id)
    store_vectors(conn, space.id, all_ids, np.stack(vectors).astype(np.float32))
