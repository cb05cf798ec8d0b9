"""Reading what a command takes from a file: questions (or vectors) as JSONL, one per line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from avengers_store.errors import InputError


def read_jsonl(path: str, *, allow_vectors: bool) -> list[Any]:
    """``{"text": ...}`` (or ``{"vector": [...]}`` when allowed) per line; blank lines skipped."""
    stream = sys.stdin if path == "-" else None
    name = "stdin" if path == "-" else path
    try:
        lines = stream.read().splitlines() if stream else Path(path).read_text("utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", location=name) from exc
    items: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON ({exc.msg})", location=where) from exc
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            items.append(record["text"])
        elif allow_vectors and isinstance(record, dict) and isinstance(record.get("vector"), list):
            items.append(record["vector"])
        else:
            wanted = '{"text": "..."} or {"vector": [...]}' if allow_vectors else '{"text": "..."}'
            raise InputError(f"expected an object like {wanted}", location=where)
    return items
