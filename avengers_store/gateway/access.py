"""The access log: one structured line per request on the ``avengers.gateway.access`` logger,
a JSON object with the method, path, status, latency, route id, key name, the model that
answered, tokens in and out, and whether it streamed. It never holds a secret or a prompt: keys
appear by name, texts not at all.

The ``Guard`` middleware opens a request's ``AccessRecord`` and writes the line when the
response is over; handlers add what they learn to it (``note``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("avengers.gateway.access")


@dataclass
class AccessRecord:
    method: str
    path: str
    status: int = 0
    latency_ms: float = 0.0
    route_id: str | None = None
    key: str | None = None
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    stream: bool | None = None
    error: str | None = None  # the error code answered, if any

    def line(self) -> str:
        # The declared fields only, as asdict read them, without its deep copy of each value.
        fields = {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}
        fields["latency_ms"] = round(self.latency_ms, 1)
        return json.dumps(fields, separators=(",", ":"))


_FIELDS = tuple(f.name for f in dataclasses.fields(AccessRecord))

current: ContextVar[AccessRecord | None] = ContextVar("avengers_access", default=None)


def note(**fields: Any) -> None:
    """Add ``fields`` (of ``AccessRecord``) to the line of the request being answered."""
    record = current.get()
    if record is None:
        return
    for name, value in fields.items():
        setattr(record, name, value)
