"""Small synthetic calibration stores written with plain SQL: datasets, queries, models, outcomes
and unit vectors in well separated blobs, so clusters and the best model per blob are known."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

from avengers_store.calibration import embedding_spaces
from avengers_store.calibration.query_vectors import store_vectors
from avengers_store.ingest.text_identity import content_hash

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


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


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


def run_cli(*args: str):
    """Run ``avengers ARGS`` in-process; raises with the output when it fails."""
    from avengers_store.cli.main import cli
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exit_code != 0:
        raise AssertionError(
            f"avengers {' '.join(args)} exited {result.exit_code}: {result.output}"
        ) from result.exception
    return result


def run_cli_error(*args: str):
    """Run ``avengers ARGS`` in-process expecting failure; returns the exception raised."""
    from avengers_store.cli.main import cli
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    assert result.exit_code != 0, result.output
    return result.exception


@contextmanager
def fresh_database(admin_url: str, template: str) -> Iterator[str]:
    """A migrated database of its own (for a second store in one test module)."""
    name = f"avengers_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
