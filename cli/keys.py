"""``avengers keys create | list | revoke``: API keys of the gateway (``avengers serve``)."""

from __future__ import annotations

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command, Group
from avengers_store.cli.output import echo_json, emit

from avengers_store.gateway import keys as api_keys


@click.group("keys", cls=Group)
def command() -> None:
    """API keys for `avengers serve`. A key is printed once, when created; the store keeps
    only its hash, with created, last-used and revoked times.

    \b
    Example:
      avengers keys create my-app
      avengers keys list
      avengers keys revoke my-app
    """


@command.command("create", cls=Command)
@click.argument("name")
@options.json_output
def create_cmd(name: str, as_json: bool) -> None:
    """Create a key called NAME and print it (the only time it is shown).

    \b
    Example:
      avengers keys create my-app
      export OPENAI_API_KEY=$(avengers keys create ci-runner | head -1)
    """
    record, key = api_keys.create_key(name)
    if as_json:
        echo_json({"key": key, **record.to_dict()})
        return
    click.echo(key)
    click.echo(
        f"key {record.name!r} (id {record.id}) created; store it now, it is not shown again",
        err=True,
    )


@command.command("list", cls=Command)
@click.option("--live", is_flag=True, help="Only keys that are not revoked.")
@options.output_format
def list_cmd(live: bool, fmt: str) -> None:
    """List keys: name, prefix, created, last used, revoked (never the keys themselves).

    \b
    Example:
      avengers keys list --live
    """
    records = [r.to_dict() for r in api_keys.list_keys(include_revoked=not live)]
    if not records and fmt == "table":
        click.echo("no keys (create one with `avengers keys create NAME`)")
        return
    emit(records, fmt)


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
