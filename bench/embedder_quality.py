"""Do the fast embedders route like torch? For each embedder, the vectors of every row of the
shared RouterDC and LLMRouter tables (cached under ``--cache``), then:

1. Decision agreement: one RouterDC store calibrated with torch's vectors (the precomputed ones,
   k = 64, seed 42, the default routing method); its test queries (ID and OOD) routed with each
   embedder's vectors against that same clustering; the share whose chosen model equals the one
   chosen with torch's vectors — the precomputed (float16) ones for every test query, and fresh
   float32 ones from sentence-transformers on torch on a seeded sample (``--sampled torch``,
   ``--sample``). Only for embedders of torch's dimension.
2. Replay: for each embedder a store of its own space (its vectors for calibration and test),
   ``avengers evaluate``'s replay (its 5 default seeds, k = 64): the macro over RouterDC's 5 ID datasets,
   over OOD3 (PreAlgebra, MBPP, C-EVAL), and over LLMRouter's 10 test tasks.

Embedders: ``torch`` (sentence-transformers on torch), ``onnx`` (the default's ONNX Runtime
backend, fp32), ``int8`` (all-MiniLM-L6-v2-int8), ``npy`` (the precomputed torch vectors in
../shared/data, float16: what the committed replay figures used) and ``model2vec:DIR`` (a
static model, e.g. one distilled by bench/distill_model2vec.py); ``LABEL@TABLE`` runs one on
one table only.

Example (the committed figures; the vectors take 20-40 minutes per embedder on busy cores):
    .venv/bin/python bench/embedder_quality.py --embedders npy onnx int8 \\
        model2vec:minilm-m2v --sampled torch --sample 1500
    .venv/bin/python bench/embedder_quality.py --embedders int8@llmrouter --sampled
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from _common import SHARED_DATA, Timer, finish, fresh_database, parser, say

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from avengers_store.calibration.embedders import (  # noqa: E402
    MINILM,
    MINILM_INT8,
    SentenceTransformerEmbedder,
    get_embedder,
)
from avengers_store.evaluation.replay import DEFAULT_SEEDS  # noqa: E402
from avengers_store.store import config  # noqa: E402

ROUTERDC = SHARED_DATA / "routerdc_7models" / "routerdc_7models.parquet"
LLMROUTER = SHARED_DATA / "llmrouter_9models" / "llmrouter_9models.parquet"
OOD3 = "math_prealgebra,mbpp,ceval"
TABLES = {
    "routerdc": {
        "path": ROUTERDC,
        "load": {
            "dataset_col": "benchmark",
            "text_col": "question",
            "outcome_prefix": "acc|",
            "split_col": "split",
            "split_map": {
                "train": "calibration",
                "test": "test",
                "ood_test": "test",
                "extra_train": "skip",
                "extra_test": "skip",
            },
            "ood_splits": ["ood_test"],
            "dataset_task_types": {
                "mmlu": "mc",
                "cmmlu": "mc",
                "arc_challenge": "mc",
                "ceval": "mc",
                "gsm8k": "math",
                "math_prealgebra": "math",
                "humaneval": "code",
                "mbpp": "code",
                "humanevalpack_js": "code",
            },
        },
    },
    "llmrouter": {
        "path": LLMROUTER,
        "load": {
            "dataset_col": "task_name",
            "text_col": "question",
            "outcome_prefix": "score|",
            "split_col": "split_clean",
            "split_map": {
                "train": "calibration",
                "test": "test",
                "train_overlaps_test": "skip",
            },
        },
    },
}


def embedder_for(label: str):
    """(space name, embedder or None for the precomputed vectors)."""
    if label == "torch":
        return MINILM, SentenceTransformerEmbedder(MINILM, backend="torch", dimension=384)
    if label == "onnx":
        return MINILM, SentenceTransformerEmbedder(MINILM, backend="onnx", dimension=384)
    if label == "int8":
        return MINILM_INT8, get_embedder(MINILM_INT8)
    if label == "npy":
        return MINILM, None
    if label.startswith("model2vec:"):
        emb = get_embedder(label)
        return emb.name, emb
    raise SystemExit(f"unknown embedder {label!r}: torch, onnx, int8, npy or model2vec:DIR")


def shown(label: str) -> str:
    """The label in results: a Model2Vec model by its directory's name, not its path."""
    if label.startswith("model2vec:"):
        return "model2vec:" + Path(label.removeprefix("model2vec:")).name
    return label


