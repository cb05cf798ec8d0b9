"""Options that several commands share, declared once as decorators so that their names, types,
defaults and help agree everywhere. An option used by one command stays with that command.

Decorators without arguments are used bare (``@options.yes``); the ones whose default or help
depends on the command take keywords (``@options.top_n(default=1, help=...)``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
from avengers_store.cli.param_types import KeyValues

from avengers_store.answering.chat import DEFAULT_MAX_TOKENS
from avengers_store.calibration.fit import ALGORITHMS, STRATIFY
from avengers_store.client_core import DEFAULT_TIMEOUT
from avengers_store.routing import METHODS, OOD_POLICIES

F = TypeVar("F", bound=Callable[..., Any])


# --- output --------------------------------------------------------------------------------


def output_format(func: F) -> F:
    """``--json`` / ``--csv`` (default: an aligned table); the command receives ``fmt``."""
    func = click.option("--csv", "fmt", flag_value="csv", help="Print CSV.")(func)
    func = click.option("--json", "fmt", flag_value="json", help="Print JSON.")(func)
    return click.option("--table", "fmt", flag_value="table", default=True, hidden=True)(func)


def json_output(func: F) -> F:
    """``--json`` for commands that print one result; the command receives ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def yes(func: F) -> F:
    """``--yes``: skip the confirmation of a destructive command."""
    return click.option("--yes", is_flag=True, help="Do not ask for confirmation.")(func)


# --- loading files -------------------------------------------------------------------------


def id_col(func: F) -> F:
    return click.option("--id-col", help="Column holding each query's id (kept as external_id).")(
        func
    )


def answer_col(func: F) -> F:
    return click.option("--answer-col", help="Column holding the reference answer.")(func)


def split_col(func: F) -> F:
    return click.option(
        "--split-col",
        help="Column holding each row's split (else each dataset draws a seeded split).",
    )(func)


def split_map(*, help: str) -> Callable[[F], F]:
    """``--split-map train=calibration,test=test``: the command receives a dict."""
    return click.option("--split-map", type=KeyValues(), help=help)


def calibration_fraction(func: F) -> F:
    return click.option(
        "--calibration-fraction",
        type=float,
        default=0.7,
        show_default=True,
        help="Without --split-col: share of each dataset's distinct queries drawn for calibration.",
    )(func)


def split_seed(func: F) -> F:
    return click.option(
        "--seed",
        type=int,
        default=42,
        show_default=True,
        help="Without --split-col: seed of the drawn split.",
    )(func)


def replace(*, help: str) -> Callable[[F], F]:
    return click.option("--replace", is_flag=True, help=help)


# --- clustering ----------------------------------------------------------------------------


def k(*, default: int = 64) -> Callable[[F], F]:
    # A plain int: the library checks the range and the error names --k.
    return click.option(
        "--k", type=int, default=default, show_default=True, help="Number of clusters."
    )


def algorithm(func: F) -> F:
    return click.option(
        "--algorithm",
        type=click.Choice(ALGORITHMS),
        default="kmeans",
        show_default=True,
        help="scikit-learn algorithm; centroids are member means for all of them.",
    )(func)


def stratify(*, default: str | None, help: str) -> Callable[[F], F]:
    return click.option(
        "--stratify",
        type=click.Choice(STRATIFY),
        default=default,
        show_default=default is not None,
        help=help,
    )


# --- routing and answering -----------------------------------------------------------------


# The routing options every routing command takes: (flag, Policy field, click settings). A
# command decorated with ``routing`` receives them as ``routing``, a dict of the Policy fields
# given (what ``client.route(..., **routing)`` and the gateway's default policy take).
ROUTING_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "--method",
        "method",
        {
            "type": click.Choice(sorted(METHODS)),
            "help": "Routing rule: avengers (16 nearest clusters, weighted, shrunk toward each "
            "model's prior; the default) or paper (the nearest cluster's means).",
        },
    ),
    (
        "--tradeoff",
        "tradeoff",
        {
            "type": click.FloatRange(0, 1),
            "help": "Rank by TRADEOFF x expected quality + (1 - TRADEOFF) x low expected cost, "
            "both normalised over the candidates: 1 is the plain ranking (with costs shown), 0 the "
            "cheapest model.",
        },
    ),
    (
        "--max-cost",
        "max_cost",
        {
            "type": click.FloatRange(min=0),
            "help": "Keep to models whose expected cost of the request is at most this (in the "
            "models' price currency); when none is, the cheapest is used and flagged over budget.",
        },
    ),
    (
        "--max-latency-ms",
        "max_latency_ms",
        {
            "type": click.FloatRange(min=0),
            "help": "Keep to models whose expected latency (measured from the route log near the "
            "query) is at most this many milliseconds; when none is, the cheapest is used and "
            "flagged over budget.",
        },
    ),
    (
        "--latency-weight",
        "latency_weight",
        {
            "type": click.FloatRange(0, 1),
            "help": "The trade-off's share for low expected latency: (1 - W) x the quality-cost "
            "utility + W x (1 - normalised latency).",
        },
    ),
    (
        "--ood-policy",
        "ood_policy",
        {
            "type": click.Choice(OOD_POLICIES),
            "help": "What a query unlike the calibration queries gets: flag (route as usual, marked "
            "ood; the default), best-overall (the best models over all calibration data) or widen "
            "(Model-Switch over the top models when answering).",
        },
    ),
)


def method(func: F) -> F:
    """``--method`` alone (commands that replay a routing method)."""
    flag, field, settings = ROUTING_OPTIONS[0]
    return click.option(flag, field, default="avengers", show_default=True, **settings)(func)


def routing(func: F) -> F:
    """The routing options (``ROUTING_OPTIONS``); the command receives ``routing``: the Policy
    fields given, by name."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = {field: kwargs.pop(field) for _, field, _ in ROUTING_OPTIONS}
        return func(*args, routing={k: v for k, v in given.items() if v is not None}, **kwargs)

    for flag, field, settings in reversed(ROUTING_OPTIONS):
        command = click.option(flag, field, **settings)(command)
    return command  # type: ignore[return-value]


def top_n(*, default: int | None, help: str) -> Callable[[F], F]:
    return click.option(
        "--top-n",
        type=click.IntRange(min=1),
        default=default,
        show_default=default is not None,
        help=help,
    )


def samples(*, default: int, help: str) -> Callable[[F], F]:
    return click.option(
        "--samples", type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


def concurrency(*, help: str) -> Callable[[F], F]:
    return click.option(
        "--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help=help
    )


def max_tokens(func: F) -> F:
    return click.option(
        "--max-tokens",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_TOKENS,
        show_default=True,
        help="Cap on the length of each sampled completion (tokens).",
    )(func)


def timeout(*, help: str) -> Callable[[F], F]:
    """``--timeout SECONDS`` (default: an ask's, 120 s)."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help=help,
    )


def jsonl_file(*, help: str) -> Callable[[F], F]:
    """``--file``: questions as JSONL (``-`` for stdin); the command receives ``file_``."""
    return click.option(
        "--file", "file_", type=click.Path(dir_okay=False, allow_dash=True), help=help
    )
