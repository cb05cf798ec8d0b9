"""SQL with names: a statement with a join lives in sql/ (a function or view) or in
avengers_store/queries/ under a ``-- name:`` line, read by name; every named query is used and
every use names one that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from avengers_store.store import queries

REPO = Path(__file__).resolve().parents[2]
CODE = [REPO / "avengers_store", REPO / "cli"]
QUERY_FILES = sorted((REPO / "avengers_store" / "queries").glob("*.sql"))
_STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.I)


def modules() -> list[Path]:
    # Test support writes small fixtures with plain SQL on purpose (testing/__init__).
    return [p for root in CODE for p in sorted(root.rglob("*.py")) if "testing" not in p.parts]


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string literal or f-string in the file that reads as a statement."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
        else:
            continue
        if _STATEMENT.match(text):
            found.append((node.lineno, text))
    return found


def uses() -> set[tuple[str, str]]:
    """(area, name) of every ``query("area", "name")`` call in the code."""
    found = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "query"
                and len(node.args) == 2
                and all(isinstance(a, ast.Constant) for a in node.args)
            ):
                found.add((node.args[0].value, node.args[1].value))
    return found


def test_no_statement_with_a_join_is_written_in_python():
    joined = [
        f"{path.relative_to(REPO)}:{line}"
        for path in modules()
        for line, text in sql_literals(path)
        if re.search(r"\bJOIN\b", text, re.I)
    ]
    assert joined == []


def test_every_named_query_is_used_and_every_use_exists():
    defined = {(p.stem, name) for p in QUERY_FILES for name in queries.area(p.stem)}
    used = uses()
    assert QUERY_FILES and used
    assert used - defined == set(), "query() names a statement no file defines"
    assert defined - used == set(), "a named statement nothing reads"


def test_the_loader_keeps_each_statement_with_its_comments(tmp_path, monkeypatch):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "area.sql").write_text(
        "-- name: first\n-- Why it exists.\nSELECT 1\n\n-- name: second\nSELECT %s\n"
    )
    (folder / "twice.sql").write_text("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")
    monkeypatch.setattr(queries.resources, "files", lambda _: folder)
    queries.area.cache_clear()
    try:
        assert queries.area("area") == {
            "first": "-- Why it exists.\nSELECT 1\n",
            "second": "SELECT %s\n",
        }
        with pytest.raises(KeyError, match="area.sql has no query named 'third'"):
            queries.query("area", "third")
        with pytest.raises(ValueError, match="the name 'a' is used twice"):
            queries.area("twice")
    finally:
        queries.area.cache_clear()
