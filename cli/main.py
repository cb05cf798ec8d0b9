"""Entry point of the ``avengers`` command."""

from __future__ import annotations

import importlib
import logging
import sys

import click
import psycopg
from avengers_store.cli.commands import Group

from avengers_store import __version__
from avengers_store.errors import AvengersError

# One module per top-level command or group, each defining it as ``command``, in the order of
# the recipe (the CLI reference, docs/reference/cli.md, follows it).
COMMAND_MODULES = [
    "avengers_store.cli.db",
    "avengers_store.cli.demo",
    "avengers_store.cli.load_table",
    "avengers_store.cli.datasets",
    "avengers_store.cli.outcomes",
    "avengers_store.cli.embed",
    "avengers_store.cli.recluster",
    "avengers_store.cli.clusterings",
    "avengers_store.cli.profile",
    "avengers_store.cli.models",
    "avengers_store.cli.policies",
    "avengers_store.cli.route",
    "avengers_store.cli.ask",
    "avengers_store.cli.feedback",
    "avengers_store.cli.drift",
    "avengers_store.cli.evaluate",
    "avengers_store.cli.shadow",
    "avengers_store.cli.keys",
    "avengers_store.cli.serve",
    "avengers_store.cli.console",
]


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="avengers")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """avengers-store: route queries across a pool of models by cluster capability profiles.

    Without AVENGERS_DATABASE_URL every command uses an embedded PostgreSQL + pgvector in
    $AVENGERS_HOME, started on first use.

    \b
    Example:
      avengers db upgrade && avengers db status
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


for _name in COMMAND_MODULES:
    cli.add_command(importlib.import_module(_name).command)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="avengers", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except AvengersError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except psycopg.Error as exc:
        # Anything the library did not wrap: still one line, no traceback (-vv logs it).
        logging.getLogger("avengers").debug("database error", exc_info=exc)
        click.echo(f"error: database: {str(exc).strip().splitlines()[0]}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
