"""Replay evaluation: how good is the routing on the stored outcomes? No model is called.

For each seed the store is re-calibrated on its calibration split (``reclustering.recluster``:
cluster + profile), every test query (OOD datasets included: routed, never clustered) is routed
through ``avengers.route_many`` — the statement the client uses — and scored with the recorded
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
- Strategy ``best`` scores the rank-1 model. ``model-switch`` needs sampled answers to vote on,
  which a replay of scores does not have: it is refused (run it live with ``avengers ask``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from avengers_store import routing
from avengers_store.calibration import embedding_spaces, fit, reclustering
from avengers_store.errors import InputError, StoreStateError
from avengers_store.ingest.datasets import seeded_split
from avengers_store.routing import RoutingMethod
from avengers_store.store import connections

DEFAULT_SEEDS = (42, 999, 2024, 2025, 3407)
STRATEGIES = ("best", "model-switch")
# Vectors per route_many statement: big enough to amortise the round trip, small enough to keep
# the statement's working set modest.
ROUTE_BATCH = 4096

MODEL_SWITCH_REFUSED = (
    "strategy model-switch cannot be replayed: it votes on sampled answers, and the store holds "
    "one score per query and model, not answers. Replay scores the routed model (--strategy best); "
    "measure model-switch live with `avengers ask --strategy model-switch --file questions.jsonl`."
)


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """A value over seeds: mean, population std and the per-seed values (×100 scores)."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        vals = tuple(float(v) for v in values)
        arr = np.asarray(vals, dtype=np.float64)
        return cls(float(arr.mean()), float(arr.std()), vals)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass(frozen=True)
class ModelScore:
    model: str
    score: float


@dataclass(frozen=True)
class DatasetResult:
    """One test dataset (×100 scores)."""

    dataset: str
    is_ood: bool
    queries: int
    routed: Stat
    best_single_cal_weighted: float
    best_single_cal_balanced: float
    max_expert: ModelScore
    oracle: float
    random: float
    missing_outcomes: int  # over all seeds: routed picks without a recorded outcome (scored 0)
    unrouted: int  # over all seeds: queries no active model could take (scored 0)
    per_model: dict[str, float]
    routed_top_n_best: Stat | None = None  # top_n > 1: the best outcome among the top n


@dataclass(frozen=True)
class GroupResult:
    """Macro averages over a group of test datasets (×100)."""

    name: str
    datasets: tuple[str, ...]
    routed: Stat
    best_single_cal_weighted: ModelScore
    best_single_cal_balanced: ModelScore
    best_single_test: ModelScore
    max_expert: float
    oracle: float
    random: float
    gap_closed: Stat  # (routed - best single cal. balanced) / (oracle - it), per seed
    gap_closed_weighted: Stat  # the same against the query-weighted choice
    routed_top_n_best: Stat | None = None


