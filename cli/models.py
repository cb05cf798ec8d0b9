"""``avengers models``: the model pool. Subcommands live in the modules that own their logic
(they attach themselves to this group); this module only defines the group."""

from __future__ import annotations

import click


@click.group("models")
def command() -> None:
    """Manage the model pool: add models, select a set, evaluate a model on calibration queries.

    \b
    Example:
      avengers models add qwen2.5-7b --endpoint http://vllm-qwen:8000/v1
      avengers models select --budget 3 --apply
    """
