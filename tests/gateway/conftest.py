"""Fixtures of the gateway tests: a store whose two clusters are centred on real
all-MiniLM-L6-v2 embeddings of an arithmetic and a literature question, so the gateway embeds
and routes real text; three models (``alpha`` leads cluster 0, ``bravo`` cluster 1, ``charlie``
trails both) whose endpoints each test sets."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from avengers_store.calibration.embedders import get_embedder
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model

ARITHMETIC = "What is 17 plus 25? Answer with a number."
LITERATURE = "Which playwright wrote the tragedy Hamlet?"


@pytest.fixture(scope="module")
def store(db_url) -> str:
    embedder = get_embedder("all-MiniLM-L6-v2")
    centroids = embedder.embed([ARITHMETIC, LITERATURE])
    with connections.connect(db_url) as conn:
        cid = add_clustering(conn, np.asarray(centroids, dtype=np.float32), embedder=embedder.name)
        conn.execute(
            "UPDATE avengers.embedding_spaces SET params = %s WHERE embedder = %s",
            (psycopg.types.json.Jsonb(embedder.params), embedder.name),
        )
        for name in ("alpha", "bravo", "charlie"):
            ensure_model(conn, name)
        add_profiles(
            conn,
            cid,
            {
                "alpha": [[1, 1, 1], [0, 0, 1]],
                "bravo": [[0, 1, 1], [1, 1, 1]],
                "charlie": [[0, 0, 1], [0, 0, 1]],
            },
        )
        activate(conn, cid)
        conn.commit()
    return db_url


def set_endpoints(url: str, **endpoints: tuple[str, str] | None) -> None:
    """``name=(base_url, served_name)`` or ``name=None`` (no endpoint)."""
    with psycopg.connect(url) as conn:
        for name, target in endpoints.items():
            base, served = target if target else (None, None)
            conn.execute(
                "UPDATE avengers.models SET endpoint = %s, served_name = %s WHERE name = %s",
                (base, served, name),
            )


def log_rows(url: str, route_ids: list[str]) -> dict[str, tuple]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT route_id::text, strategy, models, cluster, final_answer, api_key_id, metadata "
            "FROM avengers.route_log WHERE route_id::text = ANY(%s)",
            (route_ids,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


@pytest.fixture
def endpoints(store) -> Iterator[None]:
    yield
    set_endpoints(store, alpha=None, bravo=None, charlie=None)
