"""``avengers console``: the console's pages alone, over a store without a gateway."""

from __future__ import annotations

import click
from avengers_store.cli.commands import Command

from avengers_store.gateway.settings import is_loopback


@click.command("console", cls=Command)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8081, show_default=True,
              help="TCP port to listen on.")  # fmt: skip
@click.option("--no-auth", is_flag=True,
              help="Open the pages without an API key (loopback addresses only).")  # fmt: skip
def command(host: str, port: int, no_auth: bool) -> None:
    """Serve the console, read-only pages over the store and its traffic, at
    http://HOST:PORT/console/ (the same pages `avengers serve` has at /console): Overview,
    Profiles, Requests, Costs, Drift and Shadow. Each page prints the SQL it runs.

    The pages need a live API key (`avengers keys create NAME --console-only` makes one that
    opens the console and nothing else), entered once in the login form or sent as
    'Authorization: Bearer KEY', unless --no-auth, which only a loopback address allows.

    \b
    Example:
      avengers keys create ops --console-only
      avengers console --port 8081
      avengers console --no-auth   # then open http://127.0.0.1:8081/console/
    """
    import uvicorn

    from avengers_store.console.app import create_app

    if no_auth and not is_loopback(host):
        raise click.UsageError(
            f"--no-auth is only allowed on a loopback address, not {host}: create a key with "
            "`avengers keys create NAME --console-only` instead"
        )
    uvicorn.run(create_app(auth=not no_auth), host=host, port=port, log_level="info")
