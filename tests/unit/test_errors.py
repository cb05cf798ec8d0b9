"""The library's InputErrors name its own parameters, never a command-line flag: the CLI maps
parameters to flags when it prints (avengers_store.cli.commands.Command)."""

from __future__ import annotations

import ast
from pathlib import Path

import avengers_store
from avengers_store.errors import InputError

PACKAGE = Path(avengers_store.__file__).parent


def _leading_text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    return None


def test_no_library_location_is_a_flag():
    flags = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                text = _leading_text(keyword.value) if keyword.arg == "location" else None
                if text is not None and text.startswith("-"):
                    flags.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {text}")
    assert flags == []


def test_the_check_sees_a_flag():
    # The walk above would report this call (guards against a check that finds nothing).
    call = ast.parse('InputError("bad", location=f"--k {1}")').body[0].value
    assert _leading_text(call.keywords[0].value) == "--k "


def test_input_error_keeps_message_and_location_apart():
    error = InputError("must be at least 1, got 0", location="k")
    assert (error.message, error.location) == ("must be at least 1, got 0", "k")
    assert str(error) == "k: must be at least 1, got 0"
    assert str(InputError("no location")) == "no location"
