"""``avengers keys create | list | revoke``: API keys of the gateway (``avengers serve``)."""

from __future__ import annotations

import json

import click

from avengers_store.gateway import keys as api_keys


@click.group("keys")
def command() -> None:
    """API keys for `avengers serve`. A key is printed once, when created; the store keeps
    only its hash, with created, last-used and revoked times.

    \b
    Example:
      avengers keys create my-app
      avengers keys list
      avengers keys revoke my-app
    """


@command.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the key and its record).")
def create_cmd(name: str, as_json: bool) -> None:
    """Create a key called NAME and print it (the only time it is shown).

    \b
    Example:
      avengers keys create my-app
      export OPENAI_API_KEY=$(avengers keys create ci-runner | head -1)
    """
    record, key = api_keys.create_key(name)
    if as_json:
        click.echo(json.dumps({"key": key, **record.to_dict()}))
        return
    click.echo(key)
    click.echo(
        f"key {record.name!r} (id {record.id}) created; store it now, it is not shown again",
        err=True,
    )


@command.command("list")
@click.option("--live", is_flag=True, help="Only keys that are not revoked.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(live: bool, as_json: bool) -> None:
    """List keys: name, prefix, created, last used, revoked (never the keys themselves).

    \b
    Example:
      avengers keys list --live
    """
    records = api_keys.list_keys(include_revoked=not live)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records]))
        return
    if not records:
        click.echo("no keys (create one with `avengers keys create NAME`)")
        return
    header = ("id", "name", "prefix", "created", "last used", "revoked")
    rows = [
        (
            str(r.id),
            r.name,
            r.prefix + "…",
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.last_used_at.strftime("%Y-%m-%d %H:%M") if r.last_used_at else "-",
            r.revoked_at.strftime("%Y-%m-%d %H:%M") if r.revoked_at else "-",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@command.command("revoke")
@click.argument("name")
def revoke_cmd(name: str) -> None:
    """Revoke the live key NAME: requests with it get 401 from then on.

    \b
    Example:
      avengers keys revoke my-app
    """
    record = api_keys.revoke_key(name)
    click.echo(f"revoked key {record.name!r} (id {record.id})")
