"""The click classes behind every ``avengers`` command.

``Command`` makes library errors speak the command line's language: the library names its own
parameters in an error's ``location`` (``k``, ``split_map``) and in backquotes in its message
(``pass `create_models```), and a command re-raises such an error naming the options or
arguments that fill those parameters (``--k``, ``--split-map``, ``--create-models``); a text
value holding a NUL byte is refused before the command runs.
``Group`` also answers to hidden aliases of its subcommands (the singular names scripts used
before groups were plural).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import click

from avengers_store.errors import AvengersError, EndpointError, InputError

# A parameter named in a library message: `name` (the errors' convention, errors.AvengersError).
_NAMED_PARAMETER = re.compile(r"`([a-z_][a-z0-9_]*)`")


class Command(click.Command):
    """A command whose ``InputError``s name its flags. A library parameter maps to the click
    parameter of the same name (``--split-map`` fills ``split_map``); ``flags`` lists the ones
    whose names differ, e.g. ``{"max_concurrency": "--concurrency"}``."""

    def __init__(self, *args: Any, flags: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flags = dict(flags or {})

    def flag_for(self, parameter: str) -> str | None:
        """The option (its long form) or argument (its metavar) filling ``parameter``."""
        if parameter in self.flags:
            return self.flags[parameter]
        for param in self.params:
            if param.name != parameter:
                continue
            if isinstance(param, click.Option):
                return max(param.opts, key=len)
            return param.human_readable_name
        return None

    def invoke(self, ctx: click.Context) -> Any:
        for name, value in ctx.params.items():
            values = value if isinstance(value, tuple | list) else (value,)
            if any(isinstance(v, str) and "\x00" in v for v in values):
                # PostgreSQL text cannot hold NUL: refused here, naming the option, for every
                # command at once.
                raise InputError(
                    "contains a NUL byte, which the store cannot hold",
                    location=self.flag_for(name) or name,
                )
        try:
            return super().invoke(ctx)
        except AvengersError as exc:
            mapped = self.in_flags(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def in_flags(self, exc: AvengersError) -> AvengersError | None:
        """``exc`` again, its location and the parameters its message names shown as this
        command's flags; None when it names none of them (or is an endpoint's error, whose text
        is the upstream's)."""
        if isinstance(exc, EndpointError):
            return None
        flag = self.flag_for(exc.location) if exc.location else None
        message = _NAMED_PARAMETER.sub(
            lambda m: f"`{self.flag_for(m.group(1)) or m.group(1)}`", exc.message
        )
        if flag is None and message == exc.message:
            return None
        return type(exc)(message, location=flag or exc.location)


class Group(click.Group):
    """A group whose subcommands are ``Command``s and may carry ``aliases``: accepted names
    that ``--help`` listings leave out, shown in the aliased command's own help."""

    command_class = Command
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