@dataclass(frozen=True)
class SweepPoint:
    parameter: str
    value: Any
    seeds: tuple[int, ...]
    id_macro: Stat
    ood_macro: Stat | None
    calibration_macro: Stat
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    parameter: str
    points: tuple[SweepPoint, ...]
    plot: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` measured. ``id_macro`` / ``ood_macro``: routed, mean over seeds."""

    k: int
    algorithm: str
    stratify: str  # "dataset" or "none" (see reclustering.recluster)
    seeds: tuple[int, ...]
    method: RoutingMethod
    strategy: str
    top_n: int
    models: tuple[str, ...]
    datasets: tuple[DatasetResult, ...]
    groups: dict[str, GroupResult]
    calibration_macro: Stat
    clusters: tuple[int, ...]  # k of each seed's clustering (empty clusters are dropped)
    missing_outcomes: int
    unrouted: int
    sweeps: dict[str, Sweep]
    seconds: float

    @property
    def id_macro(self) -> float:
        return self.groups["id"].routed.mean

    @property
    def ood_macro(self) -> float | None:
        group = self.groups.get("ood")
        return group.routed.mean if group else None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["id_macro"] = self.id_macro
        out["ood_macro"] = self.ood_macro
        return out


# --- the replay ------------------------------------------------------------------------------


@dataclass
class _Run:
    """One calibration + routing of the test and calibration queries."""

    clustering_id: int
    k: int
    test_names: np.ndarray  # dataset of each routed test query
    test_value: np.ndarray  # routed outcome per test query (missing = 0)
    test_best_of_n: np.ndarray
    cal_names: np.ndarray
    cal_value: np.ndarray
    missing: np.ndarray  # bool per test query
    unrouted: np.ndarray


class _Replay:
    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        method: RoutingMethod,
        stratify: str,
        top_n: int,
        datasets: Sequence[str] | None,
        ood_macro: Sequence[str] | None,
        progress: bool | None,
    ) -> None:
        self.conn = conn
        self.method = method
        self.stratify = stratify
        self.top_n = top_n
        self.progress = progress
        self.cache: dict[tuple, _Run] = {}
        space = embedding_spaces.active_space(conn)
        if space is None:
            raise StoreStateError("no embeddings: run `avengers embed` before `avengers evaluate`")
        models = conn.execute(
            "SELECT id, name FROM avengers.models WHERE active ORDER BY name"
        ).fetchall()
        if not models:
            raise StoreStateError("no active model: `avengers models activate NAME`")
        self.model_ids = np.array([m[0] for m in models])
        self.models = tuple(m[1] for m in models)
        self.column = {m[1]: j for j, m in enumerate(models)}
        rows = conn.execute(
            """SELECT q.id, d.name, d.is_ood, q.split, q.content_hash
               FROM avengers.queries q JOIN avengers.datasets d ON d.id = q.dataset_id
               ORDER BY q.id"""
        ).fetchall()
        self.query_ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.dataset = np.array([r[1] for r in rows], dtype=object)
        self.is_ood = np.array([r[2] for r in rows], dtype=bool)
        self.original_split = np.array([r[3] for r in rows], dtype=object)
        self.split = self.original_split.copy()
        self.hashes = [r[4] for r in rows]
        position = {qid: i for i, qid in enumerate(self.query_ids.tolist())}
        # Outcomes of the active models, NaN = not evaluated.
        self.Y = np.full((len(rows), len(models)), np.nan)
        col_of = {mid: j for j, mid in enumerate(self.model_ids.tolist())}
        with conn.cursor() as cur:
            cur.execute(
                "SELECT query_id, model_id, score FROM avengers.outcomes WHERE model_id = ANY(%s)",
                (self.model_ids.tolist(),),
            )
            for qid, mid, score in cur:
                self.Y[position[qid], col_of[mid]] = score
        self.Y0 = np.nan_to_num(self.Y, nan=0.0)
        self.X = self._vectors(space.id, position)
        test_names = sorted(set(self.dataset[self.split == "test"]))
        if datasets:
            unknown = sorted(set(datasets) - set(test_names))
            if unknown:
                raise InputError(
                    f"no test queries in dataset(s) {', '.join(unknown)}; datasets with test "
                    f"queries: {', '.join(test_names)}",
                    location="--datasets",
                )
            test_names = [n for n in test_names if n in set(datasets)]
        if not test_names:
            raise StoreStateError(
                "no test queries: load datasets with a test split (`avengers load-table`)"
            )
        ood_of = {n: bool(self.is_ood[self.dataset == n][0]) for n in test_names}
        self.id_names = [n for n in test_names if not ood_of[n]]
        self.ood_names = [n for n in test_names if ood_of[n]]
        if not self.id_names:
            raise StoreStateError("no in-distribution test datasets to evaluate")
        if ood_macro:
            unknown = sorted(set(ood_macro) - set(self.ood_names))
            if unknown:
                raise InputError(
                    f"not an evaluated OOD dataset: {', '.join(unknown)} (OOD datasets with test "
                    f"queries: {', '.join(self.ood_names) or 'none'})",
                    location="--ood-macro",
                )
            self.ood_macro_names = [n for n in self.ood_names if n in set(ood_macro)]
        else:
            self.ood_macro_names = list(self.ood_names)
        self.evaluated = self.id_names + self.ood_names

    def _vectors(self, space_id: int, position: dict[int, int]) -> np.ndarray:
        X: np.ndarray | None = None
        seen = np.zeros(len(position), dtype=bool)
        with self.conn.cursor(binary=True) as cur:
            cur.execute(
                "SELECT query_id, embedding FROM avengers.query_embeddings WHERE space_id = %s",
                (space_id,),
            )
            for qid, vec in cur:
                arr = vec.to_numpy() if hasattr(vec, "to_numpy") else np.asarray(vec)
                if X is None:
                    X = np.zeros((len(position), len(arr)), dtype=np.float32)
                i = position[qid]
                X[i] = arr
                seen[i] = True
        if X is None or not seen.all():
            missing = int((~seen).sum())
            raise StoreStateError(
                f"{missing} queries have no vector in the active embedding space: run "
                "`avengers embed` first"
            )
        return X

    # -- masks and anchors -----------------------------------------------------------------

    def test_mask(self) -> np.ndarray:
        return (self.split == "test") & np.isin(self.dataset, self.evaluated)

    def cal_mask(self) -> np.ndarray:
        # What recluster clusters: calibration queries of non-OOD datasets.
        return (self.split == "calibration") & ~self.is_ood

    def anchors(self, model_cols: np.ndarray | None = None) -> dict[str, Any]:
        """Baselines for the current split (and model subset): per dataset, and the choices."""
        cols = np.arange(len(self.models)) if model_cols is None else model_cols
        names = [self.models[j] for j in cols]
        cal = self.cal_mask()
        Yc = self.Y[cal][:, cols]
        with np.errstate(invalid="ignore"):
            weighted = np.nanmean(Yc, axis=0)
            cal_sets = sorted(set(self.dataset[cal]))
            per_set = np.array([np.nanmean(Yc[self.dataset[cal] == d], axis=0) for d in cal_sets])
            balanced = np.nanmean(per_set, axis=0)
        test = self.test_mask()
        per: dict[str, dict[str, Any]] = {}
        for name in self.evaluated:
            rows = test & (self.dataset == name)
            Yt = self.Y0[rows][:, cols]
            means = Yt.mean(axis=0) * 100
            per[name] = {
                "queries": int(rows.sum()),
                "per_model": means,
                "oracle": float(Yt.max(axis=1).mean() * 100),
                "random": float(Yt.mean() * 100),
            }
        return {
            "names": names,
            "weighted": _argbest(weighted, names),
            "balanced": _argbest(balanced, names),
            "per": per,
        }

    # -- one calibration + routing ---------------------------------------------------------

    def run(self, k: int, algorithm: str, seed: int, *, tag: tuple = ()) -> _Run:
        key = (k, algorithm, seed, *tag)
        if key in self.cache:
            return self.cache[key]
        fitted = reclustering.recluster(k, algorithm, seed, stratify=self.stratify, conn=self.conn)
        result = self.route_current(fitted.id, fitted.k)
        self.cache[key] = result
        return result

    def route_current(self, clustering_id: int, k: int) -> _Run:
        test_rows = np.flatnonzero(self.test_mask())
        cal_rows = np.flatnonzero(self.cal_mask())
        t_first, t_best, missing, unrouted = self._route(test_rows)
        c_first, _, _, _ = self._route(cal_rows)
        return _Run(
            clustering_id,
            k,
            self.dataset[test_rows],
            t_first,
            t_best,
            self.dataset[cal_rows],
            c_first,
            missing,
            unrouted,
        )

    def _route(self, rows: np.ndarray):
        first = np.zeros(len(rows))
        best = np.zeros(len(rows))
        missing = np.zeros(len(rows), dtype=bool)
        unrouted = np.zeros(len(rows), dtype=bool)
        for start in range(0, len(rows), ROUTE_BATCH):
            chunk = rows[start : start + ROUTE_BATCH]
            decisions = routing.route_vectors(
                self.conn, self.X[chunk], self.top_n, method=self.method
            )
            for i, (row, decision) in enumerate(zip(chunk, decisions, strict=True)):
                at = start + i
                if not decision.candidates:
                    unrouted[at] = True
                    continue
                cols = [self.column[c.model] for c in decision.candidates]
                value = self.Y[row, cols[0]]
                missing[at] = math.isnan(value)
                first[at] = 0.0 if missing[at] else value
                best[at] = max(self.Y0[row, cols])
        return first, best, missing, unrouted

    # -- summaries -------------------------------------------------------------------------

    def per_dataset_scores(self, run: _Run, values: np.ndarray | None = None) -> dict[str, float]:
        values = run.test_value if values is None else values
        return {n: float(values[run.test_names == n].mean() * 100) for n in self.evaluated}

    def calibration_macro(self, run: _Run) -> float:
        names = run.cal_names
        return float(np.mean([run.cal_value[names == n].mean() * 100 for n in sorted(set(names))]))

    def macro(self, per: dict[str, float], group: Sequence[str]) -> float:
        return float(np.mean([per[n] for n in group]))

    def groups(self) -> dict[str, list[str]]:
        out = {"id": self.id_names}
        if self.ood_names:
            out["ood"] = self.ood_macro_names
            if self.ood_macro_names != self.ood_names:
                out["ood_all"] = self.ood_names
        return out


def _argbest(values: np.ndarray, names: Sequence[str]) -> tuple[int, str]:
    """Index and name of the best model; ties go to the name first in order."""
    order = sorted(range(len(names)), key=lambda j: (-np.nan_to_num(values[j], nan=-1.0), names[j]))
    return order[0], names[order[0]]


def _summarise(
    rp: _Replay, runs: Sequence[_Run], k: int, algorithm: str, seeds: Sequence[int]
) -> tuple[tuple[DatasetResult, ...], dict[str, GroupResult], Stat]:
    anchors = rp.anchors()
    w_col, w_name = anchors["weighted"]
    b_col, b_name = anchors["balanced"]
    per_seed = [rp.per_dataset_scores(r) for r in runs]
    per_seed_best = [rp.per_dataset_scores(r, r.test_best_of_n) for r in runs]
    names = runs[0].test_names
    rows = []
    for n in rp.evaluated:
        a = anchors["per"][n]
        pm = a["per_model"]
        j = int(np.argmax(pm))
        in_set = names == n
        rows.append(
            DatasetResult(
                dataset=n,
                is_ood=n in rp.ood_names,
                queries=a["queries"],
                routed=Stat.of(s[n] for s in per_seed),
                best_single_cal_weighted=float(pm[w_col]),
                best_single_cal_balanced=float(pm[b_col]),
                max_expert=ModelScore(rp.models[j], float(pm[j])),
                oracle=a["oracle"],
                random=a["random"],
                missing_outcomes=int(sum(r.missing[in_set].sum() for r in runs)),
                unrouted=int(sum(r.unrouted[in_set].sum() for r in runs)),
                per_model={m: float(v) for m, v in zip(rp.models, pm, strict=True)},
                routed_top_n_best=Stat.of(s[n] for s in per_seed_best) if rp.top_n > 1 else None,
            )
        )
    by_name = {r.dataset: r for r in rows}
    groups = {}
    for gname, members in rp.groups().items():
        macro_pm = np.array(
            [np.mean([by_name[n].per_model[m] for n in members]) for m in rp.models]
        )
        t_col, t_name = _argbest(macro_pm, list(rp.models))
        oracle = float(np.mean([by_name[n].oracle for n in members]))
        routed = [rp.macro(s, members) for s in per_seed]
        bal = float(macro_pm[b_col])
        wei = float(macro_pm[w_col])
        groups[gname] = GroupResult(
            name=gname,
            datasets=tuple(members),
            routed=Stat.of(routed),
            best_single_cal_weighted=ModelScore(w_name, wei),
            best_single_cal_balanced=ModelScore(b_name, bal),
            best_single_test=ModelScore(t_name, float(macro_pm[t_col])),
            max_expert=float(np.mean([by_name[n].max_expert.score for n in members])),
            oracle=oracle,
            random=float(np.mean([by_name[n].random for n in members])),
            gap_closed=Stat.of(_gap(v, bal, oracle) for v in routed),
            gap_closed_weighted=Stat.of(_gap(v, wei, oracle) for v in routed),
            routed_top_n_best=(
                Stat.of(rp.macro(s, members) for s in per_seed_best) if rp.top_n > 1 else None
            ),
        )
    cal = Stat.of(rp.calibration_macro(r) for r in runs)
    return tuple(rows), groups, cal


def _gap(value: float, base: float, oracle: float) -> float:
    return (value - base) / (oracle - base) if oracle > base else float("nan")


def _bar(total: int, desc: str, progress: bool | None):
    from tqdm import tqdm

    # None: show the bar only on a terminal.
    disable = None if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, disable=disable)


def _point(
    rp: _Replay, parameter: str, value: Any, runs: Sequence[_Run], seeds: Sequence[int], **details
) -> SweepPoint:
    groups = rp.groups()
    per = [rp.per_dataset_scores(r) for r in runs]
    return SweepPoint(
        parameter=parameter,
        value=value,
        seeds=tuple(seeds),
        id_macro=Stat.of(rp.macro(s, groups["id"]) for s in per),
        ood_macro=Stat.of(rp.macro(s, groups["ood"]) for s in per) if "ood" in groups else None,
        calibration_macro=Stat.of(rp.calibration_macro(r) for r in runs),
        details=details,
    )


def _anchor_details(rp: _Replay, model_cols: np.ndarray | None = None) -> dict[str, Any]:
    """Best single (dataset-balanced calibration choice) and oracle macros for the current split."""
    a = rp.anchors(model_cols)
    col, name = a["balanced"]
    out: dict[str, Any] = {"best_single_cal_balanced_model": name}
    for gname, members in rp.groups().items():
        if gname == "ood_all":
            continue
        out[f"best_single_cal_balanced_{gname}"] = float(
            np.mean([a["per"][n]["per_model"][col] for n in members])
        )
        out[f"oracle_{gname}"] = float(np.mean([a["per"][n]["oracle"] for n in members]))
    return out


# --- entry point -----------------------------------------------------------------------------


def _names(values: Sequence[str] | str | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split(",")
    out = [v.strip() for v in values if v.strip()]
    return out or None


def evaluate(
    k: int = 64,
    algorithm: str = "kmeans",
    seeds: Sequence[int] = DEFAULT_SEEDS,
    *,
    top_n: int = 1,
    strategy: str = "best",
    method: str | RoutingMethod | None = None,
    stratify: str | None = None,
    datasets: Sequence[str] | str | None = None,
    ood_macro: Sequence[str] | str | None = None,
    sweep_k: Sequence[int] | None = None,
    algorithms: Sequence[str] | None = None,
    budgets: Sequence[int] | None = None,
    calibration_fractions: Sequence[float] | None = None,
    sweep_seeds: Sequence[int] | None = None,
    plot_dir: str | Path | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    progress: bool | None = None,
) -> Evaluation:
    """Replay the stored outcomes: calibrate per seed, route every test query through
    ``avengers.route_many``, score the routed model's recorded outcome, compare with the
    baselines. Runs in one transaction that is rolled back: the store is unchanged afterwards.

    ``datasets``: test datasets to report (default: all with test queries); ``ood_macro``: the OOD
    datasets averaged into ``ood_macro`` (default: all OOD ones; the rest are then reported as
    ``ood_all`` too). Sweeps (``sweep_k``, ``algorithms``, ``budgets`` = numbers of models chosen
    by s(m), ``calibration_fractions``) run on ``sweep_seeds`` (default: the first seed);
    ``plot_dir`` receives one PNG per sweep. ``stratify``: how each seed's clustering is fitted
    (``reclustering.recluster``); default ``"dataset"``, and ``"none"`` for the paper method, whose
    recipe is one K-means over all calibration queries.
    """
    started = time.perf_counter()
    if strategy not in STRATEGIES:
        raise InputError(
            f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}",
            location="--strategy",
        )
    if strategy == "model-switch":
        raise InputError(MODEL_SWITCH_REFUSED, location="--strategy")
    if top_n < 1:
        raise InputError(f"top_n must be >= 1, got {top_n}", location="--top-n")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise InputError("give at least one seed", location="--seeds")
    sweep_seeds = tuple(int(s) for s in sweep_seeds) if sweep_seeds else seeds[:1]
    for name in algorithms or ():
        if name not in fit.ALGORITHMS:
            raise InputError(
                f"unknown algorithm {name!r}; choose among {', '.join(fit.ALGORITHMS)}",
                location="--algorithms",
            )
    for f in calibration_fractions or ():
        if not 0 < f < 1:
            raise InputError(
                f"calibration fractions must be between 0 and 1, got {f}",
                location="--calibration-fractions",
            )
    for b in budgets or ():
        if b < 1:
            raise InputError(f"budgets must be >= 1, got {b}", location="--budgets")
    chosen = routing.routing_method(method)
    if stratify is None:
        stratify = "none" if chosen == routing.PAPER else "dataset"
    if stratify not in fit.STRATIFY:
        raise InputError(
            f"unknown stratify {stratify!r}; choose one of {', '.join(fit.STRATIFY)}",
            location="--stratify",
        )
    with connections.connection(url, conn=conn) as c, c.transaction() as tx:
        rp = _Replay(
            c,
            method=chosen,
            stratify=stratify,
            top_n=top_n,
            datasets=_names(datasets),
            ood_macro=_names(ood_macro),
            progress=progress,
        )
        runs = []
        with _bar(len(seeds), f"evaluate k={k} {algorithm} stratify={stratify}", progress) as bar:
            for seed in seeds:
                bar.set_postfix_str(f"seed {seed}")
                runs.append(rp.run(k, algorithm, seed))
                bar.update(1)
        rows, groups, cal = _summarise(rp, runs, k, algorithm, seeds)
        sweeps: dict[str, Sweep] = {}
        if sweep_k:
            sweeps["k"] = _sweep(
                rp, "k", list(sweep_k), sweep_seeds, lambda v, s: rp.run(int(v), algorithm, s)
            )
        if algorithms:
            sweeps["algorithm"] = _sweep(
                rp, "algorithm", list(algorithms), sweep_seeds, lambda v, s: rp.run(k, v, s)
            )
        if budgets:
            sweeps["budget"] = _budget_sweep(rp, k, algorithm, list(budgets), sweep_seeds)
        if calibration_fractions:
            sweeps["calibration_fraction"] = _fraction_sweep(
                rp, k, algorithm, list(calibration_fractions), sweep_seeds
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
    return dataclasses.replace(result, seconds=round(time.perf_counter() - started, 2))


def _sweep(rp: _Replay, parameter: str, values: list, seeds: Sequence[int], fit) -> Sweep:
    points = []
    with _bar(len(values) * len(seeds), f"sweep {parameter}", rp.progress) as bar:
        for value in values:
            runs = []
            for seed in seeds:
                bar.set_postfix_str(f"{parameter}={value} seed {seed}")
                runs.append(fit(value, seed))
                bar.update(1)
            points.append(
                _point(
                    rp,
                    parameter,
                    value,
                    runs,
                    seeds,
                    clusters=[r.k for r in runs],
                    **_anchor_details(rp),
                )
            )
    return Sweep(parameter, tuple(points))


def _budget_sweep(
    rp: _Replay, k: int, algorithm: str, budgets: list[int], seeds: Sequence[int]
) -> Sweep:
    """Keep the top-N models by s(m) (``avengers.model_selection_scores``, among the models
    being evaluated) of each seed's clustering; route with only them active."""
    original = rp.conn.execute("SELECT id, active FROM avengers.models").fetchall()
    points: dict[int, list] = {b: [] for b in budgets}
    chosen_sets: dict[int, list] = {b: [] for b in budgets}
    with _bar(len(budgets) * len(seeds), "sweep budget", rp.progress) as bar:
        for seed in seeds:
            base = rp.run(k, algorithm, seed)
            rp.conn.execute("CALL avengers.activate_clustering(%s)", (base.clustering_id,))
            ranked = [
                r[0]
                for r in rp.conn.execute(
                    "SELECT model FROM avengers.model_selection_scores "
                    "WHERE model = ANY(%s) AND clusters_ranked > 0 ORDER BY selection_rank",
                    (list(rp.models),),
                ).fetchall()
            ]
            for budget in budgets:
                bar.set_postfix_str(f"{budget} models seed {seed}")
                picked = ranked[:budget]
                rp.conn.execute("UPDATE avengers.models SET active = (name = ANY(%s))", (picked,))
                rp.conn.execute("CALL avengers.refresh_profiles()")
                points[budget].append(rp.route_current(base.clustering_id, base.k))
                chosen_sets[budget].append(picked)
                bar.update(1)
            _restore_models(rp.conn, original)
    out = []
    for budget in budgets:
        cols = np.array(sorted(rp.column[m] for m in chosen_sets[budget][0]))
        out.append(
            _point(
                rp,
                "budget",
                budget,
                points[budget],
                seeds,
                models=chosen_sets[budget],
                **_anchor_details(rp, cols),
            )
        )
    return Sweep("budget", tuple(out))


def _restore_models(conn: psycopg.Connection, original: Sequence[tuple[int, bool]]) -> None:
    conn.execute(
        "UPDATE avengers.models m SET active = o.active FROM unnest(%s::int[], %s::bool[]) "
        "AS o(id, active) WHERE m.id = o.id",
        ([r[0] for r in original], [r[1] for r in original]),
    )
    conn.execute("CALL avengers.refresh_profiles()")


def _fraction_sweep(
    rp: _Replay, k: int, algorithm: str, fractions: list[float], seeds: Sequence[int]
) -> Sweep:
    """Re-draw every non-OOD dataset's split (its calibration + test queries pooled, the store's
    seeded split rule) at each fraction, then calibrate and route as usual."""
    pooled = ~rp.is_ood & np.isin(rp.original_split, ["calibration", "test"])
    groups: dict[str, np.ndarray] = {}
    for name in sorted(set(rp.dataset[pooled])):
        groups[name] = np.flatnonzero(pooled & (rp.dataset == name))
    out = []
    with _bar(len(fractions) * len(seeds), "sweep calibration fraction", rp.progress) as bar:
        for fraction in fractions:
            runs, details = [], []
            for seed in seeds:
                bar.set_postfix_str(f"fraction={fraction} seed {seed}")
                split = rp.original_split.copy()
                for rows in groups.values():
                    drawn = seeded_split([rp.hashes[i] for i in rows], fraction, seed)
                    split[rows] = drawn
                _write_split(rp, split)
                runs.append(rp.run(k, algorithm, seed, tag=("fraction", fraction)))
                details.append(_anchor_details(rp))
                bar.update(1)
            # Anchors move with the drawn split: averaged over seeds (the model: first seed's).
            merged = {
                key: details[0][key]
                if key.endswith("model")
                else float(np.mean([d[key] for d in details]))
                for key in details[0]
            }
            out.append(
                _point(
                    rp,
                    "calibration_fraction",
                    fraction,
                    runs,
                    seeds,
                    calibration_queries=int(len(runs[-1].cal_names)),
                    **merged,
                )
            )
    _write_split(rp, rp.original_split.copy())
    return Sweep("calibration_fraction", tuple(out))


def _write_split(rp: _Replay, split: np.ndarray) -> None:
    changed = np.flatnonzero(split != rp.split)
    if len(changed):
        rp.conn.execute(
            "UPDATE avengers.queries q SET split = s.split "
            "FROM unnest(%s::bigint[], %s::text[]) AS s(id, split) WHERE q.id = s.id",
            (rp.query_ids[changed].tolist(), split[changed].tolist()),
        )
    rp.split = split
