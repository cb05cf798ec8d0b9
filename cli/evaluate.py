"""``avengers evaluate``: replay the stored outcomes through the routing SQL (no model is called)."""

from __future__ import annotations

import sys

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.output import echo_json
from avengers_store.cli.param_types import CommaList, Duration, ScenarioSpec

from avengers_store.evaluation.online import (
    DEFAULT_BATCH,
    DEFAULT_WINDOWS,
    POLICIES,
    evaluate_online,
)
from avengers_store.evaluation.replay import DEFAULT_SEEDS, STRATEGIES, evaluate
from avengers_store.evaluation.report import format_online, format_tables
from avengers_store.evaluation.scenarios import IID
from avengers_store.evaluation.shadow_replay import evaluate_shadow
from avengers_store.ingest.model_pool import list_models


@click.command("evaluate", cls=Command)
@options.k()
@options.algorithm
@options.stratify(
    default=None,
    help="Fit each calibration dataset on its own (dataset) or all at once (none). "
    "Default: dataset; none with --method paper.",
)
@click.option("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), show_default=True,
              type=CommaList(int), help="One calibration per seed.")  # fmt: skip
@options.top_n(
    default=1,
    help="Models routed per query; the rank-1 model is scored (with > 1 the best outcome among "
    "them is reported too, an upper bound for any vote).",
)
@click.option("--strategy", type=click.Choice(STRATEGIES), default="best", show_default=True,
              help="best: score the routed model. model-switch needs sampled answers and is "
              "refused here (use `avengers ask`).")  # fmt: skip
@options.method
@click.option("--datasets", type=CommaList(str),
              help="Test datasets to report (comma-separated; default: all with test queries).")  # fmt: skip
@click.option("--ood-macro", type=CommaList(str),
              help="OOD datasets averaged into ood_macro (default: all OOD datasets; the full "
              "OOD set is then reported as ood_all too).")  # fmt: skip
@click.option("--sweep-k", type=CommaList(int),
              help="Also sweep k, e.g. 1,4,16,64,256,1024 (test and calibration accuracy).")  # fmt: skip
@click.option("--algorithms", type=CommaList(str),
              help="Also compare clustering algorithms, e.g. kmeans,ward,gmm,spectral,birch.")  # fmt: skip
@click.option("--budgets", type=CommaList(int),
              help="Also sweep the number of models kept by s(m), e.g. 1,2,3,4,5,6,7.")  # fmt: skip
@click.option("--calibration-fractions", type=CommaList(float),
              help="Also re-draw each non-OOD dataset's split at these fractions, e.g. "
              "0.05,0.1,0.25,0.5,0.75,0.95.")  # fmt: skip
@click.option("--sweep-seeds", type=CommaList(int),
              help="Seeds of the sweeps (default: the first of --seeds).")  # fmt: skip
@click.option("--tradeoffs", type=CommaList(float),
              help="Also route the test queries at each quality-cost trade-off, e.g. "
              "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1: the frontier, the single models, the "
              "non-dominated set and two headlines (every active model needs a price).")  # fmt: skip
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Write one PNG per sweep (and frontier.png) into this directory.")  # fmt: skip
@click.option("--frontier-plot", type=click.Path(dir_okay=False),
              help="Where --tradeoffs draws the frontier (default: frontier.png in --plot's "
              "directory, else in the current one).")  # fmt: skip
@click.option("--online", is_flag=True,
              help="Stream the test split instead, feeding back each routed model's recorded "
              "outcome (prequential), against the static router and the best single model.")  # fmt: skip
@click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True,
              help="--online: queries routed between two refreshes of the production profiles.")  # fmt: skip
@click.option("--windows", type=int, default=DEFAULT_WINDOWS, show_default=True,
              help="--online: accuracy reported per this many slices of the stream.")  # fmt: skip
@click.option("--production-weight", type=float,
              help="--online: weight of a fed-back outcome (default: the served clustering's).")  # fmt: skip
@click.option("--half-life", type=Duration(),
              help="--online: half-life on the stream's clock, one query per second (default: "
              "the served clustering's).")  # fmt: skip
