"""Sweeps of a replay: the figures again over k, algorithms, model budgets (s(m) selection) and
calibration fractions, each point on the sweep seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg

from avengers_store.evaluation.harness import Replay, anchor_details, progress_bar, sweep_point
from avengers_store.evaluation.results import Sweep
from avengers_store.ingest.datasets import seeded_split


def sweep(rp: Replay, parameter: str, values: list, seeds: Sequence[int], fit) -> Sweep:
    points = []
    with progress_bar(len(values) * len(seeds), f"sweep {parameter}", rp.progress) as bar:
        for value in values:
            runs = []
            for seed in seeds:
                bar.set_postfix_str(f"{parameter}={value} seed {seed}")
                runs.append(fit(value, seed))
                bar.update(1)
            points.append(
                sweep_point(
                    rp,
                    parameter,
                    value,
                    runs,
                    seeds,
                    clusters=[r.k for r in runs],
                    **anchor_details(rp),
                )
            )
    return Sweep(parameter, tuple(points))


def budget_sweep(
    rp: Replay, k: int, algorithm: str, budgets: list[int], seeds: Sequence[int]
) -> Sweep:
    """Keep the top-N models by s(m) (``avengers.model_selection_scores``, among the models
    being evaluated) of each seed's clustering; route with only them active."""
    original = rp.conn.execute("SELECT id, active FROM avengers.models").fetchall()
    points: dict[int, list] = {b: [] for b in budgets}
    chosen_sets: dict[int, list] = {b: [] for b in budgets}
    with progress_bar(len(budgets) * len(seeds), "sweep budget", rp.progress) as bar:
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
            sweep_point(
                rp,
                "budget",
                budget,
                points[budget],
                seeds,
                models=chosen_sets[budget],
                **anchor_details(rp, cols),
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


def fraction_sweep(
    rp: Replay, k: int, algorithm: str, fractions: list[float], seeds: Sequence[int]
) -> Sweep:
    """Re-draw every non-OOD dataset's split (its calibration + test queries pooled, the store's
    seeded split rule, one draw per distinct text) at each fraction, then calibrate and route as
    usual."""
    pooled = ~rp.is_ood & np.isin(rp.original_split, ["calibration", "test"])
    groups: dict[str, np.ndarray] = {}
    for name in sorted(set(rp.dataset[pooled])):
        groups[name] = np.flatnonzero(pooled & (rp.dataset == name))
    out = []
    with progress_bar(
        len(fractions) * len(seeds), "sweep calibration fraction", rp.progress
    ) as bar:
        for fraction in fractions:
            runs, details = [], []
            for seed in seeds:
                bar.set_postfix_str(f"fraction={fraction} seed {seed}")
                split = rp.original_split.copy()
                for rows in groups.values():
                    # Drawn per distinct text: a text stored in both splits goes to one side.
                    hashes = [rp.hashes[i] for i in rows]
                    distinct = list(dict.fromkeys(hashes))
                    drawn = dict(zip(distinct, seeded_split(distinct, fraction, seed), strict=True))
                    split[rows] = [drawn[h] for h in hashes]
                _write_split(rp, split)
                runs.append(rp.run(k, algorithm, seed, tag=("fraction", fraction)))
                details.append(anchor_details(rp))
                bar.update(1)
            # Anchors move with the drawn split: averaged over seeds (the model: first seed's).
            merged = {
                key: details[0][key]
                if key.endswith("model")
                else float(np.mean([d[key] for d in details]))
                for key in details[0]
            }
            out.append(
                sweep_point(
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


def _write_split(rp: Replay, split: np.ndarray) -> None:
    changed = np.flatnonzero(split != rp.split)
    if len(changed):
        # Both queries of a text in both splits may now share a side. The key is checked at
        # commit only, and the replay writes the original split back and rolls back anyway.
        rp.conn.execute("SET CONSTRAINTS avengers.queries_dataset_split_text_key DEFERRED")
        rp.conn.execute(
            "UPDATE avengers.queries q SET split = s.split "
            "FROM unnest(%s::bigint[], %s::text[]) AS s(id, split) WHERE q.id = s.id",
            (rp.query_ids[changed].tolist(), split[changed].tolist()),
        )
    rp.split = split
