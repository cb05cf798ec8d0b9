"""Fixtures of the reliability suite: measured bounds are recorded, and, when
``$AVENGERS_RELIABILITY_REPORT`` names a file, appended to it as JSON lines (docs/reliability.md is
written from such a run)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

REPORT_ENV = "AVENGERS_RELIABILITY_REPORT"


@pytest.fixture
def record(request) -> Callable[..., None]:
    """``record(case, **figures)``: keep a measured figure of this test (seconds, rows)."""

    def write(case: str, **figures: object) -> None:
        line = {"test": request.node.nodeid, "case": case, **figures}
        request.node.user_properties.append((case, figures))
        path = os.environ.get(REPORT_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(line, default=str) + "\n")

    return write
