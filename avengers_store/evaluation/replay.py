"""Replay evaluation: how good is the routing on the stored outcomes? No model is called.

For each seed the store is re-calibrated on its calibration split (``reclustering.recluster``:
cluster + profile), every test query (OOD datasets included: routed, never clustered) is routed
through ``avengers.decide_many`` — the statement the client uses — and scored with the recorded
outcome of the model it was routed to. Everything runs in ONE transaction that is rolled back at
the end, so the served clustering, profiles, model flags and splits are unchanged afterwards
(other writers that touch ``avengers.clusterings`` wait for the evaluation to finish).

Rules worth knowing (docs/evaluation.md has the full protocol):
- Missing outcomes: a routed model with no recorded outcome for the query scores 0 and is
  counted (``missing_outcomes``); the baselines read the same matrix with the same rule, so all
  columns compare the same queries. A query no active model can take scores 0 (``unrouted``).
- Models: the active models (the ones the router may pick); baselines choose among them too.
- Best single model chosen on calibration data, two ways: query-weighted (mean over all
  clustered calibration queries, the profiles' ``overall_score``) and dataset-balanced (mean
  over calibration datasets of the per-dataset means); both scored on test.
- Best single chosen on test: the model with the best macro over the group's test datasets.
- Macro = unweighted mean over datasets; mean ± std (population, ddof = 0) over seeds.
- ``tradeoffs``: the test queries are routed again at each quality-cost trade-off α
  (``evaluation.frontier``), giving the frontier of (quality, cost) points, every single
  model's point and two headlines; α = 1 must route exactly as the plain replay (checked).
- Strategy ``best`` scores the rank-1 model. ``model-switch`` needs sampled answers to vote on,
  which a replay of scores does not have: it is refused (run it live with ``avengers ask``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg

from avengers_store import routing
from avengers_store.arguments import as_list, one_of
from avengers_store.calibration import fit
from avengers_store.errors import InputError
from avengers_store.evaluation import frontier as frontiers
from avengers_store.evaluation import ood as ood_detection
from avengers_store.evaluation import sweeps as sweeping
from avengers_store.evaluation.harness import Replay, progress_bar, stratify_for, summarise
from avengers_store.evaluation.results import Evaluation, Sweep
from avengers_store.routing import RoutingMethod
from avengers_store.store import connections

DEFAULT_SEEDS = (42, 999, 2024, 2025, 3407)
STRATEGIES = ("best", "model-switch")

MODEL_SWITCH_REFUSED = (
    "strategy model-switch cannot be replayed: it votes on sampled answers, and the store holds "
    "one score per query and model, not answers. Replay scores the routed model (strategy best); "
    "measure model-switch live: ask the questions with that strategy (`avengers ask`)."
)


def evaluate(
    k: int = 64,
    algorithm: str = "kmeans",
    seeds: Sequence[int] = DEFAULT_SEEDS,
    *,
    top_n: int = 1,
    strategy: str = "best",
    method: str | RoutingMethod | None = None,
    stratify: str | None = None,
    datasets: Sequence[str] | None = None,
    ood_macro: Sequence[str] | None = None,
    sweep_k: Sequence[int] | None = None,
    algorithms: Sequence[str] | None = None,
    budgets: Sequence[int] | None = None,
    calibration_fractions: Sequence[float] | None = None,
    sweep_seeds: Sequence[int] | None = None,
    tradeoffs: Sequence[float] | None = None,
    plot_dir: str | Path | None = None,
    frontier_plot: str | Path | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    progress: bool | None = None,
) -> Evaluation:
    """Replay the stored outcomes: calibrate per seed, route every test query through
    ``avengers.decide_many``, score the routed model's recorded outcome, compare with the
    baselines. Runs in one transaction that is rolled back: the store is unchanged afterwards.

    ``datasets``: test datasets to report (default: all with test queries); ``ood_macro``: the OOD
    datasets averaged into ``ood_macro`` (default: all OOD ones; the rest are then reported as
    ``ood_all`` too). Sweeps (``sweep_k``, ``algorithms``, ``budgets`` = numbers of models chosen
    by s(m), ``calibration_fractions``) run on ``sweep_seeds`` (default: the first seed);
    ``plot_dir`` receives one PNG per sweep. ``tradeoffs``: also route every seed's test
    queries at each of these α in [0, 1] (the quality-cost frontier, ``result.frontier``; every
    active model needs a price or measured costs), drawn into ``frontier_plot`` (default:
    ``plot_dir``/frontier.png, else no file). ``stratify``: how each seed's clustering is fitted
    (``reclustering.recluster``); default ``"dataset"``, and ``"none"`` for the paper method, whose
    recipe is one K-means over all calibration queries.
    """
    started = time.perf_counter()
    one_of(strategy, STRATEGIES, "strategy", "strategy")
    if strategy == "model-switch":
        raise InputError(MODEL_SWITCH_REFUSED, location="strategy")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", location="k")
    if top_n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}", location="top_n")
    seeds = tuple(as_list(seeds, "seeds", int) or ())
    if not seeds:
        raise InputError("give at least one seed", location="seeds")
    sweep_seeds = tuple(as_list(sweep_seeds, "sweep_seeds", int) or seeds[:1])
    datasets = as_list(datasets, "datasets", str) or None
    ood_macro = as_list(ood_macro, "ood_macro", str) or None
    sweep_k = as_list(sweep_k, "sweep_k", int)
    algorithms = as_list(algorithms, "algorithms", str)
    budgets = as_list(budgets, "budgets", int)
    calibration_fractions = as_list(calibration_fractions, "calibration_fractions", float)
    tradeoffs = as_list(tradeoffs, "tradeoffs", float)
    for alpha in tradeoffs or ():
        if not 0 <= alpha <= 1:
            raise InputError(
                f"trade-offs must be between 0 and 1, got {alpha}", location="tradeoffs"
            )
    tradeoffs = sorted(set(tradeoffs)) if tradeoffs else None
    for value in sweep_k or ():
        if value < 1:
            raise InputError(f"k must be at least 1, got {value}", location="sweep_k")
    for name in algorithms or ():
        one_of(name, fit.ALGORITHMS, "algorithm", "algorithms")
    for f in calibration_fractions or ():
        if not 0 < f < 1:
            raise InputError(
                f"calibration fractions must be between 0 and 1, got {f}",
                location="calibration_fractions",
            )
    for b in budgets or ():
        if b < 1:
            raise InputError(f"budgets must be >= 1, got {b}", location="budgets")
    chosen = routing.routing_method(method)
    stratify = stratify_for(chosen, stratify)
    with connections.connection(url, conn=conn) as c, c.transaction() as tx:
        rp = Replay(
            c,
            method=chosen,
            stratify=stratify,
            top_n=top_n,
            datasets=datasets,
            ood_macro=ood_macro,
            progress=progress,
        )
        runs = []
        detected = []
        routed_at: list[frontiers.SeedRoutes] = []
        costs = None
        with progress_bar(
            len(seeds), f"evaluate k={k} {algorithm} stratify={stratify}", progress
        ) as bar:
            for seed in seeds:
                bar.set_postfix_str(f"seed {seed}")
                runs.append(rp.run(k, algorithm, seed))
                # The seed's clustering is the served one now: measure its OOD detector.
                detected.append(ood_detection.measure(rp, chosen))
                if tradeoffs:
                    if costs is None:
                        costs = frontiers.cost_matrix(rp, np.flatnonzero(rp.test_mask()))
                    routed_at.append(frontiers.route_seed(rp, runs[-1], tradeoffs, costs))
                bar.update(1)
        rows, groups, cal = summarise(rp, runs, k, algorithm, seeds)
        frontier = frontiers.summarise(rp, runs, routed_at, costs) if tradeoffs else None
        sweeps: dict[str, Sweep] = {}
        if sweep_k:
            sweeps["k"] = sweeping.sweep(
                rp, "k", sweep_k, sweep_seeds, lambda v, s: rp.run(v, algorithm, s)
            )
        if algorithms:
            sweeps["algorithm"] = sweeping.sweep(
                rp, "algorithm", algorithms, sweep_seeds, lambda v, s: rp.run(k, v, s)
            )
        if budgets:
            sweeps["budget"] = sweeping.budget_sweep(rp, k, algorithm, budgets, sweep_seeds)
        if calibration_fractions:
            sweeps["calibration_fraction"] = sweeping.fraction_sweep(
                rp, k, algorithm, calibration_fractions, sweep_seeds
            )
        result = Evaluation(
            k=k,
            algorithm=algorithm,
            stratify=stratify,
            seeds=seeds,
            method=chosen,
            strategy=strategy,
            top_n=top_n,
            models=rp.models,
            datasets=rows,
            groups=groups,
            calibration_macro=cal,
            clusters=tuple(r.k for r in runs),
            missing_outcomes=sum(r.missing_outcomes for r in rows),
            unrouted=sum(r.unrouted for r in rows),
            sweeps=sweeps,
            seconds=0.0,
            ood=ood_detection.summarise(detected, rp.ood_names),
            frontier=frontier,
        )
        # Everything above wrote only inside this transaction: drop it.
        raise psycopg.Rollback(tx)
    if plot_dir is not None and result.sweeps:
        from avengers_store.evaluation.report import plot_sweeps

        plotted = plot_sweeps(result, plot_dir)
        result = dataclasses.replace(
            result,
            sweeps={
                name: dataclasses.replace(
                    sw, plot=str(plotted.get(name)) if name in plotted else None
                )
                for name, sw in result.sweeps.items()
            },
        )
    if result.frontier is not None:
        target = frontier_plot or (Path(plot_dir) / "frontier.png" if plot_dir else None)
        if target is not None:
            from avengers_store.evaluation.report import plot_frontier

            drawn = plot_frontier(result.frontier, target, title=f"method {chosen.name}")
            result = dataclasses.replace(
                result, frontier=dataclasses.replace(result.frontier, plot=str(drawn))
            )
    return dataclasses.replace(result, seconds=round(time.perf_counter() - started, 2))
