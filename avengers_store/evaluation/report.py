"""Reading an ``Evaluation`` (and an ``OnlineEvaluation``): text tables for people, PNG plots of
the sweeps and of the quality-cost frontier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from avengers_store import figures

if TYPE_CHECKING:
    from avengers_store.evaluation.online import OnlineEvaluation
    from avengers_store.evaluation.results import Evaluation, Frontier, Stat, Sweep

GROUP_TITLES = {"id": "ID macro", "ood": "OOD macro", "ood_all": "OOD macro (all)"}


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _pm(stat: Stat | None) -> str:
    return "" if stat is None else f"{stat.mean:.2f} ± {stat.std:.2f}"


def format_tables(result: Evaluation) -> str:
    """Per-dataset rows, the macro rows, the chosen single models and the per-seed values."""
    header = (
        "dataset",
        "n",
        "routed",
        "single(cal,q)",
        "single(cal,ds)",
        "max expert",
        "oracle",
        "random",
    )
    lines = []
    body = []
    for d in result.datasets:
        body.append(
            (
                d.dataset + (" (OOD)" if d.is_ood else ""),
                str(d.queries),
                _pm(d.routed),
                f"{d.best_single_cal_weighted:.2f}",
                f"{d.best_single_cal_balanced:.2f}",
                f"{d.max_expert.score:.2f}",
                f"{d.oracle:.2f}",
                f"{d.random:.2f}",
            )
        )
    for name, g in result.groups.items():
        body.append(
            (
                GROUP_TITLES.get(name, name),
                str(len(g.datasets)),
                _pm(g.routed),
                f"{g.best_single_cal_weighted.score:.2f}",
                f"{g.best_single_cal_balanced.score:.2f}",
                f"{g.max_expert:.2f}",
                f"{g.oracle:.2f}",
                f"{g.random:.2f}",
            )
        )
    lines += _table(header, body, rule_at=len(result.datasets))
    lines.append("")
    m = result.method
    lines.append(
        f"method {m.name} (neighbours {m.neighbours}, temperature {m.temperature}, shrinkage "
        f"{m.shrinkage}); {result.algorithm} k={result.k} "
        f"stratify={result.stratify} "
        f"(clusters kept: {', '.join(map(str, result.clusters))}); seeds "
        f"{', '.join(map(str, result.seeds))}; top-{result.top_n}, strategy {result.strategy}"
    )
    for name, g in result.groups.items():
        lines.append(
            f"{GROUP_TITLES.get(name, name)} over {', '.join(g.datasets)}: routed {_pm(g.routed)} "
            f"(per seed {', '.join(f'{v:.2f}' for v in g.routed.values)}); best single chosen "
            f"on calibration: query-weighted {_short(g.best_single_cal_weighted.model)} "
            f"{g.best_single_cal_weighted.score:.2f}, dataset-balanced "
            f"{_short(g.best_single_cal_balanced.model)} {g.best_single_cal_balanced.score:.2f}; "
            f"chosen on test {_short(g.best_single_test.model)} {g.best_single_test.score:.2f}; "
            f"gap best single (cal., balanced) -> oracle closed {100 * g.gap_closed.mean:.1f}% "
            f"(vs query-weighted {100 * g.gap_closed_weighted.mean:.1f}%)"
            + (
                f"; best of top-{result.top_n} {_pm(g.routed_top_n_best)}"
                if g.routed_top_n_best
                else ""
            )
        )
    lines.append(
        f"calibration queries routed (macro over calibration datasets): {_pm(result.calibration_macro)}"
    )
    lines.append(
        f"routed picks without a recorded outcome (scored 0): {result.missing_outcomes}; "
        f"queries no active model could take: {result.unrouted}; {result.seconds:.1f} s"
    )
    if result.ood is not None:
        lines.append("")
        lines.append(format_ood(result.ood))
    for sweep in result.sweeps.values():
        lines.append("")
        lines.append(format_sweep(sweep))
    if result.frontier is not None:
        lines.append("")
        lines.append(format_frontier(result.frontier))
    return "\n".join(lines)


def format_frontier(frontier: Frontier) -> str:
    """The α points and single models as (quality, cost) rows, the non-dominated set and the
    two headlines."""
    g = frontier.group
    groups = list(frontier.points[0].quality) if frontier.points else [g]
    header = ["point"]
    for name in groups:
        title = GROUP_TITLES.get(name, name)
        header += [f"{title}", f"cost {frontier.cost_unit}"]
    header.append("non-dominated")
    body = []
    for p in frontier.points:
        row = [f"alpha={p.tradeoff:g}"]
        for name in groups:
            row += [_pm(p.quality[name]), f"{p.cost[name].mean:.4g}"]
        row.append("yes" if f"alpha={p.tradeoff:g}" in frontier.non_dominated else "")
        body.append(row)
    for s in frontier.singles:
        row = [_short(s.model) + (" (best single)" if s.model == frontier.best_single else "")]
        for name in groups:
            row += [f"{s.quality[name]:.2f}", f"{s.cost[name]:.4g}"]
        row.append("yes" if s.model in frontier.non_dominated else "")
        body.append(row)
    lines = [f"quality-cost frontier ({GROUP_TITLES.get(g, g)} for the headlines; cost "
             f"{frontier.cost_unit}, macro over datasets)"]  # fmt: skip
    lines += _table(header, body, rule_at=len(frontier.points))
    best = next(s for s in frontier.singles if s.model == frontier.best_single)
    head = frontier.quality_at_best_single_cost
    lines.append(
        f"at the best single model's cost ({_short(best.model)}: {best.quality[g]:.2f} for "
        f"{best.cost[g]:.4g}): "
        + (
            f"routing reaches {head.quality:.2f} (alpha={head.tradeoff:g}, cost "
            f"{head.cost:.4g}, {100 * head.cost_share:.0f}% of it)"
            if head
            else "no routed point is that cheap"
        )
    )
    match = frontier.cost_to_match_best_single
    lines.append(
        f"to match the best single model's quality ({best.quality[g]:.2f}): "
        + (
            f"routing needs {match.cost:.4g} ({100 * match.cost_share:.0f}% of its cost; "
            f"alpha={match.tradeoff:g}, {match.quality:.2f})"
            if match
            else "no routed point reaches it"
        )
    )
    if frontier.matches_plain is not None:
        lines.append(
            "alpha=1 routes every test query as the plain replay: "
            + ("yes" if frontier.matches_plain else "NO")
        )
    if frontier.plot:
        lines.append(f"plot: {frontier.plot}")
    return "\n".join(lines)


def format_ood(ood) -> str:
    """The OOD detector: AUROC of novelty, the share flagged, each policy's macros."""
    lines = [
        f"OOD detector (novelty; OOD datasets {', '.join(ood.ood_datasets)}): AUROC "
        f"{_pm(ood.auroc)}; flagged: in-distribution {_pm(ood.id_flagged)}%, OOD "
        f"{_pm(ood.ood_flagged)}% ("
        + ", ".join(f"{d} {_pm(v)}%" for d, v in ood.flagged_per_dataset.items())
        + ")"
    ]
    for p in ood.policies.values():
        lines.append(
            f"  policy {p.policy}: ID macro {_pm(p.id_macro)}"
            + (f", OOD macro {_pm(p.ood_macro)}" if p.ood_macro else "")
        )
    return "\n".join(lines)


