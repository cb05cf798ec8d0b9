"""The click classes behind every ``avengers`` command: a group that also answers to hidden
aliases of its subcommands (the singular names scripts used before groups were plural)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click


class Group(click.Group):
    """A group whose subcommands may carry ``aliases``: accepted names that ``--help`` listings
    leave out, shown in the aliased command's own help."""

    group_class = type  # subgroups are Groups too

    def __init__(self, *args: Any, aliases: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases = tuple(aliases)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None:
            return found
        return next(
            (c for c in self.commands.values() if cmd_name in getattr(c, "aliases", ())), None
        )

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        if self.aliases:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(f"Also accepted as: {', '.join(self.aliases)}.")
