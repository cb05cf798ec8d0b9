"""The CLI documents itself: the CLI reference page (docs/reference/cli.md) is generated from the
commands' help and must be current, and every command and group has help with an example of its
own use."""

from __future__ import annotations

import click
import pytest
from avengers_store.cli import reference
from avengers_store.cli.commands import Group
from avengers_store.cli.main import cli
from click.testing import CliRunner

from avengers_store.testing import REPO

PAGE = REPO / "docs" / "reference" / "cli.md"


def every_command(group=cli, path=("avengers",)):
    """Groups and commands alike, with their full names."""
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from every_command(command, (*path, name))


def test_reference_page_is_current():
    text = PAGE.read_text(encoding="utf-8")
    assert reference.replace_table(text, reference.render_page()) == text, (
        "docs/reference/cli.md is stale: run "
        "`python -m avengers_store.cli.reference --write docs/reference/cli.md`"
    )


def test_reference_page_holds_every_command_s_full_help():
    page = reference.render_page()
    for path, _ in reference.commands(cli):
        heading = f"\n## {' '.join(path)}\n"
        assert heading in page, path
        section = page.split(heading, 1)[1].split("\n## ", 1)[0]
        assert f"Usage: {' '.join(path)}" in section and "Example:" in section, path


def test_help_width_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = reference.render_page()
    monkeypatch.setenv("COLUMNS", "250")
    assert reference.render_page() == narrow


def test_a_command_without_a_row_fails_the_check():
    @click.command("calibrate-twice")
    def extra() -> None:
        """Do it all again."""

    root = Group(commands={**cli.commands, "calibrate-twice": extra})
    table = reference.render(root)
    assert "| `avengers calibrate-twice` | Do it all again. |" in table
    text = PAGE.read_text(encoding="utf-8")
    assert reference.replace_table(text, reference.render_page(root)) != text


def test_every_runnable_command_has_a_row():
    table = reference.render()
    paths = [" ".join(path) for path, c in every_command() if not isinstance(c, click.Group)]
    assert len(paths) >= 27
    for path in paths:
        assert f"| `{path}" in table, path
    assert table.count("\n") == len(paths) + 2


def test_usage_spells_out_arguments_and_required_options():
    rows = dict((" ".join(path), reference.usage(path, c)) for path, c in reference.commands(cli))
    assert (
        rows["avengers outcomes import"] == "avengers outcomes import FILE --dataset NAME [OPTIONS]"
    )
    assert rows["avengers models activate"] == "avengers models activate NAMES..."
    assert rows["avengers route"] == "avengers route [TEXT] [OPTIONS]"


def test_write_rewrites_only_the_table(tmp_path):
    readme = tmp_path / "README.md"
    stale = f"# title\n\n{reference.START}\n| old | table |\n{reference.END}\n\nthe rest\n"
    readme.write_text(stale, encoding="utf-8")
    assert reference.main(["--write", str(readme)]) == 0
    written = readme.read_text(encoding="utf-8")
    assert (
        written
        == f"# title\n\n{reference.START}\n{reference.render_page()}{reference.END}\n\nthe rest\n"
    )
    with pytest.raises(ValueError, match="markers are missing"):
        reference.replace_table("# no markers\n", reference.render())


@pytest.mark.parametrize("path", [p for p, _ in every_command()], ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(cli, [*path[1:], "--help"], prog_name="avengers")
    assert result.exit_code == 0, result.output
    _, found, example = result.output.partition("\n  Example:\n")
    assert found, f"{' '.join(path)} --help has no Example section"
    # The example shows this very command in use.
    assert " ".join(path) in example.split("\nOptions:")[0]


def test_every_option_has_help():
    missing = [
        f"{' '.join(path)} {max(p.opts, key=len)}"
        for path, command in every_command()
        for p in command.params
        if isinstance(p, click.Option) and not p.hidden and not p.help
    ]
    assert missing == []
