"""``avengers models add | set | list | activate | deactivate | remove``: the pool itself."""

from __future__ import annotations

import dataclasses

import click
from avengers_store.cli.models import command as models
from avengers_store.cli.output import echo_json, emit, format_options

from avengers_store.ingest import model_pool as pool


@models.command("add")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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


@models.command("set")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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


@models.command("list")
@click.option("--active-only", is_flag=True, help="Only models that are routed to.")
@format_options
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


@models.command("activate")
@click.argument("names", nargs=-1, required=True)
def activate_cmd(names: tuple[str, ...]) -> None:
    """Route to the named models again (profiles are refreshed).

    \b
    Example:
      avengers models activate gemma-2-9b-it qwen2.5-7b-instruct
    """
    _set_active(names, True)


@models.command("deactivate")
@click.argument("names", nargs=-1, required=True)
def deactivate_cmd(names: tuple[str, ...]) -> None:
    """Stop routing to the named models; their outcomes stay (profiles are refreshed).

    \b
    Example:
      avengers models deactivate codegemma-7b
    """
    _set_active(names, False)


@models.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
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
