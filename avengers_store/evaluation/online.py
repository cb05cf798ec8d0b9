"""Online replay: does the loop learn? Prequential, on the stored outcomes; no model is called.

For each seed the store is calibrated as in ``evaluate`` (``recluster`` on the calibration split,
inside one transaction that is rolled back), then the test split is streamed in a seeded order,
``batch`` queries at a time. Each batch is routed through ``avengers.decide_many`` (the client's
statement) with the profiles as they stand, and scored with the routed model's recorded outcome;
then only that outcome is fed back the way production feeds it (a route-log row and a feedback
row per query, counted by the store's triggers) and the production profiles are refreshed. A
query is always scored before its own outcome is known.

Arms, each on the same stream of each seed (every arm in its own savepoint, rolled back):

- ``static``: calibration only, nothing fed back (the router ``evaluate`` measures).
- ``online``: feedback pooled at ``production_weight``, no exploration.
- ``online + thompson``, ``online + epsilon``: the same with exploration (only the policy asked
  for, when one is).
- ``best single``: the model with the best dataset-balanced calibration mean, every query.

The stream's clock advances one second per query (so a half-life of 2000 s is 2000 queries). With
``production_weight`` 0 the online arm must route exactly as the static one; the result says
whether it did (``online_equals_static``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from avengers_store import routing
from avengers_store.arguments import as_list
from avengers_store.calibration import fit, reclustering
from avengers_store.errors import InputError
from avengers_store.evaluation.harness import Replay, progress_bar
from avengers_store.evaluation.results import Stat
from avengers_store.production.settings import configure
from avengers_store.routing import Policy, RoutingMethod
from avengers_store.store import connections

DEFAULT_BATCH = 256
DEFAULT_WINDOWS = 10
# The replay's clock: one query per second.
TICK = timedelta(seconds=1)


@dataclass(frozen=True)
class Arm:
    """One way of routing the stream, over the seeds (×100 scores). ``accuracy``: prequential,
    the mean over every streamed query; ``windows``: the same per consecutive slice of the
    stream; ``explored``: share of queries exploration sent elsewhere than the best-scored
    model (×100)."""

    name: str
    production_weight: float
    exploration: str
    accuracy: Stat
    windows: tuple[Stat, ...]
    id_macro: Stat
    ood_macro: Stat | None
    explored: Stat
    missing_outcomes: int


@dataclass(frozen=True)
class OnlineEvaluation:
    k: int
    algorithm: str
    stratify: str
    seeds: tuple[int, ...]
    method: RoutingMethod
    batch: int
    stream_queries: int
    production_weight: float
    half_life: timedelta
    explorations: tuple[str, ...]
    exploration_share: float
    models: tuple[str, ...]
    best_single: str
    arms: dict[str, Arm]
    online_equals_static: bool | None  # checked when production_weight is 0, else None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["half_life_s"] = self.half_life.total_seconds()
        out["half_life"] = str(self.half_life)
        return out


@dataclass
class _Stream:
    values: np.ndarray  # outcome of the routed model per stream position (missing: 0)
    picks: np.ndarray  # its column (-1: unrouted)
    explored: np.ndarray
    missing: int


_LOG_SQL = """
INSERT INTO avengers.route_log (route_id, at, query_hash, clustering_id, cluster, distance,
                                models, strategy, answer_model, exploration, explored)
SELECT x.r, x.t, x.h, %s, x.c, x.d, ARRAY[x.m], 'replay', x.m, %s, x.e
FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[], %s::integer[], %s::float8[], %s::text[],
            %s::boolean[]) AS x(r, t, h, c, d, m, e)
