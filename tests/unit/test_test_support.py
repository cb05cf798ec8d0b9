"""Tests share helpers through one support module, avengers_store.testing: no test imports
another test module or a conftest, so moving or deleting one test file never breaks another."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def test_no_test_imports_another_test_module_or_a_conftest():
    offenders = {
        str(path.relative_to(TESTS)): name
        for path in TESTS.rglob("*.py")
        for name in imported_modules(path)
        if name.startswith((".", "tests")) or name.split(".")[-1] == "conftest"
    }
    assert offenders == {}


def test_the_check_sees_an_import_of_a_conftest(tmp_path):
    module = tmp_path / "test_x.py"
    module.write_text("from tests.gateway.conftest import set_endpoints\nfrom . import conftest\n")
    assert imported_modules(module) == ["tests.gateway.conftest", "."]
