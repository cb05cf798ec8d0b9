"""The replay harness: the store's outcomes as matrices, one calibration per seed (re-cluster and
profile inside the caller's transaction), every test query routed through ``avengers.decide_many``
and scored with the routed model's recorded outcome; then the baselines and summaries."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from avengers_store import routing
from avengers_store.arguments import one_of
from avengers_store.calibration import embedding_spaces, fit, reclustering
from avengers_store.errors import InputError, StoreStateError
from avengers_store.evaluation.results import (
    DatasetResult,
    GroupResult,
    ModelScore,
    Stat,
    SweepPoint,
)
from avengers_store.routing import Policy, RoutingMethod, novelty
from avengers_store.store.queries import query

# Vectors per route_many statement: big enough to amortise the round trip, small enough to keep
# the statement's working set modest.
ROUTE_BATCH = 4096


@dataclass
class Run:
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
    test_picks: np.ndarray  # column of the routed model per test query (-1: unrouted)


class Replay:
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
        # Calibration alone, whatever feedback the store holds.
        self.policy = Policy(method=method, top_n=top_n, production_weight=0.0)
        self.progress = progress
        self.cache: dict[tuple, Run] = {}
        self._novelty: dict[int, Any] = {}
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
        rows = conn.execute(query("evaluation", "replay_queries")).fetchall()
        self.query_ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.dataset = np.array([r[1] for r in rows], dtype=object)
        self.is_ood = np.array([r[2] for r in rows], dtype=bool)
        self.original_split = np.array([r[3] for r in rows], dtype=object)
        self.split = self.original_split.copy()
        self.hashes = [r[4] for r in rows]
        self.chars = np.array([r[5] for r in rows], dtype=np.int64)
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
                    location="datasets",
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
                    location="ood_macro",
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

    def run(self, k: int, algorithm: str, seed: int, *, tag: tuple = ()) -> Run:
        key = (k, algorithm, seed, *tag)
        if key in self.cache:
            return self.cache[key]
        fitted = reclustering.recluster(k, algorithm, seed, stratify=self.stratify, conn=self.conn)
        result = self.route_current(fitted.id, fitted.k)
        self.cache[key] = result
        return result

    def route_current(self, clustering_id: int, k: int) -> Run:
        test_rows = np.flatnonzero(self.test_mask())
        cal_rows = np.flatnonzero(self.cal_mask())
        t_first, t_best, missing, unrouted, picks = self.route_rows(test_rows)
        c_first, _, _, _, _ = self.route_rows(cal_rows)
        return Run(
            clustering_id,
            k,
            self.dataset[test_rows],
            t_first,
            t_best,
            self.dataset[cal_rows],
            c_first,
            missing,
            unrouted,
            picks,
        )

    def route_rows(
        self, rows: np.ndarray, policy: Policy | None = None, seeds: np.ndarray | None = None
    ):
        """Route the queries at ``rows`` through ``avengers.decide_many`` under ``policy``
        (default: the replay's; each query's text length sent for its expected cost, its
        novelty measured as the clients measure it; ``seeds``: exploration's, per row):
        (rank-1 outcome, best outcome among the top n, missing, unrouted, the rank-1 model's
        column or -1) per query."""
        policy = policy or self.policy
        served, model = self.novelty_model()
        first = np.zeros(len(rows))
        best = np.zeros(len(rows))
        missing = np.zeros(len(rows), dtype=bool)
        unrouted = np.zeros(len(rows), dtype=bool)
        picks = np.full(len(rows), -1, dtype=np.int64)
        for start in range(0, len(rows), ROUTE_BATCH):
            chunk = rows[start : start + ROUTE_BATCH]
            decisions = routing.decide(
                self.conn,
                self.X[chunk],
                policy,
                prompt_chars=self.chars[chunk].tolist() if policy.costed else None,
                seeds=None if seeds is None else seeds[start : start + ROUTE_BATCH].tolist(),
                novelty=model,
                novelty_clustering=served,
            )
            for i, (row, decision) in enumerate(zip(chunk, decisions, strict=True)):
                at = start + i
                if not decision.candidates:
                    unrouted[at] = True
                    continue
                cols = [self.column[c.model] for c in decision.candidates]
                picks[at] = cols[0]
                value = self.Y[row, cols[0]]
                missing[at] = math.isnan(value)
                first[at] = 0.0 if missing[at] else value
                best[at] = max(self.Y0[row, cols])
        return first, best, missing, unrouted, picks

    def novelty_model(self) -> tuple[int | None, Any]:
        """The served clustering and its novelty model (read once per version)."""
        row = self.conn.execute("SELECT id FROM avengers.active_clustering").fetchone()
        if row is None:
            return None, None
        if row[0] not in self._novelty:
            self._novelty[row[0]] = novelty.load(self.conn, row[0])
        return row[0], self._novelty[row[0]]

    # -- summaries -------------------------------------------------------------------------

    def per_dataset_scores(self, run: Run, values: np.ndarray | None = None) -> dict[str, float]:
        values = run.test_value if values is None else values
        return {n: float(values[run.test_names == n].mean() * 100) for n in self.evaluated}

    def calibration_macro(self, run: Run) -> float:
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


def summarise(
    rp: Replay, runs: Sequence[Run], k: int, algorithm: str, seeds: Sequence[int]
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


def stratify_for(method: RoutingMethod, stratify: str | None) -> str:
    """The calibration split a replay fits with: ``stratify`` if given (checked), else
    ``none`` for the paper's method (as the paper does) and ``dataset`` for the others."""
    if stratify is None:
        return "none" if method == routing.PAPER else "dataset"
    return one_of(stratify, fit.STRATIFY, "stratify", "stratify")


def progress_bar(total: int, desc: str, progress: bool | None):
    from tqdm import tqdm

    # None: show the bar only on a terminal.
    disable = None if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, disable=disable)


def sweep_point(
    rp: Replay, parameter: str, value: Any, runs: Sequence[Run], seeds: Sequence[int], **details
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


def anchor_details(rp: Replay, model_cols: np.ndarray | None = None) -> dict[str, Any]:
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
