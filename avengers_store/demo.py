"""``avengers demo``: the whole offline recipe on a small real sample bundled with the package.

Steps: migrate the store, load the LLMRouter sample (14 tasks, 9 models, real outcomes) as
datasets ``llmrouter/<task>``, import its precomputed all-MiniLM-L6-v2 vectors, re-cluster,
then read the capability profiles and the paper's model-set selection. Then, as an application
would, route five of the sample's test questions with ``AvengersClient.route_many`` (on their
stored vectors) and replay the test split with ``evaluate`` (one seed, in a transaction that is
rolled back; no model is called). Each step reuses what an earlier run left (data, vectors, an
identical active clustering), so a rerun is quick and adds nothing.

k defaults to 16: about 1,000 calibration queries give ~60 per cluster, enough for per-model means
with a Wilson half-width near ±0.12 (at the paper's k=64 it would be ~15 per cluster, ±0.25), and
16 is close to the 14 tasks; the paper finds k from ~14 to ~140 equally good.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from avengers_store.calibration import clusterings, reclustering
from avengers_store.calibration.clusterings import Clustering
from avengers_store.calibration.model_selection import Selection, select_models
from avengers_store.calibration.profiles import ProfileEntry, get_profiles, plot_profiles
from avengers_store.calibration.query_vectors import import_npy
from avengers_store.errors import AvengersError
from avengers_store.evaluation.results import ModelScore
from avengers_store.ingest.model_pool import list_models
from avengers_store.routing import RouteDecision
from avengers_store.store import config, connections, schema
from avengers_store.store.queries import query

SAMPLE_FILE = "llmrouter_sample.parquet"
VECTORS_FILE = "llmrouter_sample_minilm.npy"
DATASET_PREFIX = "llmrouter/"
EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_K = 16
DEFAULT_BUDGET = 3
SEED = 42
ROUTED_QUESTIONS = 5
TASK_TYPES = {
    "mmlu": "multiple_choice",
    "gpqa": "multiple_choice",
    "commonsense_qa": "multiple_choice",
    "openbook_qa": "multiple_choice",
    "arc_challenge": "multiple_choice",
    "agentverse-logicgrid": "multiple_choice",
    "gsm8k": "math",
    "math": "math",
    "agentverse-mgsm": "math",
    "mbpp": "code",
    "human_eval": "code",
    "natural_qa": "text",
    "trivia_qa": "text",
    "commongen": "text",
}


def sample_paths() -> tuple[Path, Path]:
    """(parquet, npy) of the bundled sample."""
    root = Path(str(resources.files("avengers_store") / "data"))
    parquet, npy = root / SAMPLE_FILE, root / VECTORS_FILE
    if not parquet.exists() or not npy.exists():
        raise AvengersError(
            f"the bundled demo sample is missing from {root} (reinstall avengers-store, or "
            "rebuild it with avengers_store/data/make_demo_sample.py)"
        )
    return parquet.resolve(), npy.resolve()


def default_plot_path() -> Path:
    return config.home() / "demo" / "profiles.png"


@dataclass(frozen=True)
class ClusterSummary:
    """One row of the compact profile table."""

    cluster: int
    size: int
    top_datasets: tuple[tuple[str, int], ...]  # (dataset, queries) most common first
    ranking: tuple[tuple[str, float], ...]  # (model, mean score), best first


@dataclass(frozen=True)
class RoutedQuestion:
    """One test question of the sample routed as an application routes it: its nearest cluster,
    the chosen model, and why in one line (``decision`` holds the chosen model and the
    runner-up)."""

    query_id: int
    dataset: str
    text: str
    cluster: int
    model: str
    why: str
    decision: RouteDecision


@dataclass(frozen=True)
class ReplaySummary:
    """``evaluate`` on the sample's test split, one seed: macro scores over its test datasets
    (×100) of the routed model, the best single model chosen on calibration data
    (dataset-balanced) and the per-query oracle."""

    seed: int
    k: int
    datasets: int
    queries: int
    routed: float
    best_single: ModelScore
    oracle: float
    seconds: float


@dataclass(frozen=True)
class DemoResult:
    url: str
    loaded: bool
    datasets: int
    queries: int
    vectors_imported: int
    clustering: Clustering
    reused_clustering: bool
    clusters: tuple[ClusterSummary, ...]
    selection: Selection
    plot: Path
    routed: tuple[RoutedQuestion, ...]
    replay: ReplaySummary
    active_models: tuple[str, ...] = ()  # the pool the routes and the replay chose among
    timings: dict[str, float] = field(default_factory=dict)


def _load_sample(url: str, parquet: Path) -> tuple[bool, int, int]:
    """Load the sample unless an earlier run did; (loaded now, datasets, queries)."""
    from avengers_store.ingest.wide_tables import load_table

    with connections.connection(url) as c:
        have = c.execute(
            query("demo", "sample_loaded"),
            (str(parquet),),
        ).fetchone()
    if have[0] == len(TASK_TYPES):
        return False, have[0], have[1]
    report = load_table(
        parquet,
        dataset_col="task_name",
        text_col="question",
        split_col="split",
        split_map={"train": "calibration", "test": "test"},
        outcome_prefix="score|",
        answer_col="ground_truth",
        dataset_task_types=TASK_TYPES,
        dataset_prefix=DATASET_PREFIX,
        create_models=True,
        url=url,
    )
    return True, len(report.datasets), report.queries_inserted


def _matching_active(url: str, k: int) -> Clustering | None:
    """The active clustering if it is what this run would fit (same space, k, seed, data)."""
    active = clusterings.active_clustering(url=url)
    if active is None or active.algorithm != "kmeans" or active.seed != SEED:
        return None
    if active.params.get("stratify", "none") != "dataset":  # fitted before per-dataset fits
        return None
    if active.params.get("requested_k") != k:
        return None
    with connections.connection(url) as c:
        space = c.execute("SELECT id FROM avengers.embedding_spaces WHERE active").fetchone()
        current = dict(c.execute(query("demo", "calibration_queries_by_dataset")).fetchall())
    if space is None or space[0] != active.space_id:
        return None
    return active if active.params.get("datasets") == current else None


def cluster_summaries(
    entries: list[ProfileEntry], *, url: str | None = None
) -> tuple[ClusterSummary, ...]:
    """Per cluster: its most common datasets and its models best first."""
    with connections.connection(url) as c:
        rows = c.execute(query("demo", "cluster_datasets")).fetchall()
    composition: dict[int, list[tuple[str, int]]] = {}
    for cluster, name, n in rows:
        composition.setdefault(cluster, []).append((name, n))
    ranking: dict[int, list[tuple[str, float]]] = {}
    sizes: dict[int, int] = {}
    for e in sorted(entries, key=lambda e: (e.cluster, e.rank)):
        ranking.setdefault(e.cluster, []).append((e.model, e.mean_score))
        sizes[e.cluster] = e.cluster_size
    return tuple(
        ClusterSummary(
            cluster=c,
            size=sizes[c],
            top_datasets=tuple(composition.get(c, [])),
            ranking=tuple(ranking[c]),
        )
        for c in sorted(ranking)
    )


def why(decision: RouteDecision) -> str:
    """One line: the chosen model's routing score against the runner-up's, then its record on the
    nearest cluster alone (mean outcome, calibration queries n, Wilson 95% bounds)."""
    if not decision.candidates:
        return "no active model has a profile for this cluster"
    best = decision.candidates[0]
    parts = []
    if best.score is not None:
        line = f"pooled score {best.score:.3f}"
        if len(decision.candidates) > 1 and decision.candidates[1].score is not None:
            second = decision.candidates[1]
            line += f" vs {second.score:.3f} for {second.model}"
        parts.append(line)
    if best.mean_score is not None:
        parts.append(
            f"cluster {decision.cluster} alone {best.mean_score:.2f} (n {best.n}, "
            f"Wilson {best.wilson_low:.2f}-{best.wilson_high:.2f})"
        )
    return "; ".join(parts) or "ranked first"


# Questions nearest this many characters come first: they read whole on one line.
PICK_LENGTH = 60
# What a pick should add that earlier picks do not show, relaxed one step at a time.
PICK_RULES = (("model", "cluster", "dataset"), ("model", "cluster"), ("cluster",), ())


def pick_questions(
    routed: Sequence[RoutedQuestion], count: int = ROUTED_QUESTIONS
) -> tuple[RoutedQuestion, ...]:
    """``count`` routed questions that show the router at work: texts nearest ``PICK_LENGTH``
    characters first, each pick adding a model, a cluster and a dataset not shown yet
    (``PICK_RULES``: the conditions are relaxed one by one when no question meets them all).
    Deterministic."""
    ordered = sorted(routed, key=lambda r: (abs(len(r.text) - PICK_LENGTH), r.query_id))
    chosen: list[RoutedQuestion] = []
    for rule in PICK_RULES:
        for question in ordered:
            if len(chosen) == count:
                return tuple(chosen)
            if question in chosen:
                continue
            if all(
                getattr(question, name) not in {getattr(c, name) for c in chosen} for name in rule
            ):
                chosen.append(question)
    return tuple(chosen)


def route_sample_questions(url: str, count: int = ROUTED_QUESTIONS) -> tuple[RoutedQuestion, ...]:
    """Route every test question of the sample through ``AvengersClient.route_many`` on its
    stored vector (one statement), then keep ``count`` of them (``pick_questions``)."""
    from avengers_store.client import AvengersClient

    with connections.connection(url) as c, c.cursor(binary=True) as cur:
        cur.execute(
            query("demo", "test_questions"),
            (DATASET_PREFIX + "%",),
        )
        rows = cur.fetchall()
    if not rows:
        return ()
    vectors = np.stack([r[3].to_numpy() for r in rows]).astype(np.float32, copy=False)
    with AvengersClient(url) as client:
        decisions = client.route_many(vectors, top_n=2)
    routed = [
        RoutedQuestion(
            query_id=query_id,
            dataset=dataset,
            text=text,
            cluster=decision.cluster,
            model=decision.model or "",
            why=why(decision),
            decision=decision,
        )
        for (query_id, dataset, text, _), decision in zip(rows, decisions, strict=True)
    ]
    return pick_questions(routed, count)


def replay_sample(url: str, k: int, *, progress: bool = False) -> ReplaySummary:
    """``evaluate`` on the sample's test datasets with the demo's seed and k."""
    from avengers_store.evaluation.replay import evaluate

    with connections.connection(url) as c:
        names = [
            row[0]
            for row in c.execute(
                query("demo", "test_datasets"),
                (DATASET_PREFIX + "%",),
            )
        ]
    result = evaluate(k=k, seeds=(SEED,), datasets=names, url=url, progress=progress)
    group = result.groups["id"]
    return ReplaySummary(
        seed=SEED,
        k=k,
        datasets=len(group.datasets),
        queries=sum(r.queries for r in result.datasets if not r.is_ood),
        routed=group.routed.mean,
        best_single=group.best_single_cal_balanced,
        oracle=group.oracle,
        seconds=result.seconds,
    )


def run_demo(
    *,
    k: int = DEFAULT_K,
    budget: int = DEFAULT_BUDGET,
    plot: str | Path | None = None,
    url: str | None = None,
    progress: bool = False,
) -> DemoResult:
    """Run the offline recipe on the bundled sample; see the module docstring."""
    timings: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        timings[name] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    target = connections.resolve_url(url)
    schema.upgrade(target)
    step("upgrade", started)

    parquet, npy = sample_paths()
    started = time.perf_counter()
    loaded, n_datasets, n_queries = _load_sample(target, parquet)
    step("load", started)

    started = time.perf_counter()
    imported = import_npy(npy, parquet, embedder=EMBEDDER, url=target, progress=progress)
    step("embed", started)

    started = time.perf_counter()
    reuse = _matching_active(target, k)
    result = reuse or reclustering.recluster(k=k, seed=SEED, url=target, progress=progress)
    step("recluster", started)

    started = time.perf_counter()
    entries = get_profiles(url=target)
    summaries = cluster_summaries(entries, url=target)
    selection = select_models(budget, url=target)
    out = plot_profiles(plot or default_plot_path(), entries)
    step("profiles", started)

    active = tuple(m.name for m in list_models(active_only=True, url=target))
    started = time.perf_counter()
    routed = route_sample_questions(target)
    step("route", started)

    started = time.perf_counter()
    replay = replay_sample(target, k, progress=progress)
    step("replay", started)
    return DemoResult(
        url=connections.redact(target),
        loaded=loaded,
        datasets=n_datasets,
        queries=n_queries,
        vectors_imported=imported.imported,
        clustering=result,
        reused_clustering=reuse is not None,
        clusters=summaries,
        selection=selection,
        plot=out,
        routed=routed,
        replay=replay,
        active_models=active,
        timings=timings,
    )
