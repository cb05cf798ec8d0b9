"""Printing results: JSON for programs, aligned tables for people, CSV for spreadsheets."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import click


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def to_json(value: Any) -> str:
    return json.dumps(value, default=_default, indent=2, ensure_ascii=False)


def echo_json(value: Any) -> None:
    click.echo(to_json(value))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    return str(value)


def echo_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    if not rows:
        click.echo("(no rows)")
        return
    columns = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def echo_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    rows = list(rows)
    if not rows:
        return
    writer = csv.DictWriter(
        sys.stdout, fieldnames=list(columns or rows[0].keys()), extrasaction="ignore"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: _cell(v) if isinstance(v, (list, tuple)) else v for k, v in row.items()}
        )


def emit(rows: Sequence[Mapping[str, Any]], fmt: str, columns: Sequence[str] | None = None) -> None:
    """Print rows as ``table``, ``json`` or ``csv``."""
    if fmt == "json":
        echo_json(list(rows))
    elif fmt == "csv":
        echo_csv(rows, columns)
    else:
        echo_table(rows, columns)
