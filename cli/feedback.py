"""``avengers feedback``: score answered requests by route id, one at a time or from a file."""

from __future__ import annotations

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Group
from avengers_store.cli.output import echo_json

from avengers_store.client import AvengersClient
from avengers_store.production import feedback


@click.group("feedback", cls=Group)
def command() -> None:
    """Production outcomes: a score in [0,1] for the answer of a routed request, by route id.

    Each answer has a route id (Answer.route_id, the gateway's x-avengers-route-id header). A
    score counts for the model that answered (or a named model the request sampled) in the
    request's cluster, beside the calibration outcomes; a second score from the same source
    replaces the first.

    \b
    Example:
      avengers feedback add 0b7e6c1e-2f0a-4a57-9a43-5f0d7e1f9c11 1.0
      avengers feedback import thumbs.csv
    """


@command.command("add")
@click.argument("route_id")
@click.argument("score", type=float)
@click.option("--model", help="The model scored (default: the one whose answer was returned).")
@click.option("--source", default=feedback.DEFAULT_SOURCE, show_default=True,
              help="Who scored it; one score per route and source.")  # fmt: skip
@options.json_output
def add_cmd(route_id: str, score: float, model: str | None, source: str, as_json: bool) -> None:
    """Score the answer of request ROUTE_ID with SCORE in [0,1]; routing uses it at once.

    \b
    Example:
      avengers feedback add 0b7e6c1e-2f0a-4a57-9a43-5f0d7e1f9c11 1.0
      avengers feedback add 0b7e6c1e-2f0a-4a57-9a43-5f0d7e1f9c11 0 --model qwen2.5-7b --source grader
    """
    with AvengersClient() as client:
        stored = client.feedback(route_id, score, model, source)
    if as_json:
        echo_json(stored)
        return
    verb = "replaced the earlier score" if stored.replaced else "stored"
    click.echo(f"{stored.model} scored {stored.score:g} by {stored.source} ({verb})")


@command.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--route-id-col", default="route_id", show_default=True, help="Route id column.")
@click.option("--score-col", default="score", show_default=True, help="Score column, in [0,1].")
@click.option("--model-col",
              help="Model column [default: model, if present]; empty: the model that answered.")  # fmt: skip
@click.option("--source-col", help="Source column [default: source, if present].")
@click.option(
    "--at-col", help="When each outcome was observed [default: at, if present; else now]."
)
@click.option("--source", default=feedback.DEFAULT_SOURCE, show_default=True,
              help="Source of rows without one.")  # fmt: skip
@options.json_output
def import_cmd(file, route_id_col, score_col, model_col, source_col, at_col, source, as_json):
    """Import feedback rows from FILE (JSONL, CSV or Parquet) in one transaction.

    One row per scored request: its route id, the score and, optionally, the model, the source
    and the time. A bad row (an unknown route id, a score outside [0,1], a model the request did
    not sample) stops the import naming file, row and column, and nothing is stored. Routing
    uses the rows as soon as the import commits.

    \b
    Example:
      avengers feedback import thumbs.jsonl
      avengers feedback import graded.parquet --score-col correct --source grader
    """
    report = feedback.import_feedback(
        file,
        route_id_col=route_id_col,
        score_col=score_col,
        model_col=model_col,
        source_col=source_col,
        at_col=at_col,
        source=source,
    )
    if as_json:
        echo_json(report)
        return
    repeated = (
        f"; {report.duplicates_in_file} later row(s) of the file replaced earlier ones"
        if report.duplicates_in_file
        else ""
    )
    click.echo(
        f"{report.stored} feedback row(s) stored from {report.rows_read} rows of {report.path} "
        f"({report.replaced} replaced earlier feedback{repeated}) in {report.seconds:.2f} s"
    )
