"""The sweep behind the production loop's defaults (docs/evaluation.md, "The production loop"):
a numpy twin of ``avengers evaluate --online`` on calibration splits only. Not a speed
benchmark.

Per seed, each calibration dataset's calibration queries are split 60/40 (seeded): the 60 % are
clustered and profiled as ``recluster`` does (``calibration.fit``, k = 64, per dataset), the
40 % are the stream. The twin routes as ``avengers.route_many`` does (16 nearest centroids,
temperature 0.1, one pseudo-query of the prior), refreshes after every batch with the shipped
update rule (``production.update_rule``, the Python reference of
``avengers.production_evidence``) and explores with ``production.exploration_rule``; the
scenarios are ``evaluation.scenarios``' and regret is ``evaluation.online``'s. On the LLMRouter
test stream (seed 42, batch 25) it gave the SQL replay's figures to the last digit (i.i.d. and
``degrade:llama-3.3-nemotron-super-49b-v1@0.3,flip=0.5``); the figures in the docs come from
the SQL replay, never from here.

The store is the one in AVENGERS_HOME (or AVENGERS_DATABASE_URL), loaded as in
docs/evaluation.md; nothing is written to it.

``--test-stream`` streams the test split instead, as the SQL replay does (for reading a rule's
figures beside the replay's, never for tuning); ``gate: false`` in an arm runs the rule without
the production history, so a model routed nearly alone is never called changed on its own
outcomes (the rule before it).

Example:
    AVENGERS_HOME=... .venv/bin/python bench/loop_tuning.py --table llmrouter --seeds 5
    AVENGERS_HOME=... .venv/bin/python bench/loop_tuning.py --table routerdc --seeds 3 \\
        --arms '{"z2": {"z": 2.0}, "z3": {"z": 3.0}}'
    AVENGERS_HOME=... .venv/bin/python bench/loop_tuning.py --table llmrouter --test-stream \\
        --batch 25 --scenarios 1 --seed-list 42,999,2024 --arms '{"before": {"gate": false}, "now": {}}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from avengers_store.calibration.fit import fit_stratified, partition
from avengers_store.evaluation import online, scenarios
from avengers_store.evaluation.harness import Replay
from avengers_store.evaluation.scenarios import Scenario
from avengers_store.production import exploration_rule, update_rule
from avengers_store.routing import AVENGERS
from avengers_store.store import connections

L, T, SHRINK = 16, 0.1, 1.0
SEEDS = [42, 999, 2024, 2025, 3407]


@dataclass
class World:
    X: np.ndarray
    Y: np.ndarray
    dataset: np.ndarray
    split: np.ndarray
    is_ood: np.ndarray
    models: list

    @classmethod
    def load(cls):
        with connections.connection(None) as conn:
            rp = Replay(conn, method=AVENGERS, stratify="dataset", top_n=1, datasets=None,
                        ood_macro=None, progress=False)  # fmt: skip
        return cls(rp.X, rp.Y, rp.dataset, rp.split, rp.is_ood, list(rp.models))


def pseudo_split(w: World, seed: int):
    """Tuning: calibration rows split 60/40 per dataset (the 40 % as 'test'); test rows
    dropped ('skip')."""
    split = np.where(w.split == "calibration", "calibration", "skip").astype(object)
    rng = np.random.default_rng([seed, 1])
    cal = np.flatnonzero((w.split == "calibration") & ~w.is_ood)
    for d in sorted(set(w.dataset[cal])):
        r = rng.permutation(cal[w.dataset[cal] == d])
        split[r[int(round(0.6 * len(r))) :]] = "test"
    return split


@dataclass
class Calib:
    centroids: np.ndarray
    rho: float
    S: np.ndarray
    n: np.ndarray
    prior: np.ndarray
    tie: np.ndarray


def calibrate(w, rows, Y, seed, k=64):
    Xc = w.X[rows]
    labels, _ = fit_stratified(Xc, w.dataset[rows], k, "kmeans", seed)
    part = partition(Xc, labels)
    kk = len(part.centroids)
    Yc = Y[rows]
    M = Yc.shape[1]
    ok = ~np.isnan(Yc)
    S = np.zeros((kk, M))
    n = np.zeros((kk, M))
    np.add.at(S, part.labels, np.where(ok, Yc, 0.0))
    np.add.at(n, part.labels, ok.astype(float))
    ds = w.dataset[rows]
    per = []
    with np.errstate(invalid="ignore"):
        for d in sorted(set(ds)):
            per.append(np.nanmean(np.where(ok[ds == d], Yc[ds == d], np.nan), axis=0))
        prior = np.nanmean(np.array(per), axis=0)
        overall = S.sum(0) / n.sum(0)
    order = sorted(range(M), key=lambda j: (-np.nan_to_num(overall[j], nan=-1), w.models[j]))
    tie = np.empty(M, int)
    tie[order] = np.arange(M)
    return Calib(
        part.centroids.astype(np.float32),
        float(np.median(part.distances.astype(np.float64) ** 2)),
        S,
        n,
        prior,
        tie,
    )


def neighbourhood(X, centroids, rho):
    u = X / np.linalg.norm(X, axis=1, keepdims=True)
    c = centroids.astype(np.float64)
    d2 = np.maximum((u * u).sum(1)[:, None] - 2 * u @ c.T + (c * c).sum(1)[None, :], 0)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :L]
    dd = np.take_along_axis(d2, idx, axis=1)
    return idx, np.exp(np.maximum(-700, -(dd - dd[:, :1]) / (T * rho)))


class Prod:
    def __init__(self, k, M, h):
        self.a = np.zeros((k, M))
        self.b = np.zeros((k, M))
        self.rows = np.zeros((k, M))
        self.h = h
        self.t = 0.0
        # What the store's production_history keeps: the sums as of each refresh.
        self.snapshots: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, cells, models, ys, times):
        t_end = max(self.t, float(times.max()))
        f = 0.5 ** ((t_end - self.t) / self.h)
        self.a *= f
        self.b *= f
        dec = 0.5 ** ((t_end - times) / self.h)
        np.add.at(self.a, (cells, models), dec)
        np.add.at(self.b, (cells, models), dec * ys)
        np.add.at(self.rows, (cells, models), 1.0)
        self.t = t_end

    def snapshot(self):
        self.snapshots.append((self.t, self.a.copy(), self.b.copy(), self.rows.copy()))

    def history(self, ci, mi):
        """The refreshes before now as update_rule.History over the cells (ci, mi)."""
        if not self.snapshots:
            shape = (0, len(ci))
            return update_rule.History(self.rows[ci, mi], *(np.zeros(shape),) * 3)
        f = np.array([0.5 ** ((self.t - t) / self.h) for t, *_ in self.snapshots])
        return update_rule.History(
            self.rows[ci, mi],
            np.array([r[ci, mi] for *_, r in self.snapshots]),
            np.array([a[ci, mi] for _, a, _, _ in self.snapshots]) * f[:, None],
            np.array([b[ci, mi] for _, _, b, _ in self.snapshots]) * f[:, None],
        )


def deltas(
    cal: Calib, p: Prod, z: float, min_own: float = update_rule.MIN_OWN_CHANGE, gate: bool = True
):
    k, M = cal.S.shape
    uncal_m = cal.n.sum(0) == 0
    cells = (cal.n > 0) | (p.a > 0) | uncal_m[None, :]
    ci, mi = np.nonzero(cells)
    ev = update_rule.evidence(
        ci,
        mi,
        cal.n[ci, mi],
        cal.S[ci, mi],
        p.a[ci, mi],
        p.b[ci, mi],
        uncal_m[mi],
        z,
        min_own,
        p.history(ci, mi) if gate else None,
    )
    dS = np.zeros((k, M))
    dn = np.zeros((k, M))
    dS[ci, mi] = ev.delta_sum
    dn[ci, mi] = ev.delta_n
    hot = np.zeros(k, bool)
    hot[ci[ev.cluster_moved]] = True
    return dS, dn, hot


def run(
    w,
    stream,
    cal,
    *,
    weight=1.0,
    half_life=1.2096e6,
    batch=256,
    policy="off",
    share=exploration_rule.SHARE,
    overlap=exploration_rule.OVERLAP,
    z=3.0,
    min_own=update_rule.MIN_OWN_CHANGE,
    gate=True,
    seed=0,
    joins=None,
    moved_share=0.1,
):
    idx, wts = neighbourhood(w.X[stream.rows], cal.centroids, cal.rho)
    nearest = idx[:, 0]
    k, M = cal.S.shape
    prod = Prod(k, M, half_life)
    dS = np.zeros((k, M))
    dn = np.zeros((k, M))
    hot = np.zeros(k, bool)
    n_s = len(stream.rows)
    values = np.zeros(n_s)
    picks = np.full(n_s, -1)
    explored = np.zeros(n_s, bool)
    calibrated = ~np.isnan(cal.prior)
    prior = cal.prior.copy()
    if weight > 0:
        prior[~calibrated] = np.nanmean(cal.prior)
    tie = cal.tie.copy()
    if (~calibrated).any():
        extra = sorted(np.flatnonzero(~calibrated), key=lambda j: w.models[j])
        tie[extra] = calibrated.sum() + np.arange(len(extra))
    cuts = sorted({*range(0, n_s, batch), *([stream.change] if 0 < stream.change < n_s else [])})
    for start, end in zip(cuts, [*cuts[1:], n_s], strict=True):
        S = cal.S + (weight * dS if weight > 0 else 0)
        nn = cal.n + (weight * dn if weight > 0 else 0)
        ws = np.einsum("ql,qlm->qm", wts[start:end], S[idx[start:end]])
        wn = np.einsum("ql,qlm->qm", wts[start:end], nn[idx[start:end]])
        pr = np.nan_to_num(prior)
        den = wn + SHRINK
        sc = (ws + SHRINK * pr[None, :]) / den
        if weight == 0:
            sc[:, ~calibrated] = np.nan
        if joins is not None and start < stream.change:
            sc[:, joins] = np.nan
        sc32 = np.where(np.isnan(sc), -np.inf, sc.astype(np.float32))
        best = sc32.max(axis=1, keepdims=True)
        lead = np.argmin(np.where(sc32 == best, tie[None, :], 10**9), axis=1)
        chosen = lead.copy()
        if policy == "targeted" and share > 0:
            gap = exploration_rule.plausibility_gap(overlap)
            mu = np.clip(sc, 0, 1)
            sd = np.sqrt(mu * (1 - mu) / (np.maximum(den, 0) + 1))
            rr = np.arange(end - start)
            behind = mu[rr, lead][:, None] - mu
            spread = np.hypot(sd, sd[rr, lead][:, None])
            plaus = (behind <= gap * spread) & ~np.isnan(sc)
            plaus[rr, lead] = False
            us = np.array([exploration_rule.hash_uniform(seed, str(start + i)) for i in rr])
            hot_q = hot[nearest[start:end]]
            for i in rr:
                ranked = sorted(
                    np.flatnonzero(~np.isnan(sc[i])), key=lambda m: (-sc32[i, m], tie[m])
                )
                if us[i] >= share or not (hot_q[i] or plaus[i].any()):
                    continue
                ch = exploration_rule.choose(
                    [float(sc[i, m]) for m in ranked],
                    [float(den[i, m]) for m in ranked],
                    us[i],
                    share,
                    overlap,
                    bool(hot_q[i]),
                )
                chosen[i] = ranked[ch.index]
                explored[start + i] = ch.explored
        picks[start:end] = chosen
        v = stream.outcomes[np.arange(start, end), chosen]
        values[start:end] = np.nan_to_num(v)
        if weight > 0:
            fed = np.arange(start, end)
            okv = ~np.isnan(stream.outcomes[fed, picks[fed]])
            prod.add(nearest[fed][okv], picks[fed][okv], values[fed][okv], fed[okv].astype(float))
            dS, dn, hot = deltas(cal, prod, z, min_own, gate)
            prod.snapshot()
    return online._Run(values, picks, explored, 0, nearest)


def experiment(w, scenario: Scenario, arms: dict, seeds, tuning=True, batch=256, windows=20):
    out = {
        a: {"preq": [], "regret": [], "expl": [], "regrets": []} for a in ["static", "recal", *arms]
    }
    column = {m: j for j, m in enumerate(w.models)}
    streams, clusters = [], []
    for seed in seeds:
        split = pseudo_split(w, seed) if tuning else w.split.copy()
        cal_rows = np.flatnonzero((split == "calibration") & ~w.is_ood)
        test_rows = np.flatnonzero(split == "test")
        sc = scenario
        if sc.kind == "degrade" and sc.like is None and sc.flip is None:
            raise ValueError("give as= or flip=")
        stream = scenarios.build(sc, seed, w.Y, w.dataset, split, test_rows, cal_rows, column)
        streams.append(stream)
        # main world
        Ycal = w.Y.copy()
        rows = cal_rows
        if sc.kind == "new-model":
            Ycal[cal_rows, column[sc.target]] = np.nan
        if sc.kind == "shift":
            rows = cal_rows[w.dataset[cal_rows] != sc.target]
        cal = calibrate(w, rows, Ycal, seed)
        # reference world
        Yref = w.Y.copy()
        rrows = cal_rows
        if sc.kind == "degrade":
            Yref[cal_rows, column[sc.target]] = stream.reference_outcomes
        if sc.kind == "shift":
            rrows = np.sort(
                np.concatenate([cal_rows[w.dataset[cal_rows] != sc.target], stream.reference_rows])
            )
        ref = calibrate(w, rrows, Yref, seed) if sc.moves else cal
        joins = column[sc.target] if sc.kind == "new-model" and stream.change > 0 else None
        st = run(w, stream, cal, weight=0, batch=batch, seed=seed)
        clusters.append(st.clusters)
        res = {"static": st, "recal": run(w, stream, ref, weight=0, batch=batch, seed=seed)}
        for a, cfg in arms.items():
            res[a] = run(w, stream, cal, batch=batch, seed=seed, joins=joins, **cfg)
        for a, r in res.items():
            rg = online._regret(stream, r, st.clusters)
            out[a]["preq"].append(r.values.mean() * 100)
            out[a]["regret"].append(rg.mean() * 100)
            out[a]["expl"].append(r.explored.mean() * 100)
            out[a]["regrets"].append(rg)
    post = len(out["static"]["regrets"][0])
    cuts = online._slices(post, windows)

    def curve(a):
        return np.array([np.mean([r[x:y].mean() for r in out[a]["regrets"]]) for x, y in cuts])

    floor, stc = curve("recal"), curve("static")
    gap = float(np.mean(stc - floor))
    for a in out:
        c = curve(a)
        within = c - floor <= 0.2 * gap
        first = next((i for i in range(len(within)) if within[i:].all()), None)
        out[a]["recovery"] = (
            None if (first is None or a == "static" or gap <= 0) else cuts[first][0]
        )
        out[a]["curve"] = c
    return out, post


def show(out, post, title):
    print(f"== {title} (post-change {post})")
    st = np.mean(out["static"]["regret"])
    for a, o in out.items():
        print(
            f"  {a:24s} preq {np.mean(o['preq']):6.2f}±{np.std(o['preq']):4.2f} "
            f"regret {np.mean(o['regret']):5.2f} (x{np.mean(o['regret']) / st:.2f}) expl {np.mean(o['expl']):4.1f} rec {o['recovery']}"
        )
    sys.stdout.flush()


SCENARIOS = {
    "llmrouter": [
        {"kind": "iid"},
        {"kind": "degrade", "target": "llama-3.3-nemotron-super-49b-v1", "at": 0.3, "flip": 0.5},
        {
            "kind": "degrade",
            "target": "llama-3.1-nemotron-51b-instruct",
            "at": 0.3,
            "like": "mistral-7b-instruct-v0.3",
        },
        {"kind": "new-model", "target": "llama-3.1-nemotron-51b-instruct"},
        {"kind": "shift", "target": "math"},
        {"kind": "shift", "target": "mmlu"},
    ],
    "routerdc": [
        {"kind": "iid"},
        {"kind": "degrade", "target": "meta-llama/Meta-Llama-3-8B", "at": 0.3, "flip": 0.5},
        {
            "kind": "degrade",
            "target": "meta-math/MetaMath-Mistral-7B",
            "at": 0.3,
            "like": "HuggingFaceH4/zephyr-7b-beta",
        },
        {"kind": "new-model", "target": "meta-llama/Meta-Llama-3-8B"},
        {"kind": "shift", "target": "gsm8k"},
        {"kind": "shift", "target": "cmmlu"},
    ],
}
ARMS = {
    "online z3": {"z": 3.0},
    "online z2.5": {"z": 2.5},
    "targeted 0.02": {"policy": "targeted", "share": 0.02},
    "targeted 0.05": {"policy": "targeted", "share": 0.05},
    "targeted 0.10": {"policy": "targeted", "share": 0.10},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", choices=sorted(SCENARIOS), required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--arms", type=json.loads, default=ARMS, help="JSON: name -> run() options")
    ap.add_argument(
        "--test-stream", action="store_true",
        help="stream the test split as the SQL replay does (reporting, not tuning)",
    )  # fmt: skip
    ap.add_argument("--scenarios", help="comma-separated indexes into the table's scenarios")
    ap.add_argument("--seed-list", help="comma-separated seeds (instead of the first --seeds)")
    args = ap.parse_args()
    w = World.load()
    specs = SCENARIOS[args.table]
    if args.scenarios:
        specs = [specs[int(i)] for i in args.scenarios.split(",")]
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else SEEDS[: args.seeds]
    for spec in specs:
        started = time.time()
        sc = Scenario(**spec)
        out, post = experiment(
            w, sc, args.arms, seeds, tuning=not args.test_stream, batch=args.batch
        )
        show(out, post, f"{sc.label()} {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
