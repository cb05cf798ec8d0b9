"""Online replay: does the loop learn? Prequential, on the stored outcomes; no model is called.

For each seed the store is calibrated as in ``evaluate`` (``recluster`` on the calibration split,
inside one transaction that is rolled back), then a stream of queries is replayed, ``batch`` at
a time: each batch is routed through the store's routing statement with the profiles as they
stand and scored with the routed model's outcome; then only that outcome is fed back the way
production feeds it (a route-log row and a feedback row per query, counted by the store's
triggers) and ``refresh_production`` serves it. A query is always scored before its own outcome
is known.

The stream is the test split in a seeded order (``iid``), or one that moves
(``evaluation.scenarios``): a model that degrades, a model that joins without calibration
evidence, a dataset calibration never saw. Arms, each on the same stream of each seed (every arm
in its own savepoint, rolled back):

- ``static``: calibration only, nothing fed back (the router ``evaluate`` measures).
- ``online``: feedback served at ``production_weight`` through the update rule
  (``avengers.production_evidence``), no exploration.
- ``online + targeted`` (and ``+ thompson`` / ``+ epsilon`` when asked): the same with
  exploration, routed by ``avengers.decide`` under that exploration policy (targeted: the
  rule of ``production.exploration_rule``), each decision's propensity recorded.
- ``best single``: the model with the best dataset-balanced calibration mean, every query.
- ``recalibrated`` (moving streams only): the static router calibrated on the world after the
  change, a reference no online arm can beat by more than luck.

Besides prequential quality, each arm reports its regret after the change: per query, the mean
outcome after the change of the hindsight-best model of the query's nearest cluster minus that
of the model routed (pseudo-regret, so never negative), and how many queries after the change it
needs before its regret stays within 20 % of static's gap to the recalibrated reference
(recovering 80 % of the gap).

The stream's clock advances one second per query (so a half-life of 2000 s is 2000 queries).
With ``production_weight`` 0 the online arm must route exactly as the static one; the result
says whether it did (``online_equals_static``).
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
from avengers_store.arguments import as_list, one_of
from avengers_store.calibration import fit, reclustering
from avengers_store.errors import InputError
from avengers_store.evaluation import scenarios
from avengers_store.evaluation.harness import Replay, progress_bar, stratify_for
from avengers_store.evaluation.results import Stat
from avengers_store.evaluation.scenarios import IID, Scenario, Stream
from avengers_store.production import exploration_rule
from avengers_store.production.settings import configure
from avengers_store.production.update_rule import CHANGE_THRESHOLD
from avengers_store.routing import RoutingMethod
from avengers_store.store import connections
from avengers_store.store.queries import query

DEFAULT_BATCH = 256
DEFAULT_WINDOWS = 10
# Windows of the stream after the change that recovery is measured on.
RECOVERY_WINDOWS = 20
# Recovered: the regret above the reference is at most this share of static's.
RECOVERY_SHARE = 0.2
POLICIES = ("targeted", "thompson", "epsilon")
# The replay's clock: one query per second.
TICK = timedelta(seconds=1)


@dataclass(frozen=True)
class Arm:
    """One way of routing the stream, over the seeds (×100 scores). ``accuracy``: prequential,
    the mean over every streamed query; ``windows``: the same per consecutive slice of the
    stream; ``explored``: share of queries exploration sent elsewhere than the best-scored
    model (×100); ``regret``: mean pseudo-regret per query after the change against the
    hindsight-best model of each cluster, ``regret_windows`` the same per slice of the stream
    after the change; ``recovery``: queries after the change until the arm's regret stays within
    20 % of static's gap to the recalibrated reference (None: never, or no reference);
    ``routed_after_change``: each model's share of the queries after the change (×100, mean
    over the seeds)."""

    name: str
    production_weight: float
    exploration: str
    accuracy: Stat
    windows: tuple[Stat, ...]
    id_macro: Stat
    ood_macro: Stat | None
    explored: Stat
    missing_outcomes: int
    regret: Stat
    regret_windows: tuple[Stat, ...]
    routed_after_change: dict[str, float]
    recovery: int | None = None


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
    change_threshold: float
    explorations: tuple[str, ...]
    exploration_share: float
    exploration_overlap: float
    models: tuple[str, ...]
    best_single: str
    arms: dict[str, Arm]
    online_equals_static: bool | None  # checked when production_weight is 0, else None
    seconds: float
    scenario: str = "iid"
    change_at: int = 0  # stream position of the change (the first seed's)
    post_change_queries: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["half_life_s"] = self.half_life.total_seconds()
        out["half_life"] = str(self.half_life)
        return out


@dataclass(frozen=True)
class _Plan:
    name: str
    weight: float
    policy: str  # off, targeted, thompson, epsilon
    feed: bool
    share: float = 0.0


@dataclass
class _Run:
    values: np.ndarray  # outcome of the routed model per stream position (missing: 0)
    picks: np.ndarray  # its column (-1: unrouted)
    explored: np.ndarray
    missing: int
    clusters: np.ndarray | None = None  # nearest cluster per position (routed arms)


_LOG_SQL = query("evaluation", "replay_log_row")
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
    change_threshold: float | None = None,
    exploration: Sequence[str] | str | None = None,
    exploration_share: float | None = None,
    exploration_overlap: float | None = None,
    scenario: Scenario = IID,
    method: str | RoutingMethod | None = None,
    stratify: str | None = None,
    datasets: Sequence[str] | None = None,
    ood_macro: Sequence[str] | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
    progress: bool | None = None,
) -> OnlineEvaluation:
    """Stream each seed's queries through the router, feeding back the routed model's outcome,
    and compare with the static router, the best single model and (for a moving stream) the
    router recalibrated after the change.

    ``production_weight``, ``half_life`` (in stream seconds: one query per second) and
    ``change_threshold`` default to the served clustering's settings (or the store's defaults);
    ``exploration`` names the explored arms (default: targeted), ``exploration_share`` their
    share (default: targeted's ``exploration_rule.SHARE``, epsilon's the served clustering's)
    and ``exploration_overlap`` targeted's plausibility threshold. Runs in one transaction that
    is rolled back: the store is unchanged afterwards.
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
    one_of(algorithm, fit.ALGORITHMS, "algorithm", "algorithm")
    if isinstance(exploration, str):
        exploration = [exploration]
    policies = as_list(exploration, "exploration", str) or ["targeted"]
    for policy in policies:
        if policy not in POLICIES:
            raise InputError(
                f"the explored arms take a policy ({', '.join(POLICIES)}), got {policy!r}; the "
                "online arm is the one without exploration",
                location="exploration",
            )
    if not isinstance(scenario, Scenario):
        raise InputError("scenario must be a Scenario (evaluation.scenarios)", location="scenario")
    chosen = routing.routing_method(method)
    stratify = stratify_for(chosen, stratify)
    datasets = as_list(datasets, "datasets", str) or None
    ood_macro = as_list(ood_macro, "ood_macro", str) or None
    with connections.connection(url, conn=conn) as c, c.transaction() as tx:
        served = c.execute(
            "SELECT production_weight, half_life, exploration_share, change_threshold "
            "FROM avengers.active_clustering"
        ).fetchone()
        # Unset options take the served clustering's settings, else the store's defaults.
        weight = (
            production_weight if production_weight is not None else (served[0] if served else 1.0)
        )
        half = half_life if half_life is not None else (served[1] if served else timedelta(days=14))
        threshold = (
            change_threshold
            if change_threshold is not None
            else (served[3] if served else CHANGE_THRESHOLD)
        )
        epsilon_share = served[2] if served else 0.05
        share = exploration_share if exploration_share is not None else exploration_rule.SHARE
        overlap = (
            exploration_overlap if exploration_overlap is not None else exploration_rule.OVERLAP
        )
        exploration_rule.check(share, overlap)
        rp = Replay(
            c,
            method=chosen,
            stratify=stratify,
            top_n=1,
            datasets=datasets,
            ood_macro=ood_macro,
            progress=progress,
        )
        names = set(rp.dataset[np.isin(rp.split, ["calibration", "test"])])
        single_cols = np.arange(len(rp.models))
        if scenario.kind == "new-model" and scenario.target in rp.column:
            single_cols = single_cols[single_cols != rp.column[scenario.target]]
        single_col, single_name = rp.anchors(single_cols)["balanced"]
        single_col = int(single_cols[single_col])
        weakest = _weakest(rp, exclude=scenario.target)
        scenario = scenarios.resolve(scenario, rp.models, names, weakest)
        test_rows = np.flatnonzero(rp.test_mask())
        cal_rows = np.flatnonzero(rp.cal_mask())
        cal_ids = rp.query_ids[cal_rows].tolist()
        if exploration_share is not None:
            epsilon_share = exploration_share
        plan = [
            _Plan("static", 0.0, "off", False),
            _Plan("online", weight, "off", True),
            *(
                _Plan(f"online + {p}", weight, p, True, epsilon_share if p == "epsilon" else share)
                for p in policies
            ),
        ]
        runs: dict[str, list[_Run]] = {p.name: [] for p in plan}
        reference: list[_Run] = []
        streams: list[Stream] = []
        t0 = c.execute("SELECT now()").fetchone()[0]
        steps = len(seeds) * (len(plan) + (1 if scenario.moves else 0))
        with progress_bar(steps, "online replay", progress) as bar:
            for seed in seeds:
                stream = scenarios.build(
                    scenario, seed, rp.Y, rp.dataset, rp.split, test_rows, cal_rows, rp.column
                )
                streams.append(stream)
                if scenario.moves:
                    bar.set_postfix_str(f"seed {seed}, recalibrated")
                    with c.transaction() as ref_tx:
                        scenarios.reference_world(
                            c, scenario, stream, cal_ids, rp.query_ids, rp.split
                        )
                        reclustering.recluster(k, algorithm, seed, stratify=stratify, conn=c)
                        c.execute("UPDATE avengers.clusterings SET production_weight = 0 "
                                  "WHERE status = 'active'")  # fmt: skip
                        reference.append(_static(c, rp, stream))
                        raise psycopg.Rollback(ref_tx)
                    bar.update(1)
                with c.transaction() as world_tx:
                    scenarios.keep_out(c, scenario, cal_ids)
                    fitted = reclustering.recluster(k, algorithm, seed, stratify=stratify, conn=c)
                    configure(fitted.id, half_life=half, change_threshold=threshold, conn=c)
                    # The replay starts from calibration alone, whatever feedback the store
                    # holds (the arms change no half-life, so nothing recounts it).
                    c.execute(
                        "DELETE FROM avengers.production_stats WHERE clustering_id = %s",
                        (fitted.id,),
                    )
                    for arm in plan:
                        bar.set_postfix_str(f"seed {seed}, {arm.name}")
                        with c.transaction() as arm_tx:
                            configure(
                                fitted.id,
                                production_weight=arm.weight,
                                exploration="off",
                                conn=c,
                            )
                            runs[arm.name].append(
                                _stream(
                                    c,
                                    rp,
                                    fitted.id,
                                    stream,
                                    scenario,
                                    batch,
                                    arm,
                                    t0,
                                    seed,
                                    overlap,
                                )  # fmt: skip
                            )
                            raise psycopg.Rollback(arm_tx)
                        bar.update(1)
                    raise psycopg.Rollback(world_tx)
        clusters = [r.clusters for r in runs["static"]]
        arms: dict[str, Arm] = {}
        for arm in plan:
            arms[arm.name] = _arm(rp, arm.name, arm.weight, arm.policy, runs[arm.name], streams,
                                  clusters, windows)  # fmt: skip
        single = [
            _Run(
                np.nan_to_num(s.outcomes[:, single_col]),
                np.full(len(s.rows), single_col),
                np.zeros(len(s.rows), bool),
                int(np.isnan(s.outcomes[:, single_col]).sum()),
            )  # fmt: skip
            for s in streams
        ]
        arms["best single"] = _arm(rp, f"best single ({single_name})", 0.0, "off", single,
                                   streams, clusters, windows)  # fmt: skip
        if scenario.moves:
            arms["recalibrated"] = _arm(rp, "recalibrated (reference)", 0.0, "off", reference,
                                        streams, clusters, windows)  # fmt: skip
            arms = _with_recovery(arms, runs, reference, streams, clusters)
        agree = None
        if weight == 0:
            agree = all(
                np.array_equal(a.picks, b.picks)
                for a, b in zip(runs["static"], runs["online"], strict=True)
            )
        result = OnlineEvaluation(
            k=k,
            algorithm=algorithm,
            stratify=stratify,
            seeds=seeds,
            method=chosen,
            batch=batch,
            stream_queries=len(streams[0].rows),
            production_weight=float(weight),
            half_life=half,
            change_threshold=float(threshold),
            explorations=tuple(policies),
            exploration_share=float(share),
            exploration_overlap=float(overlap),
            models=rp.models,
            best_single=single_name,
            arms=arms,
            online_equals_static=agree,
            seconds=0.0,
            scenario=scenario.label(),
            change_at=streams[0].change,
            post_change_queries=len(streams[0].rows) - streams[0].change,
        )
        raise psycopg.Rollback(tx)
    return dataclasses.replace(result, seconds=round(time.perf_counter() - started, 2))


def _weakest(rp: Replay, exclude: str | None) -> str:
    """The active model with the lowest dataset-balanced calibration mean (degrade's default
    ``as``)."""
    cal = rp.cal_mask()
    names = sorted(set(rp.dataset[cal]))
    with np.errstate(invalid="ignore"):
        per = np.array([np.nanmean(rp.Y[cal & (rp.dataset == d)], axis=0) for d in names])
        balanced = np.nanmean(per, axis=0)
    order = sorted(
        (j for j, m in enumerate(rp.models) if m != exclude),
        key=lambda j: (np.nan_to_num(balanced[j], nan=-1.0), rp.models[j]),
    )
    return rp.models[order[0]]


def _static(conn: psycopg.Connection, rp: Replay, stream: Stream) -> _Run:
    """The served router on the whole stream with nothing fed back."""
    n = len(stream.rows)
    values, picks = np.zeros(n), np.full(n, -1, dtype=np.int64)
    missing = 0
    for start in range(0, n, 4096):
        chunk = np.arange(start, min(start + 4096, n))
        decided = _decide(conn, rp, stream.rows[chunk], _Plan("static", 0.0, "off", False), 0.0,
                          None)  # fmt: skip
        for at, (col, *_rest) in zip(chunk, decided, strict=True):
            if col < 0:
                continue
            picks[at] = col
            value = stream.outcomes[at, col]
            missing += int(math.isnan(value))
            values[at] = 0.0 if math.isnan(value) else value
    return _Run(values, picks, np.zeros(n, bool), missing)


def _decide(
    conn: psycopg.Connection,
    rp: Replay,
    rows: np.ndarray,
    arm: _Plan,
    overlap: float,
    rng: np.random.Generator | None,
) -> list[tuple[int, int | None, float | None, bool, float | None]]:
    """One decision per query: (the answering model's column or -1, nearest cluster, its
    distance, explored, propensity). The one place the replay calls ``avengers.decide``; an
    exploring arm's draws come from a seed per query, as a client's do."""
    policy = rp.policy.replace(production_weight=arm.weight, exploration="off", top_n=1)
    seeds = None
    if arm.policy != "off":
        policy = policy.replace(exploration=arm.policy, exploration_share=arm.share)
        if arm.policy == "targeted":
            policy = policy.replace(exploration_overlap=overlap)
        assert rng is not None
        seeds = [int(x) for x in rng.integers(0, 2**62, size=len(rows))]
    return [
        (rp.column[d.candidates[0].model], d.cluster, d.distance, bool(d.explored),
         d.candidates[0].propensity if arm.policy != "off" else 1.0)
        if d.candidates
        else (-1, d.cluster, d.distance, False, None)
        for d in routing.decide(conn, rp.X[rows], policy, seeds=seeds)
    ]  # fmt: skip


def _stream(
    conn: psycopg.Connection,
    rp: Replay,
    clustering_id: int,
    stream: Stream,
    scenario: Scenario,
    batch: int,
    arm: _Plan,
    t0: datetime,
    seed: int,
    overlap: float,
) -> _Run:
    n = len(stream.rows)
    values = np.zeros(n)
    picks = np.full(n, -1, dtype=np.int64)
    explored = np.zeros(n, dtype=bool)
    clusters = np.full(n, -1, dtype=np.int64)
    missing = 0
    rng = np.random.default_rng(seed)
    joins = scenario.kind == "new-model" and stream.change > 0
    if joins:
        conn.execute("UPDATE avengers.models SET active = false WHERE name = %s",
                     (scenario.target,))  # fmt: skip
    # Batches never straddle the change, so a joining model joins exactly there.
    cuts = sorted({*range(0, n, batch), *([stream.change] if 0 < stream.change < n else [])})
    for start, end in zip(cuts, [*cuts[1:], n], strict=True):
        if joins and start == stream.change:
            conn.execute("UPDATE avengers.models SET active = true WHERE name = %s",
                         (scenario.target,))  # fmt: skip
        positions = np.arange(start, end)
        decided = _decide(conn, rp, stream.rows[positions], arm, overlap, rng)
        log: list[tuple[Any, ...]] = []
        back: list[tuple[Any, ...]] = []
        for at, (col, cluster, distance, was_explored, propensity) in zip(
            positions, decided, strict=True
        ):
            if cluster is not None:
                clusters[at] = cluster
            if col < 0:
                continue
            picks[at] = col
            explored[at] = was_explored
            value = stream.outcomes[at, col]
            if math.isnan(value):
                missing += 1
            else:
                values[at] = value
            if arm.feed:
                route = uuid.uuid4()
                when = t0 + TICK * int(at)
                log.append((route, when, rp.hashes[stream.rows[at]], cluster, distance,
                            rp.models[col], was_explored, propensity))  # fmt: skip
                if not math.isnan(value):
                    back.append((route, int(rp.model_ids[col]), float(value), when))
        if arm.feed and log:
            columns = list(zip(*log, strict=True))
            conn.execute(
                _LOG_SQL,
                (clustering_id, None if arm.policy == "off" else arm.policy,
                 *[list(col) for col in columns]),
            )  # fmt: skip
            if back:
                conn.execute(_FEEDBACK_SQL, [list(col) for col in zip(*back, strict=True)])
            conn.execute("CALL avengers.refresh_production()")
    return _Run(values, picks, explored, missing, clusters)


def _regret(stream: Stream, run: _Run, clusters: np.ndarray) -> np.ndarray:
    """Per query after the change: the mean outcome (after the change) of the hindsight-best
    model of its nearest cluster minus that of the model routed."""
    after = slice(stream.change, len(stream.rows))
    outcomes = np.nan_to_num(stream.outcomes[after])
    where = clusters[after]
    picks = run.picks[after]
    out = np.zeros(len(where))
    for cluster in np.unique(where):
        inside = where == cluster
        means = outcomes[inside].mean(axis=0)
        chosen = np.where(picks[inside] >= 0, means[np.maximum(picks[inside], 0)], 0.0)
        out[inside] = means.max() - chosen
    return out


def _slices(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _arm(
    rp: Replay,
    name: str,
    weight: float,
    policy: str,
    runs: list[_Run],
    streams: list[Stream],
    clusters: list[np.ndarray],
    windows: int,
) -> Arm:
    n = len(streams[0].rows)
    per_window = [
        Stat.of(float(run.values[a:b].mean() * 100) for run in runs) for a, b in _slices(n, windows)
    ]
    regrets = [_regret(s, r, c) for s, r, c in zip(streams, runs, clusters, strict=True)]
    post = len(regrets[0])
    groups = rp.groups()
    shares = np.mean(
        [
            np.bincount(r.picks[s.change :][r.picks[s.change :] >= 0], minlength=len(rp.models))
            / max(len(r.picks) - s.change, 1)
            for r, s in zip(runs, streams, strict=True)
        ],
        axis=0,
    )

    def macro(run: _Run, stream: Stream, members: Sequence[str]) -> float | None:
        names = rp.dataset[stream.rows]
        found = [run.values[names == d].mean() * 100 for d in members if (names == d).any()]
        return float(np.mean(found)) if found else None

    def group_stat(members: Sequence[str]) -> Stat | None:
        values = [macro(r, s, members) for r, s in zip(runs, streams, strict=True)]
        return None if any(v is None for v in values) else Stat.of(float(v) for v in values)

    return Arm(
        name=name,
        production_weight=float(weight),
        exploration=policy,
        accuracy=Stat.of(float(run.values.mean() * 100) for run in runs),
        windows=tuple(per_window),
        id_macro=group_stat(groups["id"]) or Stat.of([0.0]),
        ood_macro=group_stat(groups["ood"]) if "ood" in groups else None,
        explored=Stat.of(float(run.explored.mean() * 100) for run in runs),
        missing_outcomes=sum(run.missing for run in runs),
        regret=Stat.of(float(r.mean() * 100) if len(r) else 0.0 for r in regrets),
        regret_windows=tuple(
            Stat.of(float(r[a:b].mean() * 100) for r in regrets) for a, b in _slices(post, windows)
        ),
        routed_after_change={m: float(v * 100) for m, v in zip(rp.models, shares, strict=True)},
    )


def _with_recovery(
    arms: dict[str, Arm],
    runs: dict[str, list[_Run]],
    reference: list[_Run],
    streams: list[Stream],
    clusters: list[np.ndarray],
) -> dict[str, Arm]:
    """Each arm with the queries after the change it needs to recover 80 % of static's gap to
    the recalibrated reference (mean regret curves over the seeds, ``RECOVERY_WINDOWS``
    slices): the start of the first slice from which its regret above the reference stays
    within ``RECOVERY_SHARE`` of static's mean gap. Static (and the best single model) never
    recover; None also when static has no gap to recover."""

    def curve(arm_runs: list[_Run]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        regrets = [_regret(s, r, c) for s, r, c in zip(streams, arm_runs, clusters, strict=True)]
        cuts = _slices(len(regrets[0]), RECOVERY_WINDOWS)
        return np.array([np.mean([r[a:b].mean() for r in regrets]) for a, b in cuts]), cuts

    floor, cuts = curve(reference)
    static, _ = curve(runs["static"])
    gap = float(np.mean(static - floor))
    out = dict(arms)
    out["recalibrated"] = dataclasses.replace(arms["recalibrated"], recovery=0)
    if gap <= 0:
        return out
    for name, arm_runs in runs.items():
        if name == "static":
            continue
        found, _ = curve(arm_runs)
        within = found - floor <= RECOVERY_SHARE * gap
        first = next((i for i in range(len(within)) if within[i:].all()), None)
        out[name] = dataclasses.replace(
            arms[name], recovery=None if first is None else cuts[first][0]
        )
    return out