def format_sweep(sweep: Sweep) -> str:
    lines = [f"sweep over {sweep.parameter}" + (f" (plot: {sweep.plot})" if sweep.plot else "")]
    for p in sweep.points:
        extra = ""
        if "models" in p.details:
            extra = "  models: " + ", ".join(_short(m) for m in p.details["models"][0])
        lines.append(
            f"  {p.parameter}={p.value}: test ID {_pm(p.id_macro)}"
            + (f", OOD {_pm(p.ood_macro)}" if p.ood_macro else "")
            + f", calibration {_pm(p.calibration_macro)} (seeds {', '.join(map(str, p.seeds))})"
            + extra
        )
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------

_TITLES = {
    "k": ("number of clusters k", "Routed accuracy vs k"),
    "algorithm": ("clustering algorithm", "Routed accuracy by clustering algorithm"),
    "budget": ("number of models kept by s(m)", "Routed accuracy vs model budget"),
    "calibration_fraction": ("calibration fraction", "Routed accuracy vs calibration fraction"),
}


def plot_sweep(sweep: Sweep, path: str | Path, *, title: str | None = None) -> Path:
    """One PNG: test ID / OOD macro and calibration macro (mean ± std over seeds) per point,
    with the best single model on ID test (dataset-balanced calibration choice)."""
    plt = figures.pyplot()
    import numpy as np

    points = sweep.points
    categorical = sweep.parameter == "algorithm"
    x = np.arange(len(points)) if categorical else np.array([float(p.value) for p in points])
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    series = [
        ("test, ID macro", [p.id_macro for p in points], "tab:blue", "o"),
        ("calibration queries", [p.calibration_macro for p in points], "tab:gray", "s"),
    ]
    if all(p.ood_macro is not None for p in points):
        series.insert(1, ("test, OOD macro", [p.ood_macro for p in points], "tab:orange", "^"))
    for label, stats, color, marker in series:
        mean = np.array([s.mean for s in stats])
        std = np.array([s.std for s in stats])
        ax.plot(x, mean, marker=marker, color=color, label=label)
        if std.any():
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
    # Reference lines: constant over the sweep unless the sweep changes them (budget, fraction).
    # (The oracle, 20-30 points higher, is left out: it would flatten the curves.)
    for key, label, style in (("best_single_cal_balanced_id", "best single (cal.), ID", ":"),):
        values = [p.details.get(key) for p in points]
        if all(v is not None for v in values):
            if len(set(values)) == 1:
                ax.axhline(values[0], color="tab:blue", linestyle=style, linewidth=1, label=label)
            else:
                ax.plot(x, values, color="tab:blue", linestyle=style, linewidth=1, label=label)
    xlabel, default_title = _TITLES.get(sweep.parameter, (sweep.parameter, sweep.parameter))
    if categorical:
        ax.set_xticks(x)
        ax.set_xticklabels([str(p.value) for p in points])
    elif sweep.parameter == "k":
        ax.set_xscale("log", base=2)
        ax.set_xticks(x)
        ax.set_xticklabels([str(p.value) for p in points])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (macro over datasets, ×100)")
    seeds = points[0].seeds if points else ()
    ax.set_title((title or default_title) + f"  (seeds: {', '.join(map(str, seeds))})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return figures.save(fig, path)


def plot_sweeps(result: Evaluation, directory: str | Path) -> dict[str, Path]:
    """Every sweep of ``result`` as ``<directory>/sweep_<parameter>.png``."""
    out = {}
    for name, sweep in result.sweeps.items():
        out[name] = plot_sweep(
            sweep,
            Path(directory) / f"sweep_{name}.png",
            title=f"{_TITLES.get(name, (name, name))[1]}, method {result.method.name}",
        )
    return out


def format_online(result: OnlineEvaluation) -> str:
    """The arms of an online replay: prequential accuracy overall and per window, macros, and
    for a moving stream the regret after the change and the recovery."""
    moving = result.scenario != "iid"
    header = ["arm", "overall", "ID macro", "OOD macro", "explored %"]
    header += ["regret after change", "recovery"] if moving else ["regret"]
    windows = len(next(iter(result.arms.values())).windows)
    header += [f"w{i + 1}" for i in range(windows)]
    body = []
    for arm in result.arms.values():
        row = [arm.name, _pm(arm.accuracy), _pm(arm.id_macro), _pm(arm.ood_macro),
               f"{arm.explored.mean:.1f}", _pm(arm.regret)]  # fmt: skip
        if moving:
            row.append("never" if arm.recovery is None else f"{arm.recovery} q")
        row += [f"{w.mean:.2f}" for w in arm.windows]
        body.append(row)
    lines = _table(header, body)
    lines.append("")
    what = (
        f"scenario {result.scenario}: {result.stream_queries} queries streamed per seed, the "
        f"change at query {result.change_at} ({result.post_change_queries} after it); "
        if moving
        else f"{result.stream_queries} test queries streamed per seed in a seeded order, "
    )
    lines.append(
        what + f"{result.batch} per batch (routed, scored, fed back, refreshed); windows w1..w"
        f"{windows} are consecutive slices of the stream; regret: the hindsight-best model of "
        "each cluster after the change minus the model routed, x100 per query; production "
        f"weight {result.production_weight:g}, half-life {result.half_life.total_seconds():g} s "
        f"(one query per second), change threshold {result.change_threshold:g}, exploration "
        f"{' and '.join(result.explorations)} (share {result.exploration_share:g}"
        + (f", overlap {result.exploration_overlap:g}" if "targeted" in result.explorations else "")
        + f"); method {result.method.name}, {result.algorithm} k={result.k} "
        f"stratify={result.stratify}; seeds {', '.join(map(str, result.seeds))}; "
        f"{result.seconds:.1f} s"
    )
    if moving:
        lines.append(
            "recovery: queries after the change until the arm's regret stays within 20% of "
            "static's gap to the recalibrated reference"
        )
    if result.online_equals_static is not None:
        lines.append(
            "production weight 0: the online arm routed "
            + ("exactly as" if result.online_equals_static else "DIFFERENTLY from")
            + " the static one"
        )
    return "\n".join(lines)


def plot_frontier(frontier: Frontier, path: str | Path, *, title: str | None = None) -> Path:
    """One PNG: the routed points by α (mean ± std over seeds, joined in α order), every single
    model, the non-dominated set ringed, and the best single model's quality and cost as
    reference lines."""
    plt = figures.pyplot()

    g = frontier.group
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    xs = [p.cost[g].mean for p in frontier.points]
    ys = [p.quality[g].mean for p in frontier.points]
    ax.errorbar(
        xs, ys, xerr=[p.cost[g].std for p in frontier.points],
        yerr=[p.quality[g].std for p in frontier.points], color="tab:blue", marker="o",
        linewidth=1.5, capsize=2, label="routed, by trade-off alpha",
    )  # fmt: skip
    for p, x, y in zip(frontier.points, xs, ys, strict=True):
        ax.annotate(f"{p.tradeoff:g}", (x, y), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color="tab:blue")  # fmt: skip
    for s in frontier.singles:
        best = s.model == frontier.best_single
        ax.scatter(s.cost[g], s.quality[g], color="tab:red" if best else "tab:gray",
                   marker="s", zorder=3)  # fmt: skip
        ax.annotate(_short(s.model), (s.cost[g], s.quality[g]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)  # fmt: skip
    kept = set(frontier.non_dominated)
    ring = [(p.cost[g].mean, p.quality[g].mean) for p in frontier.points
            if f"alpha={p.tradeoff:g}" in kept]  # fmt: skip
    ring += [(s.cost[g], s.quality[g]) for s in frontier.singles if s.model in kept]
    if ring:
        ax.scatter(*zip(*ring, strict=True), s=140, facecolors="none", edgecolors="black",
                   linewidths=0.8, label="non-dominated", zorder=4)  # fmt: skip
    best = next(s for s in frontier.singles if s.model == frontier.best_single)
    ax.axhline(best.quality[g], color="tab:red", linestyle=":", linewidth=1,
               label=f"best single (cal.): {_short(best.model)}")  # fmt: skip
    ax.axvline(best.cost[g], color="tab:red", linestyle=":", linewidth=1)
    ax.set_xlabel(f"cost {frontier.cost_unit} (macro over datasets)")
    ax.set_ylabel(f"{GROUP_TITLES.get(g, g)} accuracy (×100)")
    ax.set_title("Quality-cost frontier" + (f", {title}" if title else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figures.save(fig, path)


def _table(
    header: Sequence[str], body: Sequence[Sequence[str]], rule_at: int | None = None
) -> list[str]:
    """``body`` under ``header`` in left-aligned columns: a rule under the header, and another
    before row ``rule_at`` (None: none)."""
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    rule = "  ".join("-" * w for w in widths)
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule]
    for i, r in enumerate(body):
        if i == rule_at:
            lines.append(rule)
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return lines
