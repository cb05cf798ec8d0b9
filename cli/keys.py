"""``avengers keys create | set | list | usage | revoke``: API keys of the gateway (``avengers
serve``) and their policies."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command, Group
from avengers_store.cli.output import echo_json, emit
from avengers_store.cli.param_types import CommaList

from avengers_store.gateway import keys as api_keys

F = TypeVar("F", bound=Callable[..., Any])

# The policy's own options: (flag, KeyPolicy field, click settings).
POLICY_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--spend-limit-day", "spend_limit_day", {
        "type": click.FloatRange(min=0),
        "help": "Most the key may spend per UTC day, in the models' price currency (their "
        "prices per 1M tokens x the tokens its requests used); past it: 429 insufficient_quota.",
    }),
    ("--spend-limit-month", "spend_limit_month", {
        "type": click.FloatRange(min=0),
        "help": "Most the key may spend per UTC calendar month.",
    }),
    ("--models", "models", {
        "type": CommaList(str),
        "help": "Pool models the key may use, by name or through model avengers (which then "
        "routes among them only); another gets 400.",
    }),
    ("--max-samples", "max_samples", {
        "type": click.IntRange(min=1),
        "help": "Most samples a request may draw per model; a request asking more gets 400.",
    }),
    ("--requests-per-minute", "requests_per_minute", {
        "type": click.IntRange(min=1),
        "help": "Requests the key may make per UTC minute; more get 429 rate_limit_exceeded.",
    }),
)  # fmt: skip
UNSETTABLE = [flag[2:] for flag, _, _ in POLICY_OPTIONS] + [
    flag[2:] for flag, _, _ in options.ROUTING_OPTIONS
]


def policy_options(func: F) -> F:
    """The policy options and the routing options a key defaults; the command receives
    ``policy``: the fields given, by name (routing options by their Policy field names)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = {field: kwargs.pop(field) for _, field, _ in POLICY_OPTIONS}
        given = {k: v for k, v in given.items() if v is not None}
        return func(*args, policy={**given, **kwargs.pop("routing")}, **kwargs)

    command = options.routing(command)
    for flag, field, settings in reversed(POLICY_OPTIONS):
        command = click.option(flag, field, **settings)(command)
    return command  # type: ignore[return-value]


@click.group("keys", cls=Group)
def command() -> None:
    """API keys for `avengers serve`, and what each may do. A key is printed once, when created;
    the store keeps only its hash, with created, last-used and revoked times and its policy:
    spend limits per day and month, the models it may use, a samples ceiling, requests per
    minute and default routing options (--tradeoff, --max-cost, ...). The gateway enforces the
    policy before calling any model and reads it on every request, so `keys set` needs no
    restart.

    \b
    Example:
      avengers keys create my-app --spend-limit-month 50 --models qwen2.5-7b,llama-3.1-8b
      avengers keys set my-app --requests-per-minute 120 --tradeoff 0.7
      avengers keys usage my-app --period day
      avengers keys revoke my-app
    """


@command.command("create", cls=Command)
@click.argument("name")
@policy_options
@click.option("--console-only", is_flag=True,
              help="The key opens the console's read-only pages (/console) and nothing else: "
              "the API refuses it with 403.")  # fmt: skip
@options.json_output
def create_cmd(name: str, policy: dict[str, Any], console_only: bool, as_json: bool) -> None:
    """Create a key called NAME and print it (the only time it is shown), with the policy the
    options give (none: no limits).

    \b
    Example:
      avengers keys create my-app
      avengers keys create team-a --spend-limit-day 5 --spend-limit-month 100 \\
        --models alpha,bravo --max-samples 5 --requests-per-minute 60 --tradeoff 0.8
      export OPENAI_API_KEY=$(avengers keys create ci-runner | head -1)
      avengers keys create ops-dashboard --console-only
    """
    record, key = api_keys.create_key(
        name, api_keys.KeyPolicy().changed(policy), console_only=console_only
    )
    if as_json:
        echo_json({"key": key, **record.to_dict()})
        return
    click.echo(key)
    click.echo(
        f"key {record.name!r} (id {record.id}) created; store it now, it is not shown again",
        err=True,
    )


@command.command("set", cls=Command)
@click.argument("name")
@policy_options
@click.option("--unset", "unset", multiple=True, type=click.Choice(UNSETTABLE),
              help="Remove a limit or a default routing option (repeatable).")  # fmt: skip
@options.json_output
def set_cmd(name: str, policy: dict[str, Any], unset: tuple[str, ...], as_json: bool) -> None:
    """Change the policy of the live key NAME: the options given are set, --unset ones removed,
    the rest kept. The gateway applies it from the key's next request.

    \b
    Example:
      avengers keys set my-app --spend-limit-day 2.5
      avengers keys set my-app --unset spend-limit-day --unset tradeoff
    """
    changes: dict[str, Any] = {name.replace("-", "_"): None for name in unset}
    changes.update(policy)
    record = api_keys.set_policy(name, changes)
    if as_json:
        echo_json(record.to_dict())
        return
    shown = {k: v for k, v in record.policy.to_dict().items() if v not in (None, {})}
    described = ", ".join(f"{k}={v}" for k, v in shown.items()) or "no limits"
    click.echo(f"key {record.name!r}: {described}")


@command.command("list", cls=Command)
@click.option("--live", is_flag=True, help="Only keys that are not revoked.")
@options.output_format
def list_cmd(live: bool, fmt: str) -> None:
    """List keys: name, prefix, created, last used, revoked and policy (never the keys).

    \b
    Example:
      avengers keys list --live
    """
    records = [r.to_dict() for r in api_keys.list_keys(include_revoked=not live)]
    if not records and fmt == "table":
        click.echo("no keys (create one with `avengers keys create NAME`)")
        return
    emit(records, fmt)


@command.command("usage", cls=Command)
@click.argument("name", required=False)
@click.option("--period", type=click.Choice(api_keys.PERIODS), default="month",
              show_default=True, help="UTC days or calendar months.")  # fmt: skip
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]),
              help="Only periods starting on or after this date (YYYY-MM-DD).")  # fmt: skip
@click.option("--all", "include_revoked", is_flag=True, help="Revoked keys too.")
@options.output_format
def usage_cmd(name: str | None, period: str, since: Any, include_revoked: bool, fmt: str) -> None:
    """What each key (or the key NAME) spent per period: requests, tokens in and out of every
    sample drawn, their cost at the models' prices and the key's limit (the SQL view
    avengers.key_spend).

    \b
    Example:
      avengers keys usage
      avengers keys usage my-app --period day --since 2026-12-01 --json
    """
    rows = api_keys.key_usage(
        name, period, since=since.date() if since else None, include_revoked=include_revoked
    )
    if not rows and fmt == "table":
        click.echo("no usage recorded" + (f" for key {name!r}" if name else ""))
        return
    emit([r.to_dict() for r in rows], fmt)


@command.command("revoke", cls=Command)
@click.argument("name")
def revoke_cmd(name: str) -> None:
    """Revoke the live key NAME: requests with it get 401 from then on.

    \b
    Example:
      avengers keys revoke my-app
    """
    record = api_keys.revoke_key(name)
    click.echo(f"revoked key {record.name!r} (id {record.id})")
