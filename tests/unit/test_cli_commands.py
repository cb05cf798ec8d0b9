"""The click classes every command uses: hidden aliases of plural group names."""

from __future__ import annotations

from avengers_store.cli.main import cli
from click.testing import CliRunner


def test_singular_group_name_is_a_hidden_alias():
    listing = CliRunner().invoke(cli, ["--help"]).output
    assert "  datasets " in listing
    assert "  dataset " not in listing
    plural = CliRunner().invoke(cli, ["datasets", "add", "--help"], prog_name="avengers")
    singular = CliRunner().invoke(cli, ["dataset", "add", "--help"], prog_name="avengers")
    assert plural.exit_code == singular.exit_code == 0
    # Same command, only the name typed differs in the usage line.
    assert singular.output.replace("avengers dataset add", "avengers datasets add") == plural.output


def test_group_help_shows_its_alias():
    out = CliRunner().invoke(cli, ["datasets", "--help"]).output
    assert "Also accepted as: dataset." in out
    assert "Also accepted as" not in CliRunner().invoke(cli, ["models", "--help"]).output


def test_unknown_names_still_fail():
    result = CliRunner().invoke(cli, ["datasetz", "list"])
    assert result.exit_code == 2 and "No such command 'datasetz'" in result.output
