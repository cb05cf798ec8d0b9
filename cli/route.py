"""``avengers route``: which cluster and models a query goes to (no model is called)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from avengers_store.cli.output import echo_json

from avengers_store.client import AvengersClient
from avengers_store.errors import InputError
from avengers_store.routing import METHODS


def read_jsonl(path: str, *, allow_vectors: bool) -> list[Any]:
    """``{"text": ...}`` (or ``{"vector": [...]}`` when allowed) per line; blank lines skipped."""
    stream = sys.stdin if path == "-" else None
    name = "stdin" if path == "-" else path
    try:
        lines = stream.read().splitlines() if stream else Path(path).read_text("utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", location=name) from exc
    items: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON ({exc.msg})", location=where) from exc
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            items.append(record["text"])
        elif allow_vectors and isinstance(record, dict) and isinstance(record.get("vector"), list):
            items.append(record["vector"])
        else:
            wanted = '{"text": "..."} or {"vector": [...]}' if allow_vectors else '{"text": "..."}'
            raise InputError(f"expected an object like {wanted}", location=where)
    return items


@click.command("route")
@click.argument("text", required=False)
@click.option("--top-n", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many ranked models to show.")  # fmt: skip
@click.option(
    "--file",
    "file_",
    type=click.Path(dir_okay=False, allow_dash=True),
    help='JSONL of {"text": ...} or {"vector": [...]} per line (- for stdin): routed in one '
    "statement, one JSON decision per line out.",
)
@click.option("--method", type=click.Choice(sorted(METHODS)), default="avengers",
              show_default=True,
              help="Routing rule: avengers (16 nearest clusters, weighted, shrunk toward each "
              "model's prior) or paper (the nearest cluster's means).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def command(text: str | None, top_n: int, file_: str | None, method: str, as_json: bool) -> None:
    """Route TEXT: nearest cluster of the active clustering and the best active models.

    Text is embedded with the serving space's embedder; nothing is sent to a model.

    \b
    Example:
      avengers route "What is the derivative of x^3?" --top-n 3
      avengers route "Who wrote Hamlet?" --json
      avengers route "Who wrote Hamlet?" --method paper
      avengers route --file questions.jsonl > decisions.jsonl
    """
    if (text is None) == (file_ is None):
        raise click.UsageError("give either TEXT or --file")
    with AvengersClient(method=method) as client:
        if file_ is not None:
            queries = read_jsonl(file_, allow_vectors=True)
            for i, decision in enumerate(client.route_many(queries, top_n)):
                click.echo(json.dumps({"line": i + 1, **decision.to_dict()}, ensure_ascii=False))
            return
        decision = client.route(text, top_n)
    if as_json:
        echo_json(decision.to_dict())
    else:
        click.echo(decision.explain())
