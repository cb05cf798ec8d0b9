"""``avengers outcomes import``: per-query results of models, from a file."""

from __future__ import annotations

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Group
from avengers_store.cli.output import echo_json

from avengers_store.ingest import outcomes


@click.group("outcomes", cls=Group)
def command() -> None:
    """Per-query outcomes of models (score in [0,1]; a missing outcome is never a 0).

    \b
    Example:
      avengers outcomes import results.csv --dataset gsm8k
    """


@command.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--dataset", required=True, metavar="NAME", help="Dataset whose queries the rows score."
)
@click.option(
    "--wide-prefix", help="Wide shape: one score column <prefix><model> per model, e.g. 'acc|'."
)
@click.option("--id-col", help="Match queries by this id column (the dataset's --id-col).")
@click.option(
    "--text-col",
    help="Match queries by text in this column (default: text, query or "
    "question, else ids in query_id, external_id or id).",
)
@click.option("--model-col", default="model", show_default=True, help="Long shape: model name.")
@click.option("--score-col", default="score", show_default=True, help="Long shape: score in [0,1].")
@click.option("--answer-col", help="The model's answer [default: answer, if present].")
@click.option("--samples-col", help="Samples the score averages [default: samples, if present].")
@click.option("--tokens-in-col", help="Prompt tokens [default: tokens_in, if present].")
@click.option("--tokens-out-col", help="Completion tokens [default: tokens_out, if present].")
@click.option("--cost-col", help="Cost [default: cost, if present].")
@click.option("--latency-col", help="Latency in ms [default: latency_ms, if present].")
@click.option("--create-models", is_flag=True, help="Add models not yet in the pool.")
@options.json_output
def import_cmd(
    file,
    dataset,
    wide_prefix,
    id_col,
    text_col,
    model_col,
    score_col,
    answer_col,
    samples_col,
    tokens_in_col,
    tokens_out_col,
    cost_col,
    latency_col,
    create_models,
    as_json,
) -> None:
    """Import outcomes from FILE (JSONL, CSV or Parquet) for the queries of a dataset.

    Long shape: one row per query and model (query, model, score[, answer, samples, tokens_in,
    tokens_out, cost, latency_ms]). Wide shape (--wide-prefix): one row per query, one column per
    model. Empty or NaN scores mean "not evaluated" and write nothing. Re-importing replaces the
    earlier outcome of each query and model. One transaction; profiles are refreshed before commit.

    \b
    Example:
      avengers outcomes import runs.jsonl --dataset gsm8k --id-col qid --create-models
      avengers outcomes import table.parquet --dataset mmlu --text-col question --wide-prefix 'acc|'
    """
    report = outcomes.import_outcomes(
        file,
        dataset=dataset,
        wide_prefix=wide_prefix,
        id_col=id_col,
        text_col=text_col,
        model_col=model_col,
        score_col=score_col,
        answer_col=answer_col,
        samples_col=samples_col,
        tokens_in_col=tokens_in_col,
        tokens_out_col=tokens_out_col,
        cost_col=cost_col,
        latency_col=latency_col,
        create_models=create_models,
    )
    if as_json:
        echo_json(report)
        return
    created = (
        f"; created model(s) {', '.join(report.models_created)}" if report.models_created else ""
    )
    click.echo(
        f"{report.outcomes_written} outcome(s) written for {len(report.models)} model(s) on "
        f"dataset {report.dataset} from {report.rows_read} rows; {report.not_evaluated} empty "
        f"cell(s) left not evaluated{created}"
    )
