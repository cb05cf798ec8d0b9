"""``avengers route``: which cluster and models a query goes to (no model is called)."""

from __future__ import annotations

import json
from typing import Any

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.inputs import read_jsonl
from avengers_store.cli.output import echo_json

from avengers_store.client import AvengersClient


@click.command("route", cls=Command)
@click.argument("text", required=False)
@options.top_n(default=1, help="How many ranked models to show.")
@options.jsonl_file(
    help='JSONL of {"text": ...} or {"vector": [...]} per line (- for stdin): routed in one '
    "statement, one JSON decision per line out."
)
@options.routing
@options.json_output
def command(
    text: str | None, top_n: int, file_: str | None, routing: dict[str, Any], as_json: bool
) -> None:
    """Route TEXT: nearest cluster of the active clustering and the best active models.

    Text is embedded with the serving space's embedder; nothing is sent to a model. With
    --tradeoff or --max-cost every candidate shows its expected cost of one answer (prices x
    tokens, or measured costs; docs/cost-aware-routing.md). The decision says how novel the
    query is against the calibration queries (ood: true beyond the clustering's threshold) and
    what --ood-policy did about it.

    \b
    Example:
      avengers route "What is the derivative of x^3?" --top-n 3
      avengers route "Who wrote Hamlet?" --json
      avengers route "Who wrote Hamlet?" --method paper
      avengers route "Translate 'bonjour' to Klingon" --ood-policy best-overall --json
      avengers route "Who wrote Hamlet?" --top-n 3 --tradeoff 0.3 --json
      avengers route "Who wrote Hamlet?" --max-cost 0.0001
      avengers route --file questions.jsonl > decisions.jsonl
    """
    if (text is None) == (file_ is None):
        raise click.UsageError("give either TEXT or --file")
    with AvengersClient() as client:
        if file_ is not None:
            queries = read_jsonl(file_, allow_vectors=True)
            decisions = client.route_many(queries, top_n, **routing)
            for i, decision in enumerate(decisions):
                click.echo(json.dumps({"line": i + 1, **decision.to_dict()}, ensure_ascii=False))
            return
        decision = client.route(text, top_n, **routing)
    if as_json:
        echo_json(decision.to_dict())
    else:
        click.echo(decision.explain())
