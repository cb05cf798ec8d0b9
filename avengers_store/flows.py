"""Stepping a generator that yields the I/O it needs and is sent each result: the one loop step
the sync and async drivers share (the sampling protocol's and the clients' flows). A driver
calls ``advance`` with the last step's result (or the error it raised) and either does the next
step or, at ``Done``, has the generator's return value."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Done:
    """The generator returned ``value``."""

    value: Any


def advance(
    flow: Generator[Any, Any, Any], value: Any = None, error: BaseException | None = None
) -> Any:
    """The next step ``flow`` yields once sent ``value`` (or thrown ``error``), or ``Done``."""
    try:
        return flow.throw(error) if error is not None else flow.send(value)
    except StopIteration as stop:
        return Done(stop.value)