def test_sample(size: int, seed: int) -> np.ndarray:
    """A seeded sample of RouterDC's test rows (ID and OOD), sorted."""
    splits = pq.read_table(ROUTERDC, columns=["split"]).column("split").to_pylist()
    rows = np.asarray([i for i, s in enumerate(splits) if s in ("test", "ood_test")])
    picked = np.random.default_rng(seed).choice(rows, min(size, len(rows)), replace=False)
    return np.sort(picked)


def table_vectors(table: str, label: str, cache: Path, rows: np.ndarray | None = None) -> Path:
    """The .npy of the rows of ``table`` embedded by ``label`` (float32, cached): every row the
    load reads, or only ``rows``; the others stay zero."""
    path = TABLES[table]["path"]
    if label == "npy":
        return path.parent / "embeddings_minilm.npy"
    safe = "".join(c if c.isalnum() else "_" for c in label)
    out = cache / f"{table}-{safe}{'' if rows is None else f'-sample{len(rows)}'}.npy"
    if out.exists():
        return out
    _, emb = embedder_for(label)
    spec = TABLES[table]["load"]
    columns = pq.read_table(path, columns=["question", spec["split_col"]]).to_pydict()
    # Rows the load skips are never read: they stay zero (and are not embedded).
    wanted = [
        i
        for i, split in enumerate(columns[spec["split_col"]])
        if spec["split_map"].get(split) != "skip"
    ]
    if rows is not None:
        wanted = sorted(set(wanted) & set(rows.tolist()))
    texts = [str(columns["question"][i]) for i in wanted]
    with Timer() as took:
        embedded = emb.embed(texts, batch_size=64)
    say(f"{table}: {len(texts):,} texts embedded by {label} in {took.seconds:.0f} s")
    vectors = np.zeros((len(columns["question"]), embedded.shape[1]), dtype=np.float32)
    vectors[wanted] = embedded
    cache.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.rename(out)
    return out


def load_store(url: str, table: str, npy: Path, space: str) -> None:
    from avengers_store.calibration.query_vectors import import_npy
    from avengers_store.ingest.wide_tables import load_table

    spec = TABLES[table]
    load_table(spec["path"], url=url, **spec["load"])
    import_npy(npy, spec["path"], embedder=space, url=url)


def agreement(vectors: dict[str, Path], seed: int) -> dict:
    """Decisions on RouterDC's test queries with each embedder's vectors against one clustering
    fitted on the precomputed torch vectors (``npy``); an embedder whose vectors cover only a
    sample of the test rows is compared on those rows, with fresh torch vectors too when
    ``torch`` is among them."""
    from avengers_store.calibration import reclustering
    from avengers_store.client import AvengersClient
    from avengers_store.store import connections

    npy = TABLES["routerdc"]["path"].parent / "embeddings_minilm.npy"
    with fresh_database("embedder_agreement") as url:
        load_store(url, "routerdc", npy, MINILM)
        reclustering.recluster(k=64, seed=seed, url=url)
        with connections.connect(url) as conn:
            rows = conn.execute(
                """SELECT (q.metadata->>'source_row')::int, d.is_ood
                   FROM avengers.queries q JOIN avengers.datasets d ON d.id = q.dataset_id
                   WHERE q.split = 'test' ORDER BY q.id"""
            ).fetchall()
        source_rows = np.asarray([r[0] for r in rows])
        ood = np.asarray([bool(r[1]) for r in rows])
        decisions, covered = {}, {}
        client = AvengersClient(url)
        try:
            for label, path in {"npy": npy, **vectors}.items():
                matrix = np.asarray(np.load(path, mmap_mode="r")[source_rows], np.float32)
                if matrix.shape[1] != 384:
                    continue
                have = np.any(matrix != 0, axis=1)
                chosen = np.full(len(source_rows), None, dtype=object)
                chosen[have] = [d.model for d in client.route_many(matrix[have])]
                decisions[label], covered[label] = chosen, have
        finally:
            client.close()
    out: dict[str, object] = {"reference": "npy (precomputed torch vectors, float16)"}
    for label, models in decisions.items():
        if label == "npy":
            continue
        have = covered[label]
        figure = {}
        for ref in ("npy", "torch"):
            if ref == label or ref not in decisions:
                continue
            both = have & covered[ref]
            same = models[both] == decisions[ref][both]
            figure[f"vs_{ref}"] = {
                "test_queries": int(both.sum()),
                "same_decision": round(float(same.mean()), 5),
                "same_decision_id": round(float(same[~ood[both]].mean()), 5),
                "same_decision_ood": round(float(same[ood[both]].mean()), 5),
            }
            say(
                f"{label} vs {ref}: the same model for {same.mean():.2%} of {both.sum():,} "
                f"RouterDC test queries (ID {same[~ood[both]].mean():.2%}, OOD "
                f"{same[ood[both]].mean():.2%})"
            )
        out[shown(label)] = figure
    return out


