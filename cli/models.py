"""``avengers models``: the model pool (add, list, activate, deactivate, remove), the paper's
model-set selection, and evaluating a model on the stored calibration queries."""

from __future__ import annotations

import dataclasses
import sys

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Group
from avengers_store.cli.output import echo_json, echo_table, emit

from avengers_store.calibration.model_selection import select_models
from avengers_store.ingest import model_pool as pool
from avengers_store.production.onboarding import DEFAULT_SAMPLES, evaluate_model


@click.group("models", cls=Group)
def command() -> None:
    """Manage the model pool: add models, select a set, evaluate a model on calibration queries.

    \b
    Example:
      avengers models add qwen2.5-7b --endpoint http://vllm-qwen:8000/v1
      avengers models select --budget 3 --apply
    """


@command.command("add")
@click.argument("name")
@click.option(
    "--endpoint",
    help="Base URL of its OpenAI-compatible API, e.g. http://vllm:8000/v1 (http or https; no "
    "credentials in it: use --api-key-env).",
)
@click.option("--served-name", help="Model name sent in API requests (default: NAME).")
@click.option("--api-key-env", help="Environment variable that holds the endpoint's API key.")
@click.option("--cost-in", type=float, help="Price per 1M input tokens.")
@click.option("--cost-out", type=float, help="Price per 1M output tokens.")
@options.json_output
def add_cmd(name, endpoint, served_name, api_key_env, cost_in, cost_out, as_json) -> None:
    """Add model NAME to the pool (active). Importing its outcomes makes it routable at once,
    without re-clustering.

    \b
    Example:
      avengers models add qwen2.5-7b --endpoint http://vllm-qwen:8000/v1 \\
          --served-name Qwen/Qwen2.5-7B-Instruct --cost-in 0.2 --cost-out 0.2
    """
    model = pool.add_model(name, endpoint, served_name, api_key_env, cost_in, cost_out)
    if as_json:
        echo_json(model)
    else:
        click.echo(f"added model {model.name} (id {model.id})")


@command.command("set")
@click.argument("name")
@click.option("--endpoint", help="New base URL of its OpenAI-compatible API (http or https).")
@click.option("--served-name", help="New model name sent in API requests.")
@click.option("--api-key-env", help="New environment variable that holds the API key.")
@click.option("--cost-in", type=float, help="New price per 1M input tokens.")
@click.option("--cost-out", type=float, help="New price per 1M output tokens.")
@click.option(
    "--clear-endpoint",
    is_flag=True,
    help="Remove the endpoint: the model keeps its outcomes and profiles but is not called.",
)
@click.option(
    "--clear-api-key-env", is_flag=True, help="Send no API key (the endpoint needs none)."
)
@options.json_output
def set_cmd(
    name,
    endpoint,
    served_name,
    api_key_env,
    cost_in,
    cost_out,
    clear_endpoint,
    clear_api_key_env,
    as_json,
) -> None:
    """Change model NAME (e.g. one created by load-table) without touching its outcomes.

    Only the options given change. An endpoint is an http or https base URL with a host and no
    credentials: put a key in an environment variable and name it with --api-key-env.

    \b
    Example:
      avengers models set qwen2.5-7b-instruct --endpoint http://vllm-qwen:8000/v1 \\
          --served-name Qwen/Qwen2.5-7B-Instruct --api-key-env VLLM_API_KEY
      avengers models set codegemma-7b --clear-endpoint
    """
    clear = [
        field
        for field, flag in (("endpoint", clear_endpoint), ("api_key_env", clear_api_key_env))
        if flag
    ]
    model = pool.set_model(
        name,
        endpoint=endpoint,
        served_name=served_name,
        api_key_env=api_key_env,
        cost_in=cost_in,
        cost_out=cost_out,
        clear=clear,
    )
    if as_json:
        echo_json(model)
    else:
        click.echo(
            f"model {model.name}: endpoint {model.endpoint or 'none'}, served name "
            f"{model.served_name or model.name}, api key env {model.api_key_env or 'none'}"
        )


@command.command("list")
@click.option("--active-only", is_flag=True, help="Only models that are routed to.")
@options.output_format
def list_cmd(active_only: bool, fmt: str) -> None:
    """List the model pool.

    \b
    Example:
      avengers models list --active-only --json
    """
    rows = [dataclasses.asdict(m) for m in pool.list_models(active_only=active_only)]
    columns = ["name", "active", "endpoint", "served_name", "cost_in_per_m", "cost_out_per_m"]
    emit(rows, fmt, None if fmt == "json" else columns)


