"""``avengers datasets add | list | remove``: query collections and their calibration/test split."""

from __future__ import annotations

import dataclasses

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Group
from avengers_store.cli.output import echo_json, emit

from avengers_store.ingest import datasets


@click.group("datasets", cls=Group, aliases=["dataset"])
def command() -> None:
    """Load, list and remove datasets (benchmarks or query collections).

    \b
    Example:
      avengers datasets add gsm8k gsm8k.jsonl --text-col question --answer-col answer \\
          --task-type math --category math
      avengers datasets list
    """


@command.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--text-col", default="text", show_default=True, help="Column holding the query.")
@options.id_col
@options.answer_col
@click.option(
    "--task-type",
    default="text",
    show_default=True,
    help="math, multiple_choice (or mc), code or text: picks prompt, extractor and grader.",
)
@click.option("--category", help="Free-form grouping, e.g. math, code, knowledge.")
@click.option(
    "--ood", is_flag=True, help="Out-of-distribution: routed and evaluated, never clustered."
)
@options.split_col
@options.split_map(
    help="Split values to calibration, test or skip, e.g. train=calibration,dev=skip,test=test "
    "(default: train=calibration,calibration=calibration,test=test)."
)
@options.calibration_fraction
@options.split_seed
@options.replace(help="Reload NAME if it exists (drops its queries, embeddings and outcomes).")
@options.json_output
def add_cmd(
    name,
    file,
    text_col,
    id_col,
    answer_col,
    task_type,
    category,
    ood,
    split_col,
    split_map,
    calibration_fraction,
    seed,
    replace,
    as_json,
) -> None:
    """Load the queries of FILE (JSONL, CSV or Parquet) as dataset NAME, in one transaction.

    Rows with the same normalised text become one query. A bad row (missing text, wrong type,
    unknown split value) stops the load with the file, row and column, and changes nothing.

    \b
    Example:
      avengers datasets add mmlu mmlu.parquet --text-col question --id-col id \\
          --task-type mc --split-col split --split-map train=calibration,test=test
      avengers datasets add faq faq.csv --calibration-fraction 0.7 --seed 42
    """
    report = datasets.add_dataset(
        name,
        file,
        text_col=text_col,
        id_col=id_col,
        answer_col=answer_col,
        task_type=task_type,
        category=category,
        ood=ood,
        split_col=split_col,
        split_map=split_map,
        calibration_fraction=calibration_fraction,
        seed=seed,
        replace=replace,
    )
    if as_json:
        echo_json(report)
        return
    d = report.dataset
    click.echo(
        f"dataset {d.name}: {d.queries} queries ({d.calibration} calibration, {d.test} test) "
        f"from {report.rows_read} rows; {d.merged_rows} duplicate row(s) merged within a split"
        + (
            f"; {d.in_both_splits} text(s) in both splits, kept as a query in each"
            if d.in_both_splits
            else ""
        )
        + "".join(f"; skipped {n} row(s) with {k}" for k, n in report.rows_skipped.items())
        + f" [{report.seconds:.1f}s]"
    )


@command.command("list")
@options.output_format
def list_cmd(fmt: str) -> None:
    """List datasets with their query counts per split.

    \b
    Example:
      avengers datasets list --csv > datasets.csv
    """
    rows = [dataclasses.asdict(d) for d in datasets.list_datasets()]
    columns = [
        "name",
        "n_queries",
        "n_calibration",
        "n_test",
        "is_ood",
        "category",
        "split_seed",
        "source",
    ]
    emit(rows, fmt, None if fmt == "json" else columns)


@command.command("remove")
@click.argument("name")
@options.yes
def remove_cmd(name: str, yes: bool) -> None:
    """Delete dataset NAME with its queries, embeddings and outcomes (profiles are refreshed).

    \b
    Example:
      avengers datasets remove faq --yes
    """
    if not yes:
        click.confirm(f"Delete dataset {name} with its queries and outcomes?", abort=True)
    deleted = datasets.remove_dataset(name)
    click.echo(f"removed dataset {name} and its {deleted} queries")