def replay(table: str, npy: Path, space: str, seeds: list[int]) -> dict:
    from avengers_store.evaluation.replay import evaluate

    with fresh_database(f"embedder_replay_{table}") as url:
        load_store(url, table, npy, space)
        kwargs = {"ood_macro": OOD3.split(",")} if table == "routerdc" else {}
        report = evaluate(seeds=seeds, url=url, **kwargs)
    out = {"id_macro": round(report.id_macro, 2)}
    if report.ood_macro is not None:
        out["ood_macro"] = round(report.ood_macro, 2)
    out["per_seed_id"] = [round(v, 2) for v in report.groups["id"].routed.values]
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--embedders", nargs="+", default=["onnx", "int8", "npy"])
    ap.add_argument(
        "--sampled",
        nargs="*",
        default=["torch"],
        help="embedders run on a sample of RouterDC's test queries only (agreement, no replay)",
    )
    ap.add_argument("--sample", type=int, default=1000, help="size of that sample")
    ap.add_argument("--cache", type=Path, default=None, help="vector cache directory")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    ap.add_argument("--phase", choices=["vectors", "all"], default="all")
    args = ap.parse_args()
    if not ROUTERDC.exists() or not LLMROUTER.exists():
        raise SystemExit(f"the shared tables are not in {SHARED_DATA}")
    cache = args.cache or config.home() / "bench-vectors"
    sample = test_sample(args.sample, args.seeds[0])
    # LABEL@TABLE: that embedder on that table only (a replay there, no full RouterDC run).
    wanted = [(e.split("@")[0], e.split("@")[1] if "@" in e else None) for e in args.embedders]
    vectors: dict[str, dict[str, Path]] = {table: {} for table in TABLES}
    for label, only in wanted:
        for table in TABLES if only is None else [only]:
            vectors[table][label] = table_vectors(table, label, cache)
    sampled = {label: table_vectors("routerdc", label, cache, sample) for label in args.sampled}
    if args.phase == "vectors":
        return
    figures: dict[str, object] = {
        "embedders": [shown(label) for label, _ in wanted],
        "sampled": args.sampled,
        "sample": len(sample),
        "seeds": args.seeds,
    }
    figures["agreement"] = agreement({**vectors["routerdc"], **sampled}, args.seeds[0])
    replays: dict[str, dict] = {}
    for table, by_label in vectors.items():
        for label, path in by_label.items():
            space, _ = embedder_for(label)
            report = replay(table, path, space, args.seeds)
            replays.setdefault(shown(label), {})[table] = report
            say(f"replay {table} with {shown(label)}: {report}")
    figures["replay"] = replays
    finish("embedder_quality", figures)


if __name__ == "__main__":
    main()
