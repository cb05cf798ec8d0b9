"""``avengers db``: create, inspect and stop the store's database."""

from __future__ import annotations

import dataclasses

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Group
from avengers_store.cli.output import echo_json

from avengers_store.store import analyst, config, connections, embedded, schema


@click.group("db", cls=Group)
def command() -> None:
    """Create, migrate, inspect, start and stop the store's database.

    \b
    Example:
      avengers db upgrade
      avengers db status --json
    """


@command.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to reach.")
def upgrade_cmd(revision: str) -> None:
    """Apply migrations and the sql/ definitions (idempotent: a no-op when current).

    \b
    Example:
      AVENGERS_DATABASE_URL=postgresql://avengers@db:5432/avengers avengers db upgrade
    """
    result = schema.upgrade(revision=revision)
    if not result.changed:
        click.echo(f"already up to date (revision {result.to_revision})")
    elif result.from_revision == result.to_revision:
        click.echo(f"re-applied the sql/ definitions (revision {result.to_revision})")
    else:
        click.echo(f"upgraded {result.from_revision or 'empty'} -> {result.to_revision}")


@command.command("downgrade")
@click.argument("revision")
@options.yes
def downgrade_cmd(revision: str, yes: bool) -> None:
    """Migrate down to REVISION; `base` removes the avengers schema and all its data.

    \b
    Example:
      avengers db downgrade base --yes && avengers db upgrade
    """
    if not yes:
        click.confirm(f"Downgrade to {revision}? Data in dropped tables is lost", abort=True)
    after = schema.downgrade(revision=revision)
    click.echo(f"now at {after or 'base (no avengers schema)'}")


@command.command("status")
@options.json_output
def status_cmd(as_json: bool) -> None:
    """Schema revision, server and pgvector versions, row counts per table.

    \b
    Example:
      avengers db status --json
    """
    st = schema.status()
    if as_json:
        echo_json({**dataclasses.asdict(st), "up_to_date": st.up_to_date})
        return
    click.echo(f"url:               {st.url}{'  (embedded)' if st.embedded else ''}")
    click.echo(f"server:            PostgreSQL {st.server_version}")
    click.echo(f"pgvector:          {st.pgvector_version or 'not installed'}")
    behind = "" if st.up_to_date else "  (behind: run `avengers db upgrade`)"
    click.echo(f"revision:          {st.revision or 'none'} (head {st.head}){behind}")
    click.echo(f"active clustering: {st.active_clustering or 'none'}")
    for table, count in st.counts.items():
        click.echo(f"  {table:<18} {count:>10,}")


@command.command("url")
@click.option(
    "--show-password",
    is_flag=True,
    help="Print the password too, when the configured URL holds one (it is left out by default).",
)
def url_cmd(show_password: bool) -> None:
    """Print the database URL in use (starting the embedded server if it is the default).

    The password is left out unless --show-password is given: psql and libpq then read it from
    PGPASSWORD or ~/.pgpass, or prompt for it. The embedded server needs none.

    \b
    Example:
      psql "$(avengers db url)" -c '\\d+ avengers.cluster_profiles'
      PGPASSFILE=~/.pgpass psql "$(avengers db url)"
    """
    target = connections.resolve_url()
    if not target:
        click.echo("(libpq PG* environment variables)")
        return
    if show_password or not connections.has_password(target):
        click.echo(target)
        return
    click.echo(connections.without_password(target))
    click.echo(
        "password left out: psql reads it from PGPASSWORD or ~/.pgpass (or asks); "
        "--show-password prints it",
        err=True,
    )


@command.command("grant-analyst")
@click.argument("role")
def grant_analyst_cmd(role: str) -> None:
    """Give the existing ROLE read-only access: USAGE on the schema, SELECT on the data, profile
    and route-log views and tables, EXECUTE on avengers.route*. Nothing else: not api_keys nor
    gateway_sessions, no write. Creates no role; rerunning it is harmless; upgrades keep it.

    \b
    Example:
      psql "$(avengers db url)" -c "CREATE ROLE analyst LOGIN PASSWORD 'choose-one'"
      avengers db grant-analyst analyst
    """
    granted = analyst.grant_analyst(role)
    click.echo(
        f"granted {granted.role}: USAGE on schema {analyst.SCHEMA}; SELECT on "
        f"{len(granted.relations)} relations ({', '.join(granted.relations)}); EXECUTE on "
        f"{len(granted.functions)} routing functions. Not granted: "
        f"{', '.join(analyst.PRIVATE_RELATIONS)}, any write."
    )


@command.command("start")
def start_cmd() -> None:
    """Start the embedded server, also after `avengers db stop` (which keeps clients from
    starting it by themselves). No effect when AVENGERS_DATABASE_URL is set.

    \b
    Example:
      avengers db stop && avengers db start
    """
    if config.database_url() is not None:
        click.echo(f"{config.DATABASE_URL_ENV} is set: nothing embedded to start")
        return
    url = embedded.start()
    click.echo(f"the embedded server in {embedded.data_dir()} is running: {url}")


@command.command("stop")
def stop_cmd() -> None:
    """Stop the embedded server and keep it stopped: clients and commands do not start it
    again until `avengers db start`. A fast shutdown (clients are disconnected), an immediate
    one after 15 s. No effect when AVENGERS_DATABASE_URL is set.

    \b
    Example:
      avengers db stop
    """
    if config.database_url() is not None:
        click.echo(f"{config.DATABASE_URL_ENV} is set: nothing embedded to stop")
        return
    stopped = embedded.stop()
    if stopped is None:
        click.echo("not running (clients will not start it: `avengers db start` does)")
        return
    click.echo(
        f"stopped the embedded server in {embedded.data_dir()} (process {stopped.pid}, "
        f"{stopped.mode} shutdown, {stopped.seconds:.1f} s); clients will not start it again "
        "until `avengers db start`"
    )
