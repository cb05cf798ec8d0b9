"""``avengers load-table``: a wide research table (query, dataset, split, one outcome column per
model) as datasets, queries and outcomes in one go."""

from __future__ import annotations

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.output import echo_json, echo_table
from avengers_store.cli.param_types import KeyValues

from avengers_store.ingest.wide_tables import load_table


@click.command("load-table", cls=Command)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--dataset-col", required=True, metavar="COLUMN", help="Column naming each row's dataset."
)
@click.option("--text-col", required=True, metavar="COLUMN", help="Column holding the query.")
@click.option(
    "--outcome-prefix",
    required=True,
    metavar="PREFIX",
    help="Outcome columns are <prefix><model>, e.g. 'acc|'.",
)
@options.split_col
@options.split_map(
    help="Split values to calibration, test or skip, e.g. train=calibration,test=test,extra=skip. "
    "Every value must be mapped."
)
@click.option(
    "--ood-split",
    "ood_splits",
    multiple=True,
    help="Split value marking out-of-distribution rows (repeatable): a dataset all of "
    "whose rows have it is never clustered.",
)
@options.id_col
@options.answer_col
@click.option("--task-type", help="Task type of rows not otherwise typed [default: text].")
@click.option(
    "--task-type-col", help="Column whose values are task types (or mapped by --task-type-map)."
)
@click.option(
    "--task-type-map",
    type=KeyValues(),
    help="Values of --task-type-col to task types, e.g. mc=multiple_choice,gen=math.",
)
@click.option(
    "--dataset-task-type",
    "dataset_task_types",
    type=KeyValues(),
    help="Task type per dataset, e.g. gsm8k=math,humaneval=code,mmlu=mc (wins over the others).",
)
@options.calibration_fraction
@options.split_seed
@click.option(
    "--create-models/--no-create-models",
    default=True,
    show_default=True,
    help="Add models not yet in the pool (outcomes only until `models add` gives an endpoint).",
)
@options.replace(
    help="Reload datasets that already exist (drops their queries, embeddings and outcomes)."
)
@click.option(
    "--dataset-prefix",
    default="",
    help="Put before every dataset name, e.g. 'llmrouter/', when another table already loaded "
    "datasets of the same names.",
)
@options.json_output
def command(
    file,
    dataset_col,
    text_col,
    outcome_prefix,
    split_col,
    split_map,
    ood_splits,
    id_col,
    answer_col,
    task_type,
    task_type_col,
    task_type_map,
    dataset_task_types,
    calibration_fraction,
    seed,
    create_models,
    replace,
    dataset_prefix,
    as_json,
) -> None:
    """Load datasets, queries and outcomes from one wide FILE, in one transaction.

    FILE is JSONL, CSV or Parquet with one row per query and one outcome column per model.

    Empty or NaN outcome cells are "not evaluated" (no row, never 0); a value outside [0,1], a
    missing text or an unmapped split value stops the load, names the row and column, and
    changes nothing. Duplicate texts within a dataset become one query (outcomes averaged).

    \b
    Example:
      avengers load-table routerdc_7models.parquet --dataset-col benchmark \\
        --text-col question --outcome-prefix 'acc|' --split-col split \\
        --split-map train=calibration,test=test,ood_test=test,extra_train=skip,extra_test=skip \\
        --ood-split ood_test --dataset-task-type \\
        mmlu=mc,cmmlu=mc,arc_challenge=mc,ceval=mc,gsm8k=math,math_prealgebra=math,humaneval=code,mbpp=code,humanevalpack_js=code
    """
    report = load_table(
        file,
        dataset_col=dataset_col,
        text_col=text_col,
        split_col=split_col,
        split_map=split_map,
        ood_splits=ood_splits,
        outcome_prefix=outcome_prefix,
        id_col=id_col,
        answer_col=answer_col,
        task_type=task_type,
        task_type_col=task_type_col,
        task_type_map=task_type_map,
        dataset_task_types=dataset_task_types,
        calibration_fraction=calibration_fraction,
        seed=seed,
        create_models=create_models,
        replace=replace,
        dataset_prefix=dataset_prefix,
    )
    if as_json:
        echo_json(report)
        return
    echo_table(
        [
            {
                "dataset": d.name,
                "rows": d.rows,
                "queries": d.queries,
                "calibration": d.calibration,
                "test": d.test,
                "merged": d.merged_rows,
                "in_both_splits": d.in_both_splits,
                "ood": d.is_ood,
            }
            for d in report.datasets
        ]
    )
    skipped = "".join(f"; skipped {n} with {k}" for k, n in report.rows_skipped.items())
    click.echo(
        f"\n{report.rows_read} rows read{skipped}; {report.queries_inserted} queries in "
        f"{len(report.datasets)} datasets ({report.merged_duplicates} duplicate rows merged "
        f"within a split; {report.in_both_splits} texts in both splits, kept in each); "
        f"{report.outcomes_written} outcomes for {len(report.models)} models "
        f"({len(report.models_created)} new); {report.not_evaluated} cells not evaluated "
        f"[{report.seconds:.1f}s]"
    )