@click.option("--change-threshold", type=float,
              help="--online: z-score of the update rule's change test (default: the served "
              "clustering's).")  # fmt: skip
@click.option("--exploration", type=CommaList(str),
              help=f"--online: the explored arms, from {', '.join(POLICIES)} (default: "
              "targeted).")  # fmt: skip
@click.option("--exploration-share", type=float,
              help="--online: share of queries explored (targeted's cap, default 0.02; "
              "epsilon's, default the served clustering's).")  # fmt: skip
@click.option("--exploration-overlap", type=float,
              help="--online: targeted: chance of beating the leader that makes a candidate "
              "plausible (default 0.2).")  # fmt: skip
@click.option("--scenario", type=ScenarioSpec(), default="iid", show_default=True,
              help="--online: a stream that moves: degrade:MODEL@FRACTION[,as=OTHER|,flip=RATE], "
              "new-model:MODEL[@FRACTION], shift:DATASET[@FRACTION][,mix=SHARE] "
              "(docs/evaluation.md).")  # fmt: skip
@click.option("--shadow", "shadow", metavar="NAME",
              help="--online: stream the test split as production (epsilon exploration at "
              "--exploration-share, default 0.2) with the stored policy NAME shadowed, and print "
              "the shadow report's estimates beside the truth.")  # fmt: skip
@click.option("--shadow-plot", type=click.Path(dir_okay=False),
              help="--shadow: the last seed's report picture, to this PNG.")  # fmt: skip
@options.json_output
def command(
    k, algorithm, stratify, seeds, top_n, strategy, method, datasets, ood_macro, sweep_k,
    algorithms, budgets, calibration_fractions, sweep_seeds, tradeoffs, plot_dir, frontier_plot,
    online, batch, windows, production_weight, half_life, change_threshold, exploration,
    exploration_share, exploration_overlap, scenario, shadow, shadow_plot, as_json,
) -> None:  # fmt: skip
    """Replay the stored outcomes to measure the routing; no model is called.

    Per seed: calibrate (cluster + profile) on the calibration split, route every test query
    through the routing SQL the client uses, score the routed model's recorded outcome, and
    compare with the best single model, the best model per dataset, the per-query oracle and a
    random router. OOD datasets are routed, never clustered, and reported separately.

    With --online the test split is streamed instead (the loop measured): each batch is routed
    with the profiles as they stand, scored, and only the routed model's recorded outcome is fed
    back as production feedback before the next batch. --scenario makes the stream move (a model
    degrades, a model joins, a dataset calibration never saw arrives) and reports each arm's
    regret after the change and how fast it recovers.

    Only active models are replayed, as only they are routed to: after `avengers models
    select --apply` the figures are the selected pool's (the output names the models left out).

    Runs in one transaction that is rolled back: the served clustering, profiles and model
    flags are unchanged afterwards.

    \b
    Example:
      avengers evaluate
      avengers evaluate --method paper --seeds 42 --json
      avengers evaluate --ood-macro math_prealgebra,mbpp,ceval --json
      avengers evaluate --stratify none      # one fit over all calibration datasets
      avengers evaluate --sweep-k 1,4,16,64,256,1024 --plot plots/
      avengers evaluate --seeds 42 --algorithms kmeans,ward,gmm,spectral,birch --plot plots/
      avengers evaluate --seeds 42 --budgets 1,2,3,4,5,6,7 --plot plots/
      avengers evaluate --online --json                       # the loop, on replay
      avengers evaluate --online --production-weight 0        # must equal the static router
      avengers evaluate --online --scenario degrade:meta-llama/Meta-Llama-3-8B@0.3,flip=0.5
      avengers evaluate --online --scenario shift:gsm8k --batch 64
      avengers evaluate --tradeoffs 0,0.25,0.5,0.75,1 --json   # writes frontier.png
      avengers evaluate --online --shadow paper --seeds 42,999   # shadow report vs truth
    """
    if online and shadow:
        _shadow_replay(shadow, k, seeds, exploration_share, method, shadow_plot, as_json)
        return
    if online:
        streamed = evaluate_online(
            k=k,
            algorithm=algorithm,
            seeds=seeds,
            batch=batch,
            windows=windows,
            production_weight=production_weight,
            half_life=half_life,
            change_threshold=change_threshold,
            exploration=exploration,
            exploration_share=exploration_share,
            exploration_overlap=exploration_overlap,
            scenario=scenario or IID,
            method=method,
            stratify=stratify,
            datasets=datasets,
            ood_macro=ood_macro,
            progress=sys.stderr.isatty(),
        )
        if as_json:
            echo_json(streamed.to_dict())
        else:
            click.echo(format_online(streamed))
        return
    result = evaluate(
        k=k,
        algorithm=algorithm,
        seeds=seeds,
        top_n=top_n,
        strategy=strategy,
        method=method,
        stratify=stratify,
        datasets=datasets,
        ood_macro=ood_macro,
        sweep_k=sweep_k,
        algorithms=algorithms,
        budgets=budgets,
        calibration_fractions=calibration_fractions,
        sweep_seeds=sweep_seeds,
        tradeoffs=tradeoffs,
        plot_dir=plot_dir,
        frontier_plot=frontier_plot
        or (None if plot_dir else ("frontier.png" if tradeoffs else None)),
        progress=sys.stderr.isatty(),
    )
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(format_tables(result))
        click.echo(_models_line(result.models))