def _set_active(names: tuple[str, ...], active: bool) -> None:
    changed = pool.set_active(names, active)
    state = "active" if active else "inactive"
    click.echo(f"{len(changed)} model(s) now {state}: {', '.join(m.name for m in changed)}")


@command.command("activate")
@click.argument("names", nargs=-1, required=True)
def activate_cmd(names: tuple[str, ...]) -> None:
    """Route to the named models again (profiles are refreshed).

    \b
    Example:
      avengers models activate gemma-2-9b-it qwen2.5-7b-instruct
    """
    _set_active(names, True)


@command.command("deactivate")
@click.argument("names", nargs=-1, required=True)
def deactivate_cmd(names: tuple[str, ...]) -> None:
    """Stop routing to the named models; their outcomes stay (profiles are refreshed).

    \b
    Example:
      avengers models deactivate codegemma-7b
    """
    _set_active(names, False)


@command.command("remove")
@click.argument("name")
@options.yes
def remove_cmd(name: str, yes: bool) -> None:
    """Delete model NAME and all its outcomes (to keep them, use `deactivate`).

    \b
    Example:
      avengers models remove codegemma-7b --yes
    """
    if not yes:
        click.confirm(f"Delete model {name} and its outcomes?", abort=True)
    deleted = pool.remove_model(name)
    click.echo(f"removed model {name} and {deleted} outcome(s)")


@command.command("select")
@click.option("--budget", type=int, required=True, metavar="N", help="Number of models to keep.")
@click.option(
    "--max-price",
    type=float,
    metavar="PRICE",
    help="Only models whose input and output prices per 1M tokens are at most PRICE compete, "
    "ranked among themselves (models without a price are left out).",
)
@click.option(
    "--apply",
    is_flag=True,
    help="Make exactly the chosen models active (the rest inactive) and refresh profiles.",
)
@options.json_output
def select_cmd(budget: int, max_price: float | None, apply: bool, as_json: bool) -> None:
    """Keep the --budget models with the highest s(m), the paper's model-set selection.

    s(m) = sum over the clusters of the active clustering of 1/rank; ties go to the overall
    calibration score, then the name. With --max-price the same among the models priced at
    most PRICE per 1M tokens (the best pool under a price ceiling). Without --apply nothing
    changes.

    \b
    Example:
      avengers models select --budget 3
      avengers models select --budget 3 --apply
      avengers models select --budget 3 --max-price 0.2 --apply
    """
    result = select_models(budget, max_price=max_price, apply=apply)
    if as_json:
        echo_json(dataclasses.asdict(result))
        return
    echo_table(
        [dataclasses.asdict(s) for s in result.scores],
        [
            "selection_rank",
            "model",
            "selection_score",
            "clusters_won",
            "clusters_ranked",
            "overall_score",
            "selected",
            "active",
            *(["price_in", "price_out"] if max_price is not None else []),
        ],
    )
    if result.priced_out:
        click.echo(f"left out by --max-price {max_price:g}: {', '.join(result.priced_out)}")
    chosen = ", ".join(result.selected)
    if len(result.selected) < budget:
        click.echo(f"only {len(result.selected)} models have outcomes to rank")
    if apply:
        click.echo(f"active models now: {chosen} (profiles refreshed)")
    else:
        click.echo(f"selected: {chosen}  (add --apply to make them the active set)")


@command.command("evaluate")
@click.argument("name")
@options.samples(
    default=DEFAULT_SAMPLES, help="Completions per query; the score is their mean grade."
)
@click.option("--limit", type=click.IntRange(min=0), help="Evaluate at most N queries this run.")
@click.option("--dataset", help="Only calibration queries of this dataset.")
@options.concurrency(help="Queries in flight at once.")
@options.max_tokens
@options.json_output
def evaluate_cmd(name, samples, limit, dataset, concurrency, max_tokens, as_json) -> None:
    """Run model NAME on the stored calibration queries and store its graded outcomes.

    Only queries it has no outcome for are sent to its endpoint; the samples are graded against
    the reference answers, the outcomes stored and the profiles refreshed (no re-clustering).
    Commits in batches: rerun to resume after an interruption.

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
