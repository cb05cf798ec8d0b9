"""A local sentence-transformers model (BERT-style encoder + mean pooling) on ONNX Runtime.

The ONNX file is built on first use from the model's own local weights (torch's exporter; no hub,
nothing downloaded) and kept under ``$AVENGERS_HOME/embedders/<model>-<key>-<variant>/``, where
the key changes with the weights, their config and this module's export format. ``fp32`` is the
exported graph; ``int8`` is its dynamic quantisation (weights of the matrix products in int8,
activations quantised per batch). A build writes into a temporary directory beside the cache and
renames it into place, so two processes building at once never leave a half-written model: the
second rename finds the directory there and its copy is dropped.

Each fresh export is checked against torch on probe texts before it is kept; a graph that
disagrees (a tracer that baked a shape into it) raises ``ExportFailed`` and nothing is cached.

The encoder tokenises with the model's ``tokenizer.json`` (the ``tokenizers`` library: as
sentence-transformers does, texts are stripped, truncated to ``max_seq_length`` and padded to the
longest of the batch), so serving from a built model imports neither torch nor transformers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avengers_store.store import config

# Bump when the exported graph or its inputs change: old cache entries are then not reused.
EXPORT_FORMAT = 1
VARIANTS = ("fp32", "int8")
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# A fresh export must reproduce torch's vectors on these to this tolerance (seen: ~3e-7).
PROBES = (
    "What is 2 + 2?",
    "Name the capital of France.",
    "   Padding, truncation and a longer sentence with several clauses, numbers like 3.14159, "
    "and punctuation; it checks that a batch of unequal lengths is pooled over real tokens.",
    "短い日本語の文",
)
CHECK_TOLERANCE = 1e-4


class ExportFailed(RuntimeError):
    """The ONNX model could not be built (export, quantisation or the check against torch)."""


@functools.lru_cache(maxsize=16)
def supported(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` is a model this module reproduces: a BERT encoder, mean pooling and
    an optional normalisation (all-MiniLM-L6-v2's make-up). Other models stay on torch. Read
    once per directory: every embed call asks."""
    root = Path(model_dir)
    try:
        modules = json.loads((root / "modules.json").read_text())
        model_type = json.loads((root / "config.json").read_text()).get("model_type")
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
        pooling = json.loads((root / pooling_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration):
        return False
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    return (
        model_type == "bert"
        and kinds in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"])
        and modes == {"pooling_mode_mean_tokens"}
        and (root / "tokenizer.json").is_file()
    )


def cache_key(model_dir: str | Path) -> str:
    """What identifies a build: the weights (size and modification time), the model config and
    the export format. Reading the 90 MB weights to hash them would cost every process start."""
    root = Path(model_dir)
    digest = hashlib.sha256(f"format={EXPORT_FORMAT};opset={OPSET}".encode())
    for name in ("config.json", "tokenizer.json"):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    for weights in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cache_dir(model_dir: str | Path, name: str, variant: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return config.home() / "embedders" / f"{safe}-{cache_key(model_dir)}-{variant}"


def ensure_model(model_dir: str | Path, name: str, variant: str = "fp32") -> Path:
    """Path of the ONNX file of ``model_dir`` in ``variant``, built and cached on first use."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    final = cache_dir(model_dir, name, variant)
    model = final / "model.onnx"
    if model.is_file():
        return model
    source = ensure_model(model_dir, name, "fp32") if variant == "int8" else None
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        if variant == "fp32":
            _export(model_dir, staging / "model.onnx")
        else:
            _quantize(source, staging / "model.onnx")
        (staging / "build.json").write_text(json.dumps(_provenance(model_dir, variant), indent=1))
        try:
            os.rename(staging, final)
        except OSError:
            # Another process renamed its build into place first: theirs is as good as ours.
            if not model.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def _provenance(model_dir: str | Path, variant: str) -> dict[str, str | int]:
    import onnxruntime
    import torch

    return {
        "source": str(model_dir),
        "variant": variant,
        "export_format": EXPORT_FORMAT,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _export(model_dir: str | Path, out: Path) -> None:
    """torch.onnx.export of the encoder's last hidden state, batch and length dynamic; then the
    export is checked against sentence-transformers on ``PROBES``."""
    import warnings

    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ExportFailed(f"cannot read the model at {model_dir}: {exc}") from exc

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    sample = tokenizer(list(PROBES[:2]), padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "token_embeddings")}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer's notes on shape checks that are constant for an encoder without a
            # cache (padding of the mask, causality) are expected; the probe check below is
            # what decides whether the graph is right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(encoder),
                tuple(sample[name] for name in INPUTS),
                str(out),
                input_names=list(INPUTS),
                output_names=["token_embeddings"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types; any of them means "no ONNX"
        raise ExportFailed(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    _check_against_torch(model_dir, out)


def _check_against_torch(model_dir: str | Path, onnx_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir), device="cpu")
    reference.max_seq_length = 16  # truncation is part of what is checked
    expected = reference.encode(list(PROBES), normalize_embeddings=True, convert_to_numpy=True)
    got = OnnxEncoder(onnx_path, model_dir, max_seq_length=16).encode(list(PROBES))
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    worst = float(np.abs(got - expected).max())
    if not worst <= CHECK_TOLERANCE:
        raise ExportFailed(
            f"the exported model disagrees with torch by {worst:.2e} (tolerance "
            f"{CHECK_TOLERANCE:g}) on probe texts"
        )


def _quantize(source: Path, out: Path) -> None:
    """Dynamic int8 quantisation of the fp32 graph's matrix products, weights per output channel
    (per-tensor weights, or quantising the embedding lookup too, cost 0.94-0.97 mean cosine to
    torch's vectors on RouterDC questions; this 0.99)."""
    import logging

    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # The quantiser logs advice about graph pre-processing on the root logger at WARNING.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            # From a model in memory: given a path, the quantiser writes its shape-inferred
            # copy beside the source, where two processes quantising at once overwrite each
            # other's ("Failed to find proper ai.onnx domain"); in memory it uses a temp dir.
            quantize_dynamic(
                onnx.load(str(source)),
                str(out),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
            )
        finally:
            root.setLevel(level)
    except Exception as exc:  # onnx missing, or an operator the quantiser refuses
        raise ExportFailed(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc


class OnnxEncoder:
    """Mean-pooled token embeddings of an ONNX encoder (not normalised: the caller does that)."""

    def __init__(
        self,
        onnx_path: str | Path,
        model_dir: str | Path,
        *,
        max_seq_length: int,
        threads: int | None = None,
    ) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.onnx_path = str(onnx_path)
        self.max_seq_length = int(max_seq_length)
        tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad = tokenizer.padding or {}
        tokenizer.enable_padding(
            pad_id=pad.get("pad_id", 0), pad_token=pad.get("pad_token", "[PAD]")
        )
        self.tokenizer = tokenizer
        self.threads = threads
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            self.onnx_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        # Batches of similar lengths pad little (sentence-transformers sorts the same way).
        cleaned = [str(t).strip() for t in texts]
        order = np.argsort([-len(t) for t in cleaned], kind="stable")
        batch_size = max(1, batch_size)
        out = []
        for start in range(0, len(cleaned), batch_size):
            chunk = [cleaned[i] for i in order[start : start + batch_size]]
            encodings = self.tokenizer.encode_batch(chunk)
            feed = {
                "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
            }
            (tokens,) = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
            mask = feed["attention_mask"][:, :, None].astype(np.float32)
            pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out.append(pooled.astype(np.float32))
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = np.empty((len(cleaned), out[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(out)
        return vectors
