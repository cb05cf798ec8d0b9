"""``avengers models evaluate``: incremental evaluation of one model on the calibration queries."""

from __future__ import annotations

import dataclasses
import sys

import click
from avengers_store.cli.models import command as models
from avengers_store.cli.output import echo_json

from avengers_store.calibration.onboarding import DEFAULT_SAMPLES, evaluate_model


@models.command("evaluate")
@click.argument("name")
@click.option("--samples", type=click.IntRange(min=1), default=DEFAULT_SAMPLES, show_default=True,
              help="Completions per query; the score is their mean grade.")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=0), help="Evaluate at most N queries this run.")
@click.option("--dataset", help="Only calibration queries of this dataset.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Queries in flight at once.")  # fmt: skip
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Cap on each completion's length.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate_cmd(name, samples, limit, dataset, concurrency, max_tokens, as_json) -> None:
    """Run model NAME through its endpoint on the stored calibration queries it has no outcome
    for, grade the samples against the reference answers, store the outcomes and refresh the
    profiles (no re-clustering). Commits in batches: rerun to resume after an interruption.

    \b
    Example:
      avengers models add qwen2.5-7b --endpoint http://vllm-qwen:8000/v1
      avengers models evaluate qwen2.5-7b --samples 10 --concurrency 8
      avengers models evaluate qwen2.5-7b --dataset gsm8k --limit 200 --json
    """
    report = evaluate_model(
        name,
        samples=samples,
        limit=limit,
        dataset=dataset,
        concurrency=concurrency,
        max_tokens=max_tokens,
        progress=sys.stderr.isatty(),
    )
    if as_json:
        echo_json(dataclasses.asdict(report))
        return
    mean = f"{report.mean_score:.3f}" if report.mean_score is not None else "n/a"
    cost = f", cost {report.cost:.4f}" if report.cost is not None else ""
    click.echo(
        f"{name}: {report.evaluated} outcomes written (mean score {mean}), "
        f"{report.failed} failed, {report.ungradable} without a reference skipped; "
        f"{report.tokens_in + report.tokens_out:,} tokens{cost} in {report.seconds:.1f} s"
    )
