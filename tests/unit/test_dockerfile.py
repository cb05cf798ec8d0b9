"""The Dockerfile builds the gateway image from the runtime lock, runs as a non-root user, checks
/health, and is clean under hadolint (no engine here, so the build itself is not run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from avengers_store.testing import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def hadolint(path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("hadolint is not installed (pip install '.[docs]')")
    return subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)


def test_dependencies_come_from_the_lock_with_hashes():
    steps = instructions(DOCKERFILE.read_text())
    runs = [args for word, args in steps if word == "RUN"]
    lock = next(r for r in runs if "requirements/runtime.txt" in r)
    assert "--require-hashes" in lock
    package = next(r for r in runs if "pip install" in r and r is not lock)
    assert "--no-deps" in package  # nothing resolved beyond the lock
    assert ("COPY", "requirements/runtime.txt requirements/runtime.txt") in steps


def test_runs_as_a_non_root_user_and_checks_health():
    steps = instructions(DOCKERFILE.read_text())
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    (check,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "/health" in check
    entry = [args for word, args in steps if word == "ENTRYPOINT"]
    assert entry == ['["avengers"]']


def test_compose_gateway_uses_this_image():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert services["gateway"]["build"] == "."
    assert services["gateway"]["command"][0] == "serve"


def test_hadolint_passes():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_root_image(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("USER 10001", "USER root"))
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3002" in result.stdout
