"""Where the test data lives: the public outcome tables beside the checkout, and rows written
as the importers read them (JSONL, CSV, Parquet)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

SHARED_DATA_ENV = "AVENGERS_SHARED_DATA"
REPO = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """The public outcome tables: ``$AVENGERS_SHARED_DATA``, else ``../shared/data`` beside the
    checkout."""
    configured = os.environ.get(SHARED_DATA_ENV)
    return Path(configured) if configured else REPO.parent / "shared" / "data"


ROUTERDC = shared_data() / "routerdc_7models"
LLMROUTER = shared_data() / "llmrouter_9models"


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSONL, CSV or Parquet, chosen by the file's extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path
