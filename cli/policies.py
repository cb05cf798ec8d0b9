"""``avengers policies create | list | show | remove | promote``: routing policies stored under
a name, and which one is served."""

from __future__ import annotations

import json
from typing import Any

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Group
from avengers_store.cli.output import echo_json, emit

from avengers_store.errors import InputError
from avengers_store.routing import stored_policies
from avengers_store.routing.policy import EXPLORATIONS, Policy


def _row(p: stored_policies.StoredPolicy) -> dict[str, Any]:
    return {
        "name": p.name,
        "roles": ",".join(p.roles),
        "policy": json.dumps(p.policy.to_dict(), sort_keys=True),
        "note": p.note,
        "updated_at": p.updated_at,
    }


@click.group("policies", cls=Group)
def command() -> None:
    """Routing policies stored under a name; the served one routes every client and the
    gateway unless a call or key sets its own fields.

    \b
    Example:
      avengers policies create k16 --clustering 3
      avengers policies promote k16
    """


@command.command("create")
@click.argument("name")
@options.routing
@click.option("--top-n", type=click.IntRange(min=1), help="Candidates returned (default 1).")
@click.option("--clustering", "clustering_id", type=click.IntRange(min=1),
              help="Route with this clustering version (ready or active; default: the active).")  # fmt: skip
@click.option("--production-weight", type=click.FloatRange(min=0),
              help="Weight of a production outcome against a calibration one.")  # fmt: skip
@click.option("--exploration", type=click.Choice(EXPLORATIONS), help="Exploration policy.")
@click.option("--exploration-share", type=click.FloatRange(0, 1), help="epsilon's share.")
@click.option("--from-json", "from_json", help="The whole policy as JSON (Policy.to_dict's form).")
@click.option("--note", help="What the policy is for.")
@click.option("--replace", is_flag=True, help="Replace a stored policy of that name.")
def create(name: str, routing: dict[str, Any], from_json: str | None, note: str | None,
           replace: bool, **fields: Any) -> None:  # fmt: skip
    """Store a routing policy under NAME (its fields: the options given; the rest default).

    \b
    Example:
      avengers policies create paper --method paper
      avengers policies create k16 --clustering 3 --exploration epsilon --exploration-share 0.1
    """
    base: dict[str, Any] = {}
    if from_json is not None:
        try:
            base = json.loads(from_json)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON: {exc}", location="--from-json") from exc
    policy = Policy.from_dict(base).replace(
        **routing, **{k: v for k, v in fields.items() if v is not None}
    )
    emit([_row(stored_policies.create(name, policy, note=note, replace=replace))], "table")


@command.command("list")
@options.output_format
def list_(fmt: str) -> None:
    """The stored policies and their roles (served, shadow).

    \b
    Example:
      avengers policies list --format json
    """
    emit([_row(p) for p in stored_policies.list_policies()], fmt)


@command.command("show")
@click.argument("name")
def show(name: str) -> None:
    """One stored policy, as JSON.

    \b
    Example:
      avengers policies show k16
    """
    p = stored_policies.show(name)
    echo_json({"name": p.name, "roles": list(p.roles), "policy": p.policy.to_dict(),
               "note": p.note, "created_at": p.created_at, "updated_at": p.updated_at})  # fmt: skip


@command.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Remove a stored policy (not the served or shadowed one).

    \b
    Example:
      avengers policies remove k16
    """
    stored_policies.remove(name)
    click.echo(f"removed policy {name}")


@command.command("promote")
@click.argument("name", required=False)
@click.option("--back", is_flag=True, help="Serve the policy served before the last promotion.")
def promote(name: str | None, back: bool) -> None:
    """Serve the stored policy NAME, atomically: every decision after the commit uses it
    (clients read it again within 2 s), none a mix of two.

    \b
    Example:
      avengers policies promote k16
      avengers policies promote --back
    """
    if back == (name is not None):
        raise InputError("name a policy or give --back, not both", location="name")
    p = stored_policies.promote(name, back=back)
    click.echo(f"serving policy {p.name}: {json.dumps(p.policy.to_dict(), sort_keys=True)}")
