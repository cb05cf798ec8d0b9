"""Filling embedding spaces: resumable batches, one space per embedder, incremental dataset
onboarding, and importing precomputed vectors from .npy files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pytest
from avengers_store.cli.testing import run_cli, run_process

from avengers_store.calibration import embedding_spaces, reclustering
from avengers_store.calibration.embedders import Embedder, normalize_rows
from avengers_store.calibration.query_vectors import embed_queries, import_npy, store_vectors
from avengers_store.errors import InputError, NotFound
from avengers_store.store import connections
from avengers_store.testing import (
    add_dataset,
    add_models,
    add_outcomes,
    ensure_space,
    table_counts,
    throwaway_database,
)


class HashEmbedder(Embedder):
    """Deterministic vectors from a hash of the text; records every call."""

    def __init__(self, name: str = "hash-8", dim: int = 8, fail_on_call: int | None = None):
        self.name = name
        self._dim = dim
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    @property
    def dimension(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False):
        self.calls.append(list(texts))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        rows = [
            np.frombuffer(hashlib.sha256(t.encode()).digest()[: self._dim], np.uint8) - 127.5
            for t in texts
        ]
        return normalize_rows(np.stack(rows))

    @property
    def embedded(self) -> list[str]:
        return [t for call in self.calls for t in call]


def texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} question number {i}" for i in range(n)]


@pytest.fixture
def store(pg_admin_url, template_db):
    with throwaway_database(pg_admin_url, template=template_db) as url:
        yield url


def _load(url: str, name: str, n: int, *, scored: bool = True) -> list[int]:
    with connections.connect(url) as c:
        ids = add_dataset(
            c, name, texts(name, n), ["calibration" if i % 3 else "test" for i in range(n)]
        )
        if scored:
            models = dict(
                c.execute("SELECT name, id FROM avengers.models").fetchall()
            ) or add_models(c, ["m1", "m2"])
            add_outcomes(c, [(q, m, float(q % 2)) for q in ids for m in models.values()])
        c.commit()
    return ids


def test_embed_is_resumable_and_incremental(store):
    _load(store, "alpha", 50)
    broken = HashEmbedder(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        embed_queries(broken, batch_size=16, url=store)
    assert table_counts(store)["query_embeddings"] == 32  # two batches committed before the stop
    resumed = HashEmbedder()
    result = embed_queries(resumed, batch_size=16, url=store)
    assert result.embedded == 18 and result.already == 32
    assert set(resumed.embedded) == set(texts("alpha", 50)[32:])
    again = HashEmbedder()
    assert embed_queries(again, url=store).embedded == 0 and again.calls == []
    with connections.connect(store) as c:
        space = embedding_spaces.active_space(c)
        assert space.embedder == "hash-8" and space.dimension == 8
        stored = c.execute(
            """SELECT q.text, e.embedding FROM avengers.query_embeddings e
               JOIN avengers.queries q ON q.id = e.query_id ORDER BY q.id LIMIT 3"""
        ).fetchall()
    for text, vector in stored:
        assert np.allclose(vector.to_numpy(), HashEmbedder().embed([text])[0], atol=1e-6)


def test_new_dataset_embeds_only_its_queries_and_reclusters(store):
    _load(store, "alpha", 60)
    embed_queries(HashEmbedder(), url=store)
    first = reclustering.recluster(k=4, url=store)
    _load(store, "beta", 30)
    onboarding = HashEmbedder()
    result = embed_queries(onboarding, batch_size=8, url=store)
    assert result.embedded == 30 and sorted(onboarding.embedded) == sorted(texts("beta", 30))
    second = reclustering.recluster(k=4, url=store)
    assert second.id != first.id and second.status == "active"
    assert second.n_queries == first.n_queries + 20
    assert second.params["datasets"] == {"alpha": 40, "beta": 20}


def test_a_new_embedder_gets_its_own_space(store):
    _load(store, "alpha", 30)
    embed_queries(HashEmbedder("hash-8"), url=store)
    reclustering.recluster(k=3, url=store)
    result = embed_queries(HashEmbedder("hash-6", dim=6), url=store)
    assert result.embedded == 30
    with connections.connect(store) as c:
        listed = {s.embedder: s for s in embedding_spaces.list_spaces(c)}
        assert listed["hash-6"].active and not listed["hash-8"].active
        # Routing keeps embedding in the clustered space until the next re-cluster.
        assert embedding_spaces.serving_space(c).embedder == "hash-8"
        with pytest.raises(InputError, match="8-d vectors, got 6-d"):
            embedding_spaces.get_or_create_space(c, "hash-8", 6)
    new = reclustering.recluster(k=3, url=store)
    with connections.connect(store) as c:
        assert new.space_id == listed["hash-6"].id
        assert embedding_spaces.serving_space(c).embedder == "hash-6"
        dims = c.execute(
            """SELECT DISTINCT vector_dims(c.centroid) FROM avengers.centroids c
               WHERE c.clustering_id = %s""",
            (new.id,),
        ).fetchall()
    assert dims == [(6,)]


PRE8 = "openai:http://127.0.0.1:9/v1#precomputed-8"  # never called: vectors come from files
PRE4 = "openai:http://127.0.0.1:9/v1#other-4"
PRE6 = "openai:http://127.0.0.1:9/v1#precomputed-6"


def _file_store(url: str, tmp_path, n: int = 12):
    """A dataset 'loaded' from a file of n rows; row 5 duplicates row 4 (merged, not stored)."""
    source = tmp_path / "table.jsonl"
    source.write_text("".join(json.dumps({"q": i}) + "\n" for i in range(n)))
    with connections.connect(url) as c:
        ids = add_dataset(
            c, "filed", texts("filed", n), ["calibration"] * n, source_file=str(source)
        )
        c.execute("DELETE FROM avengers.queries WHERE id = %s", (ids[5],))
        c.commit()
    return source, ids


def test_import_npy_aligns_rows_and_normalises(store, tmp_path):
    source, ids = _file_store(store, tmp_path)
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(12, 8)).astype(np.float16) * 3
    npy = tmp_path / "vectors.npy"
    np.save(npy, raw)
    result = import_npy(npy, source, embedder=PRE8, url=store)
    assert (result.imported, result.already, result.file_rows) == (11, 0, 12)
    with connections.connect(store) as c:
        got = dict(
            c.execute(
                "SELECT query_id, embedding FROM avengers.query_embeddings WHERE space_id = %s",
                (result.space_id,),
            ).fetchall()
        )
        assert embedding_spaces.active_space(c).embedder == PRE8
    expected = normalize_rows(raw.astype(np.float32))
    for row, qid in enumerate(ids):
        if row == 5:
            assert qid not in got
        else:
            assert np.allclose(got[qid].to_numpy(), expected[row], atol=1e-6)
    again = run_cli_json(store, "--from-npy", str(npy), "--source", str(source))
    assert again["imported"] == 0 and again["already"] == 11


def run_cli_json(url: str, *args: str) -> dict:
    import os

    old = os.environ.get("AVENGERS_DATABASE_URL")
    os.environ["AVENGERS_DATABASE_URL"] = url
    try:
        return json.loads(run_cli("embed", *args, "--json").stdout)
    finally:
        if old is None:
            del os.environ["AVENGERS_DATABASE_URL"]
        else:
            os.environ["AVENGERS_DATABASE_URL"] = old


def test_import_npy_checks_rows_dimension_and_source(store, tmp_path):
    source, _ = _file_store(store, tmp_path)
    before = table_counts(store)
    short = tmp_path / "short.npy"
    np.save(short, np.ones((11, 8), np.float32))
    with pytest.raises(InputError, match=r"11 vectors but dataset 'filed' .* of 12 rows"):
        import_npy(short, source, embedder=PRE8, url=store)
    good = tmp_path / "good.npy"
    np.save(good, np.ones((12, 8), np.float32))
    with pytest.raises(InputError, match="all-MiniLM-L6-v2 makes 384-d ones"):
        import_npy(good, source, url=store)
    with pytest.raises(NotFound, match="no dataset was loaded from"):
        import_npy(good, tmp_path / "other.parquet", url=store)
    import_npy(good, source, embedder=PRE8, url=store)
    wide = tmp_path / "wide.npy"
    np.save(wide, np.ones((12, 9), np.float32))
    with pytest.raises(InputError, match="9-d vectors, but space .* is 8-d"):
        import_npy(wide, source, embedder=PRE8, url=store)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((12, 4), np.nan, np.float32))
    after_good = table_counts(store)
    with pytest.raises(InputError, match="NaN"):
        import_npy(nan, source, embedder=PRE4, url=store)
    assert table_counts(store) == after_good  # the failed import left nothing, not even a space
    assert after_good["query_embeddings"] == before["query_embeddings"] + 11


@pytest.mark.parametrize(
    "value, fault",
    [(0.0, "all zeros"), (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")],
)
def test_import_npy_refuses_an_unusable_vector_naming_its_row(store, tmp_path, value, fault):
    source, _ = _file_store(store, tmp_path)
    vectors = np.random.default_rng(2).normal(size=(12, 6)).astype(np.float32)
    vectors[7] = 0.0
    vectors[7, 1] = value
    npy = tmp_path / "bad.npy"
    np.save(npy, vectors)
    before = table_counts(store)
    with pytest.raises(InputError) as info:
        import_npy(npy, source, embedder=PRE6, url=store)
    assert str(info.value).startswith(f"{npy} row 7 (0-based: data row 8 of {source}): ")
    assert fault in str(info.value)
    assert table_counts(store) == before
    if value == 0.0:  # the same one-line message from the command
        result = run_process(
            "embed", "--from-npy", str(npy), "--source", str(source), "--embedder", PRE6,
            env={"AVENGERS_DATABASE_URL": store},
        )  # fmt: skip
        assert result.returncode == 1 and f"{npy} row 7" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert table_counts(store) == before


def test_store_vectors_refuses_a_zero_vector_from_an_embedder(conn):
    space = ensure_space(conn, 3, "openai:http://127.0.0.1:9/v1#zero-test")
    with pytest.raises(InputError, match=r"^vector of query 42: the vector is all zeros"):
        store_vectors(conn, space, [41, 42], np.array([[1, 0, 0], [0, 0, 0]], np.float32))


def test_cli_embeds_with_the_bundled_model(store, monkeypatch):
    _load(store, "tiny", 4, scored=False)
    monkeypatch.setenv("AVENGERS_DATABASE_URL", store)
    out = json.loads(run_cli("embed", "--batch-size", "2", "--json").stdout)
    assert out["embedder"] == "all-MiniLM-L6-v2" and out["dimension"] == 384
    assert out["embedded"] == 4 and out["already"] == 0
    assert "already had a vector" in run_cli("embed").stdout
