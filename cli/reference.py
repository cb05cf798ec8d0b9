"""The CLI reference, generated from the commands themselves: a table with one row per command,
in the order they are registered, with its usage (arguments and required options) and the first
sentence of its help, then every command's full ``--help``. docs/reference/cli.md holds it
between two marker lines; a test regenerates it and compares, so a command added, renamed or
re-documented without the page fails the suite.

    python -m avengers_store.cli.reference                                # print it
    python -m avengers_store.cli.reference --write docs/reference/cli.md  # rewrite the page
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from avengers_store.cli.main import cli

START = "<!-- generated: python -m avengers_store.cli.reference --write docs/reference/cli.md -->"
END = "<!-- end of generated reference -->"
HELP_WIDTH = 100  # columns of the help text, fixed so the page does not depend on the terminal
# The names `avengers` gives its help option. Every context made here uses them: click keeps the
# first help option it builds for a command, so a context without them would make the output
# depend on which ran first.
HELP_NAMES = cli.context_settings.get("help_option_names", ["--help"])
SUMMARY_LIMIT = 200  # characters: the first sentence of every command fits


def commands(
    group: click.Group, path: tuple[str, ...] = ("avengers",)
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command that runs something (not the groups), with its full name, depth first."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def usage(path: tuple[str, ...], command: click.Command) -> str:
    """``avengers datasets add NAME FILE [OPTIONS]``: arguments and required options spelled
    out, any other option as ``[OPTIONS]``."""
    ctx = click.Context(command, info_name=path[-1], help_option_names=HELP_NAMES)
    words = list(path)
    optional = False
    for param in command.get_params(ctx):
        if isinstance(param, click.Argument):
            words.append(param.make_metavar(ctx))
        elif isinstance(param, click.Option) and not param.hidden:
            if param.required:
                words.append(f"{max(param.opts, key=len)} {param.make_metavar(ctx)}")
            elif "--help" not in param.opts:
                optional = True
    if optional:
        words.append("[OPTIONS]")
    return " ".join(words)


def summary(command: click.Command) -> str:
    return command.get_short_help_str(limit=SUMMARY_LIMIT)


def _cell(text: str) -> str:
    return text.replace("|", r"\|")


def render(root: click.Group | None = None) -> str:
    """The markdown table of every command under ``root`` (default: the ``avengers`` command)."""
    root = cli if root is None else root
    lines = ["| command | what it does |", "|---|---|"]
    for path, command in commands(root):
        lines.append(f"| `{_cell(usage(path, command))}` | {_cell(summary(command))} |")
    return "\n".join(lines) + "\n"


def help_text(path: tuple[str, ...], root: click.Group | None = None) -> str:
    """The ``--help`` of the command at ``path`` (``("avengers", "db", "upgrade")``), as a
    terminal HELP_WIDTH wide shows it."""
    command: click.Command = cli if root is None else root
    ctx = click.Context(
        command,
        info_name=path[0],
        max_content_width=HELP_WIDTH,
        terminal_width=HELP_WIDTH,
        help_option_names=HELP_NAMES,
    )
    for name in path[1:]:
        assert isinstance(command, click.Group)
        command = command.commands[name]
        ctx = click.Context(command, info_name=name, parent=ctx)
    return command.get_help(ctx)


def render_page(root: click.Group | None = None) -> str:
    """The table, then each command's ``--help`` under a heading of its own."""
    root = cli if root is None else root
    parts = [
        render(root).rstrip("\n"),
        "",
        "## avengers",
        "",
        "```text",
        help_text(("avengers",), root),
        "```",
    ]
    for path, _ in commands(root):
        parts += ["", f"## {' '.join(path)}", "", "```text", help_text(path, root), "```"]
    return "\n".join(parts) + "\n"


def replace_table(text: str, table: str) -> str:
    """``text`` (the reference page) with the lines between the markers replaced by ``table``."""
    head, start, rest = text.partition(START + "\n")
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(
            f"the markers are missing: put {START!r} and {END!r} on lines of their own"
        )
    return head + start + table + end + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avengers_store.cli.reference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--write", metavar="PAGE", type=Path, help="rewrite the reference between the markers"
    )
    args = parser.parse_args(argv)
    table = render_page()
    if args.write is None:
        sys.stdout.write(table)
        return 0
    text = args.write.read_text(encoding="utf-8")
    updated = replace_table(text, table)
    if updated != text:
        args.write.write_text(updated, encoding="utf-8")
        print(f"rewrote the CLI reference in {args.write}")
    else:
        print(f"the CLI reference in {args.write} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
