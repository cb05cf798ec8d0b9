"""The CLI parses ``1,4,16`` and ``train=calibration,test=test``; the library gets lists and
dicts, and a malformed value is a usage error naming the option."""

from __future__ import annotations

import click
import pytest
from avengers_store.cli.main import cli
from avengers_store.cli.param_types import CommaList, KeyValues
from click.testing import CliRunner


@pytest.mark.parametrize(
    "kind, text, parsed",
    [
        (int, "1,4,16", [1, 4, 16]),
        (int, " 42 ,, 7,", [42, 7]),
        (float, "0.05,0.5", [0.05, 0.5]),
        (str, "mbpp,ceval", ["mbpp", "ceval"]),
        (int, "", []),
    ],
)
def test_comma_list(kind, text, parsed):
    assert CommaList(kind).convert(text, None, None) == parsed


def test_comma_list_refuses_a_bad_item():
    with pytest.raises(click.BadParameter, match="'x' is not an integer"):
        CommaList(int).convert("1,x", None, None)
    with pytest.raises(click.BadParameter, match="'half' is not a number"):
        CommaList(float).convert("half", None, None)


def test_key_values():
    parsed = KeyValues().convert("train=calibration, test = test,,dev=skip", None, None)
    assert parsed == {"train": "calibration", "test": "test", "dev": "skip"}
    assert list(parsed) == ["train", "test", "dev"]
    for bad in ("train", "=test", "train="):
        with pytest.raises(click.BadParameter, match="expected KEY=VALUE"):
            KeyValues().convert(bad, None, None)


@pytest.fixture
def no_database(monkeypatch):
    monkeypatch.setenv("AVENGERS_DATABASE_URL", "postgresql://127.0.0.1:1/nothing")


def test_a_malformed_option_is_a_usage_error(no_database):
    args = ["load-table", "t.csv", "--dataset-col", "b", "--text-col", "q", "--outcome-prefix", "p"]
    result = CliRunner().invoke(cli, [*args, "--split-map", "train"])
    assert result.exit_code == 2
    assert "Invalid value for '--split-map': expected KEY=VALUE" in result.output
    result = CliRunner().invoke(cli, ["evaluate", "--seeds", "42,x"])
    assert result.exit_code == 2 and "Invalid value for '--seeds': 'x' is not an integer" in (
        result.output
    )


def test_the_library_gets_the_parsed_values_and_the_cli_names_the_flag(no_database):
    # The library checks the dict it was given; its error comes back naming the flag.
    args = ["load-table", "t.csv", "--dataset-col", "b", "--text-col", "q", "--outcome-prefix", "p"]
    error = (
        CliRunner().invoke(cli, [*args, "--split-col", "s", "--split-map", "train=dev"]).exception
    )
    assert error.location == "--split-map"
    assert str(error) == "--split-map: train='dev': a split maps to calibration, test or skip"
    error = CliRunner().invoke(cli, [*args, "--dataset-task-type", "gsm8k=poem"]).exception
    assert error.location == "--dataset-task-type" and "unknown task type 'poem'" in str(error)
    error = CliRunner().invoke(cli, ["evaluate", "--sweep-k", "4,0"]).exception
    assert str(error) == "--sweep-k: k must be at least 1, got 0"