"""
_FEEDBACK_SQL = """
INSERT INTO avengers.feedback (route_id, source, model_id, score, at)
SELECT x.r, 'replay', x.m, x.s, x.t
FROM unnest(%s::uuid[], %s::integer[], %s::float8[], %s::timestamptz[]) AS x(r, m, s, t)
"""


def evaluate_online(
    k: int = 64,
    algorithm: str = "kmeans",
    seeds: Sequence[int] = (42, 999, 2024, 2025, 3407),
    *,
    batch: int = DEFAULT_BATCH,
    windows: int = DEFAULT_WINDOWS,
    production_weight: float | None = None,
    half_life: timedelta | None = None,
    exploration: str | None = None,
    exploration_share: float | None = None,
    method: str | RoutingMethod | None = None,
    stratify: str | None = None,
    datasets: Sequence[str] | None = None,
    ood_macro: Sequence[str] | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    progress: bool | None = None,
) -> OnlineEvaluation:
    """Stream each seed's test split through the router, feeding back the routed model's
    recorded outcome, and compare with the static router and the best single model.

    ``production_weight``, ``half_life`` (in stream seconds: one query per second) and
    ``exploration_share`` default to the served clustering's settings (or the store's
    defaults); ``exploration`` names the one explored arm to run (default: both policies).
    Runs in one transaction that is rolled back: the store is unchanged afterwards.
    """
    started = time.perf_counter()
    seeds = tuple(as_list(seeds, "seeds", int) or ())
    if not seeds:
        raise InputError("give at least one seed", location="seeds")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", location="k")
    if batch < 1:
        raise InputError(f"the batch size must be >= 1, got {batch}", location="batch")
    if windows < 1:
        raise InputError(f"windows must be >= 1, got {windows}", location="windows")
    if algorithm not in fit.ALGORITHMS:
        raise InputError(
            f"unknown algorithm {algorithm!r}; choose one of {', '.join(fit.ALGORITHMS)}",
            location="algorithm",
        )
    if exploration == "off":
        raise InputError(
            "the explored arm needs a policy (thompson or epsilon); the online arm is the one "
            "without exploration",
            location="exploration",
        )
    chosen = routing.routing_method(method)
    if stratify is None:
        stratify = "none" if chosen == routing.PAPER else "dataset"
    if stratify not in fit.STRATIFY:
        raise InputError(
            f"unknown stratify {stratify!r}; choose one of {', '.join(fit.STRATIFY)}",
            location="stratify",
        )
    datasets = as_list(datasets, "datasets", str) or None
    ood_macro = as_list(ood_macro, "ood_macro", str) or None
    with connections.connection(url, conn=conn) as c, c.transaction() as tx:
        served = c.execute(
            "SELECT production_weight, half_life, exploration, exploration_share "
            "FROM avengers.active_clustering"
        ).fetchone()
        # Unset options take the served clustering's settings, else the store's defaults.
        weight = (
            production_weight if production_weight is not None else (served[0] if served else 1.0)
        )
        half = half_life if half_life is not None else (served[1] if served else timedelta(days=14))
        share = (
            exploration_share if exploration_share is not None else (served[3] if served else 0.05)
        )
        policies = [exploration] if exploration else ["thompson", "epsilon"]
        rp = Replay(
            c,
            method=chosen,
            stratify=stratify,
            top_n=1,
            datasets=datasets,
            ood_macro=ood_macro,
            progress=progress,
        )
        test_rows = np.flatnonzero(rp.test_mask())
        single_col, single_name = rp.anchors()["balanced"]
        # (name, production weight, exploration, fed back)
        plan = [
            ("static", 0.0, "off", False),
            ("online", weight, "off", True),
            *((f"online + {policy}", weight, policy, True) for policy in policies),
        ]
        streams: dict[str, list[_Stream]] = {name: [] for name, *_ in plan}
        orders: list[np.ndarray] = []
        t0 = c.execute("SELECT now()").fetchone()[0]
        with progress_bar(len(seeds) * len(plan), "evaluate --online", progress) as bar:
            for seed in seeds:
                fitted = reclustering.recluster(k, algorithm, seed, stratify=stratify, conn=c)
                configure(fitted.id, half_life=half, conn=c)
                # The replay starts from calibration alone, whatever feedback the store holds
                # (the arms change no half-life, so nothing recounts it).
                c.execute(
                    "DELETE FROM avengers.production_stats WHERE clustering_id = %s", (fitted.id,)
                )
                order = np.random.default_rng(seed).permutation(test_rows)
                orders.append(order)
                for name, arm_weight, arm_exploration, feed in plan:
                    bar.set_postfix_str(f"seed {seed}, {name}")
                    with c.transaction() as arm_tx:
                        arm = rp.policy.replace(
                            top_n=1,
                            production_weight=arm_weight,
                            exploration=arm_exploration,
                            exploration_share=share,
                        )
                        streams[name].append(
                            _stream(
                                c,
                                rp,
                                fitted.id,
                                order,
                                batch,
                                arm,
                                feed,
                                t0,
                                np.random.default_rng(seed),
                            )  # fmt: skip
                        )
                        raise psycopg.Rollback(arm_tx)
                    bar.update(1)
        arms = {
            name: _arm(rp, name, arm_weight, arm_exploration, streams[name], orders, windows)
            for name, arm_weight, arm_exploration, _ in plan
        }
        single = [
            _Stream(
                rp.Y0[order, single_col],
                np.full(len(order), single_col),
                np.zeros(len(order), bool),
                int(np.isnan(rp.Y[order, single_col]).sum()),
            )  # fmt: skip
            for order in orders
        ]
        arms["best single"] = _arm(rp, f"best single ({single_name})", 0.0, "off", single, orders,
                                   windows)  # fmt: skip
        agree = None
        if weight == 0:
            agree = all(
                np.array_equal(a.picks, b.picks)
                for a, b in zip(streams["static"], streams["online"], strict=True)
            )
        result = OnlineEvaluation(
            k=k,
            algorithm=algorithm,
            stratify=stratify,
            seeds=seeds,
            method=chosen,
            batch=batch,
            stream_queries=len(test_rows),
            production_weight=float(weight),
            half_life=half,
            explorations=tuple(policies),
            exploration_share=float(share),
            models=rp.models,
            best_single=single_name,
            arms=arms,
            online_equals_static=agree,
            seconds=0.0,
        )
        raise psycopg.Rollback(tx)
    return dataclasses.replace(result, seconds=round(time.perf_counter() - started, 2))


def _stream(
    conn: psycopg.Connection,
    rp: Replay,
    clustering_id: int,
    order: np.ndarray,
    batch: int,
    policy: Policy,
    feed: bool,
    t0: datetime,
    rng: np.random.Generator,
) -> _Stream:
    n = len(order)
    values = np.zeros(n)
    picks = np.full(n, -1, dtype=np.int64)
    explored = np.zeros(n, dtype=bool)
    missing = 0
    for start in range(0, n, batch):
        rows = order[start : start + batch]
        seeds = [int(x) for x in rng.integers(0, 2**62, size=len(rows))]
        decisions = routing.decide(conn, rp.X[rows], policy, seeds=seeds)
        log: list[tuple[Any, ...]] = []
        back: list[tuple[Any, ...]] = []
        for i, (row, decision) in enumerate(zip(rows, decisions, strict=True)):
            at = start + i
            if not decision.candidates:
                continue
            top = decision.candidates[0]
            col = rp.column[top.model]
            picks[at] = col
            explored[at] = bool(decision.explored)
            value = rp.Y[row, col]
            if math.isnan(value):
                missing += 1
            else:
                values[at] = value
            if feed:
                route = uuid.uuid4()
                when = t0 + TICK * at
                log.append((route, when, rp.hashes[row], decision.cluster, decision.distance,
                            top.model, bool(decision.explored)))  # fmt: skip
                if not math.isnan(value):
                    back.append((route, int(rp.model_ids[col]), float(value), when))
        if feed and log:
            columns = list(zip(*log, strict=True))
            conn.execute(
                _LOG_SQL,
                (clustering_id, policy.exploration if policy.exploration != "off" else None,
                 *[list(col) for col in columns]),
            )  # fmt: skip
            if back:
                conn.execute(_FEEDBACK_SQL, [list(col) for col in zip(*back, strict=True)])
            conn.execute("CALL avengers.refresh_production()")
    return _Stream(values, picks, explored, missing)


def _arm(
    rp: Replay,
    name: str,
    weight: float,
    policy: str,
    runs: list[_Stream],
    orders: list[np.ndarray],
    windows: int,
) -> Arm:
    n = len(orders[0])
    edges = np.linspace(0, n, windows + 1).round().astype(int)
    per_window = [
        Stat.of(float(run.values[a:b].mean() * 100) for run in runs)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
        if b > a
    ]
    groups = rp.groups()

    def macro(run: _Stream, order: np.ndarray, members: Sequence[str]) -> float:
        names = rp.dataset[order]
        return float(np.mean([run.values[names == d].mean() * 100 for d in members]))

    return Arm(
        name=name,
        production_weight=float(weight),
        exploration=policy,
        accuracy=Stat.of(float(run.values.mean() * 100) for run in runs),
        windows=tuple(per_window),
        id_macro=Stat.of(macro(r, o, groups["id"]) for r, o in zip(runs, orders, strict=True)),
        ood_macro=(
            Stat.of(macro(r, o, groups["ood"]) for r, o in zip(runs, orders, strict=True))
            if "ood" in groups
            else None
        ),
        explored=Stat.of(float(run.explored.mean() * 100) for run in runs),
        missing_outcomes=sum(run.missing for run in runs),
    )
