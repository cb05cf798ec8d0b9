"""The ``avengers`` command run for tests: in-process through click's runner, or as a real
process with this interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

from avengers_store.cli.main import cli
from click.testing import CliRunner


def run_cli(*args: str):
    """Run ``avengers ARGS`` in-process; raises with the output when it fails."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exit_code != 0:
        raise AssertionError(
            f"avengers {' '.join(args)} exited {result.exit_code}: {result.output}"
        ) from result.exception
    return result


def run_cli_error(*args: str):
    """Run ``avengers ARGS`` in-process expecting failure; returns the exception raised."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    assert result.exit_code != 0, result.output
    return result.exception


def run_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``avengers ARGS`` as a user does: a real process with this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "avengers_store.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
