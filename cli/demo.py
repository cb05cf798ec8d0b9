"""``avengers demo``: the offline recipe end to end on the bundled real sample."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.output import echo_json, echo_table

from avengers_store.demo import DEFAULT_BUDGET, DEFAULT_K, EMBEDDER, run_demo


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _shortened(text: str, width: int = 72) -> str:
    """One line of at most ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3].rstrip() + "..."


@click.command("demo", cls=Command)
@options.k(default=DEFAULT_K)
@click.option(
    "--budget",
    type=int,
    default=DEFAULT_BUDGET,
    show_default=True,
    help="Models to select by s(m).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Where to write the heatmap [default: $AVENGERS_HOME/demo/profiles.png].",
)
@options.json_output
def command(k, budget, plot, as_json) -> None:
    """Run the recipe offline on a bundled sample: profiles, selected models, routes, a replay.

    The sample is real (LLMRouter: 14 tasks, 9 models, 1,508 queries, MIT licensed): its
    precomputed embeddings are imported and clustered, then the capability profiles and the
    models chosen by the paper's s(m) are printed; five of its test questions are routed
    (cluster, model and why) and its test split is replayed (routed vs best single model vs
    oracle, one seed, rolled back). No model server is needed. Uses the embedded store unless
    AVENGERS_DATABASE_URL is set; a rerun reuses what is already there.

    \b
    Example:
      avengers demo
      avengers demo --k 32 --budget 4 --plot profiles.png
    """
    started = time.perf_counter()
    result = run_demo(k=k, budget=budget, plot=plot, progress=sys.stderr.isatty())
    if as_json:
        echo_json(dataclasses.asdict(result))
        return
    click.echo(f"store:      {result.url}")
    click.echo(
        f"data:       {'loaded' if result.loaded else 'already loaded:'} {result.datasets} "
        f"datasets, {result.queries:,} queries (LLMRouter sample, MIT; see "
        "avengers_store/data/README.md)"
    )
    click.echo(
        f"embeddings: {result.vectors_imported:,} precomputed {EMBEDDER} vectors imported"
        if result.vectors_imported
        else f"embeddings: every query already has a vector ({EMBEDDER})"
    )
    c = result.clustering
    click.echo(
        f"clustering: {c.id} ({c.algorithm}, k={c.k}, seed {c.seed}) on {c.n_queries:,} "
        f"calibration queries{' (reused)' if result.reused_clustering else ''}"
    )
    click.echo("")
    click.echo("Capability profiles: mean score of each model on a cluster's calibration queries")
    rows = []
    for s in result.clusters:
        total = sum(n for _, n in s.top_datasets) or 1
        tasks = ", ".join(
            f"{name.removeprefix('llmrouter/')} {100 * n // total}%"
            for name, n in s.top_datasets[:2]
        )
        best, second = s.ranking[0], s.ranking[1] if len(s.ranking) > 1 else ("", float("nan"))
        rows.append(
            {
                "cluster": s.cluster,
                "n": s.size,
                "main tasks": tasks,
                "best model": f"{_short(best[0])} {best[1]:.2f}",
                "runner-up": f"{_short(second[0])} {second[1]:.2f}" if second[0] else "",
            }
        )
    echo_table(rows)
    click.echo("")
    sel = result.selection
    click.echo(f"Model-set selection, budget {sel.budget}: s(m) = sum over clusters of 1/rank")
    echo_table(
        [
            {
                "rank": s.selection_rank,
                "model": s.model,
                "s(m)": s.selection_score,
                "clusters won": s.clusters_won,
                "overall": s.overall_score,
                "selected": "yes" if s.selected else "",
            }
            for s in sel.scores
        ]
    )
    click.echo(f"selected:   {', '.join(sel.selected)}")
    click.echo(_applied(sel.selected, result.active_models, sel.budget, _command_name()))
    click.echo(f"heatmap:    {result.plot}")
    click.echo("")
    click.echo(
        f"Routing {len(result.routed)} test questions with AvengersClient.route_many on their "
        "stored vectors"
    )
    click.echo("(pooled score: a model's mean outcome over the nearest clusters, by distance)")
    for i, q in enumerate(result.routed, 1):
        click.echo(f"{i}. [{q.dataset.removeprefix('llmrouter/')}] {_shortened(q.text)}")
        click.echo(f"   -> cluster {q.cluster}, {_short(q.model)}: {q.why}")
    r = result.replay
    click.echo("")
    click.echo(
        f"Replay of the sample's {r.queries} test queries ({r.datasets} tasks; seed {r.seed}, "
        f"k={r.k}; rolled back, no model called), macro x100:"
    )
    click.echo(
        f"replay:     routed {r.routed:.2f} | best single model {r.best_single.score:.2f} "
        f"({_short(r.best_single.model)}) | oracle {r.oracle:.2f}"
    )
    click.echo(f"done in {time.perf_counter() - started:.1f}s")
    click.echo("")
    avengers = _command_name()
    click.echo("Next, with the same store:")
    click.echo(f'  {avengers} route "What is 7*6?" --top-n 3')
    click.echo(f"  {avengers} profile --cluster 0")
    click.echo(f"  {avengers} models select --budget {sel.budget} --apply")
    if avengers != "avengers":
        bin_dir = os.path.dirname(avengers)
        click.echo(f"(or put avengers on your PATH first: . {bin_dir}/activate)")


def _applied(selected: tuple[str, ...], active: tuple[str, ...], budget: int, avengers: str) -> str:
    """Whether the routes and replay below use the selection or the whole active pool."""
    if set(active) == set(selected):
        return f"applied:    yes: routing uses these {len(active)} models"
    return (
        f"applied:    no: the routes and the replay below use all {len(active)} active models; "
        f"apply it with `{avengers} models select --budget {budget} --apply`"
    )


def _command_name() -> str:
    """How to run `avengers` again from here: plain when it is on PATH, else the path this run
    was started by (e.g. .venv/bin/avengers after `make demo`), so the hints run as printed."""
    invoked = sys.argv[0] if sys.argv and sys.argv[0] else "avengers"
    on_path = shutil.which("avengers")
    if on_path and os.path.realpath(on_path) == os.path.realpath(shutil.which(invoked) or invoked):
        return "avengers"
    if os.path.basename(invoked) != "avengers" or not os.path.exists(invoked):
        return "avengers"
    relative = os.path.relpath(invoked)
    shown = relative if not relative.startswith("..") else os.path.abspath(invoked)
    return shown if os.sep in shown else f".{os.sep}{shown}"
