"""Named SQL statements, kept in ``.sql`` files beside the code (``avengers_store/queries/``,
one file per area: ``calibration.sql``, ``production.sql``, ...), as Procrastinate keeps its
``queries.sql``.

A file holds statements each under a ``-- name: <name>`` line; comment lines after it say what
the statement is for. A module reads one by name when it is imported (``query("production",
"pending")``), so a missing name fails at import, not on the first call. Values are always
bound (``%s`` / ``%(name)s`` placeholders), never formatted into the text; statements that must
name a table or column at run time compose it with ``psycopg.sql``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

PACKAGE = "avengers_store.queries"
_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.M)


@cache
def area(name: str) -> dict[str, str]:
    """The statements of ``<name>.sql``, by name, each with its comment lines."""
    text = resources.files(PACKAGE).joinpath(f"{name}.sql").read_text(encoding="utf-8")
    heads = list(_HEADER.finditer(text))
    if text[: heads[0].start() if heads else len(text)].strip(" \n-"):
        raise ValueError(f"{name}.sql: text before the first '-- name:' line")
    found: dict[str, str] = {}
    for head, after in zip(heads, [*heads[1:], None], strict=True):
        body = text[head.end() : after.start() if after else len(text)].strip()
        if head.group(1) in found:
            raise ValueError(f"{name}.sql: the name {head.group(1)!r} is used twice")
        found[head.group(1)] = body + "\n"
    return found


def query(area_name: str, name: str) -> str:
    """The statement ``name`` of ``<area_name>.sql``."""
    statements = area(area_name)
    if name not in statements:
        raise KeyError(f"{area_name}.sql has no query named {name!r}")
    return statements[name]
