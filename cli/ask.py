"""``avengers ask``: route a question, sample the routed models, vote, log, print the answer."""

from __future__ import annotations

import json

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command
from avengers_store.cli.inputs import read_jsonl
from avengers_store.cli.output import echo_json

from avengers_store.answering.prompts import TASK_TYPES
from avengers_store.answering.strategies import DEFAULT_SAMPLES, STRATEGIES
from avengers_store.client import AvengersClient
from avengers_store.errors import AvengersError


def answer_dict(answer, *, samples: bool = False) -> dict:
    out = answer.to_dict(include_samples=samples)
    out["decision"] = answer.decision.to_dict() if answer.decision is not None else None
    return out


@click.command("ask", cls=Command, flags={"max_concurrency": "--concurrency"})
@click.argument("text", required=False)
@options.samples(default=DEFAULT_SAMPLES, help="Completions to sample per model.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="self-consistency",
              show_default=True, help="How samples become one answer.")  # fmt: skip
@options.top_n(
    default=None,
    help="Ranked models to hand to the ensemble (default 3: the first answers, the rest are "
    "fallbacks, or switch targets for model-switch).",
)
@click.option("--task-type", type=click.Choice(TASK_TYPES),
              help="Prompt and answer extractor (default: guessed from the text).")  # fmt: skip
@options.jsonl_file(
    help='JSONL of {"text": ...} per line (- for stdin); one JSON answer per line out.'
)
@options.concurrency(help="Questions in flight at once with --file.")
@options.timeout(
    help="Seconds one answer may take in all: embedding, routing, every model call, retry and "
    "fallback. Each ranked model gets an equal share of the time left when its turn comes."
)
@options.max_tokens
@options.routing
@options.json_output
def command(
    text, samples, strategy, top_n, task_type, file_, concurrency, timeout, max_tokens, routing,
    as_json,
) -> None:  # fmt: skip
    """Answer TEXT with the models routed for it; every answer writes a route_log row.

    With --json the sampled answers are printed too. --tradeoff and --max-cost route as in
    `avengers route`, the expected cost counting --samples answers.

    \b
    Example:
      avengers ask "What is 7*6?" --samples 5 --json
      avengers ask "Which planet is largest? A) Mars B) Jupiter" --task-type multiple_choice
      avengers ask "Prove that ..." --strategy model-switch --top-n 2
      avengers ask "Name a rare Klingon verb" --ood-policy widen --json
      avengers ask "What is 7*6?" --timeout 5
      avengers ask --file questions.jsonl --samples 5 > answers.jsonl
      avengers ask "What is 7*6?" --samples 5 --tradeoff 0.5 --max-cost 0.002
    """
    if (text is None) == (file_ is None):
        raise click.UsageError("give either TEXT or --file")
    with AvengersClient(
        max_concurrency=concurrency, max_tokens=max_tokens, timeout=timeout
    ) as client:
        if file_ is not None:
            texts = read_jsonl(file_, allow_vectors=False)
            results = client.ask_many(
                texts, samples, strategy, task_type, top_n, return_exceptions=True, **routing
            )
            failed = 0
            for i, item in enumerate(results):
                if isinstance(item, AvengersError):
                    failed += 1
                    record = {"line": i + 1, "error": str(item)}
                else:
                    record = {"line": i + 1, **answer_dict(item)}
                click.echo(json.dumps(record, ensure_ascii=False, default=str))
            if failed:
                raise click.ClickException(f"{failed} of {len(results)} questions failed")
            return
        answer = client.ask(text, samples, strategy, task_type, top_n, **routing)
    if as_json:
        echo_json(answer_dict(answer, samples=True))
        return
    click.echo(answer.answer if answer.answer is not None else "(no valid answer)")
    votes = ", ".join(f"{k}: {v}" for k, v in answer.votes.items())
    click.echo(
        f"share {answer.share:.2f} of {answer.valid} valid votes ({votes}); "
        f"models {', '.join(answer.models)}; {answer.latency_ms:.0f} ms",
        err=True,
    )
    decision = answer.decision
    if decision is not None and decision.costed:
        cost = decision.expected_cost
        click.echo(
            "expected cost "
            + ("unknown (no price, no measured cost)" if cost is None else f"{cost:.6g}")
            + (f" (over budget: nothing fits --max-cost {decision.max_cost:g})"
               if decision.over_budget else ""),
            err=True,
        )  # fmt: skip
    for fb in answer.fallbacks:
        click.echo(f"fallback: {fb.model} failed ({fb.error}); used {fb.replaced_by}", err=True)
