"""The click classes every command uses: library errors named by the command's flags, and
hidden aliases of plural group names."""

from __future__ import annotations

import click
import pytest
from avengers_store.cli.commands import Command, Group
from avengers_store.cli.main import cli, main
from click.testing import CliRunner

from avengers_store.errors import EndpointError, InputError, NotFound
from avengers_store.evaluation.replay import evaluate


@click.command(cls=Command, flags={"max_concurrency": "--concurrency"})
@click.argument("file")
@click.option("--split-map")
@click.option("--concurrency")
@click.option("--where", help="The location the probe's error names.")
def probe(file, split_map, concurrency, where):
    raise InputError("bad value", location=where or None)


@pytest.mark.parametrize(
    "location, shown",
    [
        ("split_map", "--split-map"),  # the option of the same name
        ("file", "FILE"),  # an argument: its metavar
        ("max_concurrency", "--concurrency"),  # named differently: the command's map
        ("data.csv row 3 column 'q'", "data.csv row 3 column 'q'"),  # not a parameter: as is
    ],
)
def test_input_error_location_becomes_the_flag(location, shown):
    result = CliRunner().invoke(probe, ["x.csv", "--where", location])
    error = result.exception
    assert isinstance(error, InputError)
    assert error.location == shown and str(error) == f"{shown}: bad value"
    if shown != location:
        assert error.__cause__.location == location


@click.command(cls=Command, flags={"max_concurrency": "--concurrency"})
@click.option("--split-map")
@click.option("--concurrency")
@click.option("--endpoint-error", is_flag=True)
def naming(split_map, concurrency, endpoint_error):
    message = "pass `split_map` or `max_concurrency`, not `other`"
    raise EndpointError(message) if endpoint_error else NotFound(message)


def test_parameters_named_in_a_message_become_flags():
    """Any library error: its message's backquoted parameters are the command's flags; an
    endpoint's error (an upstream's text) is left as it came."""
    error = CliRunner().invoke(naming, []).exception
    assert isinstance(error, NotFound)
    assert str(error) == "pass `--split-map` or `--concurrency`, not `other`"
    assert error.__cause__.message == "pass `split_map` or `max_concurrency`, not `other`"
    upstream = CliRunner().invoke(naming, ["--endpoint-error"]).exception
    assert isinstance(upstream, EndpointError) and "`split_map`" in str(upstream)


def test_input_error_without_location_is_left_alone():
    error = CliRunner().invoke(probe, ["x.csv"]).exception
    assert isinstance(error, InputError) and error.location is None and str(error) == "bad value"


def test_library_names_k_and_the_cli_names_its_flag(capsys, monkeypatch):
    # Both checks run before a database is opened; a URL nothing answers makes sure of it.
    monkeypatch.setenv("AVENGERS_DATABASE_URL", "postgresql://127.0.0.1:1/nothing")
    with pytest.raises(InputError) as err:
        evaluate(k=0)
    assert err.value.location == "k" and str(err.value) == "k: k must be at least 1, got 0"
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--k", "0"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: --k: k must be at least 1, got 0\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["models", "add", "neg", "--cost-in", "-1"], "--cost-in: must be a number >= 0, got -1.0"),
        (["outcomes", "import", "o.csv", "--dataset", "d", "--id-col", "i", "--text-col", "t"],
         "--id-col: match by an id column or by a text column, not both"),
        (["evaluate", "--seeds", ","], "--seeds: give at least one seed"),
        (["evaluate", "--budgets", "0"], "--budgets: budgets must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_subcommand_errors_name_their_flags(args, message, monkeypatch):
    monkeypatch.setenv("AVENGERS_DATABASE_URL", "postgresql://127.0.0.1:1/nothing")
    error = CliRunner().invoke(cli, args).exception
    assert isinstance(error, InputError) and str(error) == message


def test_every_command_maps_its_errors():
    def walk(group):
        for cmd in group.commands.values():
            yield cmd
            if isinstance(cmd, click.Group):
                yield from walk(cmd)

    commands = list(walk(cli))
    assert len(commands) > 20
    wrong = [
        c.name
        for c in commands
        if not isinstance(c, Group if isinstance(c, click.Group) else Command)
    ]
    assert wrong == []
    # Every explicit map entry names a flag the command has.
    for cmd in commands:
        for flag in getattr(cmd, "flags", {}).values():
            assert any(flag in p.opts for p in cmd.params), (cmd.name, flag)


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