def _models_line(replayed: tuple[str, ...]) -> str:
    """Which models the replay chose among: the active ones only, as the router does. Said in
    the output because a pool narrowed by `models select --apply` scores lower than the full
    pool's published figures."""
    inactive = [m.name for m in list_models() if not m.active]
    line = f"models: the {len(replayed)} active models ({', '.join(replayed)})"
    if inactive:
        line += (
            f"; {len(inactive)} inactive, left out ({', '.join(inactive)}); to replay with "
            f"them: avengers models activate {' '.join(inactive)}"
        )
    return line


def _shadow_replay(name, k, seeds, share, method, plot, as_json) -> None:
    found = evaluate_shadow(
        name,
        k=k,
        seeds=[int(x) for x in seeds],
        share=0.2 if share is None else share,
        method=method,
        plot=plot,
    )
    rows = []
    for s in found:
        r, dr, ips = s.summary, s.summary.dr_estimate, s.summary.ips_estimate
        rows.append({
            "seed": s.seed, "requests": r.requests, "agreement (store)": r.agreement,
            "agreement (view)": s.agreement_view, "agreement (direct)": s.agreement_direct,
            "truth": s.truth,
            "ips": None if ips is None else [ips.value, ips.low, ips.high],
            "dr": None if dr is None else [dr.value, dr.low, dr.high],
            "dr covers truth": s.covered, "verdict": s.verdict, "overlap": r.overlap,
            "support": r.support, "disagreeing rewarded": r.disagreeing_rewarded,
        })  # fmt: skip
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(
            f"seed {row['seed']}: {row['requests']} requests, agreement "
            f"{100 * row['agreement (store)']:.2f}% (view {100 * row['agreement (view)']:.2f}%, "
            f"direct {100 * row['agreement (direct)']:.2f}%); "
            f"shadow - served: truth {row['truth']:+.4f}, "
            + (
                f"IPS {row['ips'][0]:+.4f} [{row['ips'][1]:+.4f}, {row['ips'][2]:+.4f}], "
                f"DR {row['dr'][0]:+.4f} [{row['dr'][1]:+.4f}, {row['dr'][2]:+.4f}] "
                f"{row['verdict']}"
                if row["dr"] is not None
                else f"declined: {row['overlap']}"
            )
        )
    counts = {v: sum(1 for s in found if s.verdict == v) for v in ("covers", "misses", "declined")}
    click.echo(
        f"doubly-robust interval covers the truth in {counts['covers']} of {len(found)} seeds, "
        f"misses it in {counts['misses']}; the report declined to estimate in "
        f"{counts['declined']}"
    )
