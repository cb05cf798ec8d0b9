"""The embedded server under load, as clients that configured nothing use it: killed, it is
started again by one client while every other call fails with ``StoreUnavailable`` (the gateway:
503 with ``Retry-After``), never a driver error or a 500; stopped with ``avengers db stop``, it
stops within a bound, says so, and stays stopped until ``avengers db start``.

A throwaway ``$AVENGERS_HOME`` of the module's own, so its server is the default one of every
client and process here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from avengers_store import AvengersClient
from avengers_store.errors import StoreUnavailable
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.store import connections, embedded, schema
from avengers_store.testing import RANKED_MODELS, add_scripted_store, scripted_server

pytestmark = pytest.mark.timeout(240)

QUESTION = "What is 6 times 7?"
STOP_BOUND_S = 20.0  # the shutdown `db stop` reports: 15 s fast, then an immediate one
COMMAND_BOUND_S = 60.0  # the whole command, Python start-up on a loaded machine included
BACK_BOUND_S = 10.0  # after a kill -9, clients route again within this


@pytest.fixture(scope="module")
def llm():
    with scripted_server() as server:
        for name in RANKED_MODELS:
            server.answers(name, r"\boxed{42}")
        yield server


@pytest.fixture(scope="module")
def home(llm) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="avengers-embedded-"))
    home.chmod(0o755)
    try:
        url = embedded.start(home)
        schema.upgrade(url)
        with connections.connect(url) as conn:
            add_scripted_store(conn, llm.base_url)
            conn.commit()
        yield home
    finally:
        try:
            embedded.stop(home)
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def default_home(home, monkeypatch) -> Path:
    """Clients of this test find the module's server as their default one."""
    for name in list(os.environ):
        if name.startswith(("AVENGERS_DATABASE_URL", "AVENGERS_READ_DATABASE_URL", "PG")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AVENGERS_HOME", str(home))
    embedded.start(home)
    return home


def log_lines(home: Path, text: str) -> int:
    log = embedded.data_dir(home) / "log"
    return log.read_text(errors="replace").count(text) if log.exists() else 0


class Load:
    """Sync clients (no URL: the embedded default) and gateway requests in loops, each outcome
    recorded with its time."""

    def __init__(self, gateway_url: str, threads: int = 3) -> None:
        self.gateway_url = gateway_url
        self.outcomes: list[tuple[float, str, object]] = []
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self.client) for _ in range(threads)]
        self.workers.append(threading.Thread(target=self.gateway))

    def note(self, kind: str, what: object) -> None:
        with self.lock:
            self.outcomes.append((time.perf_counter(), kind, what))

    def client(self) -> None:
        with AvengersClient(pool_size=1) as client:
            while not self.done.is_set():
                try:
                    client.route(QUESTION, 2)
                    self.note("client", "ok")
                except Exception as exc:  # noqa: BLE001 - every kind is recorded and checked
                    self.note("client", exc)
                    time.sleep(0.02)

    def gateway(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self.done.is_set():
                r = http.post(self.gateway_url + "/v1/route", json={"input": QUESTION})
                self.note("gateway", r)
                if r.status_code != 200:
                    time.sleep(0.02)

    def __enter__(self) -> Load:
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for w in self.workers:
            w.join(timeout=60)

    def since(self, at: float) -> list[tuple[float, str, object]]:
        with self.lock:
            return [o for o in self.outcomes if o[0] >= at]

    def wait_for_success_after(self, at: float, timeout: float) -> float:
        """Seconds from ``at`` to the first client and gateway success after it."""
        ends = time.perf_counter() + timeout
        while time.perf_counter() < ends:
            seen = self.since(at)
            ok = {k for _, k, w in seen if w == "ok" or getattr(w, "status_code", 0) == 200}
            if ok == {"client", "gateway"}:
                return (
                    max(
                        min(
                            t
                            for t, k, w in seen
                            if k == kind and (w == "ok" or getattr(w, "status_code", 0) == 200)
                        )
                        for kind in ok
                    )
                    - at
                )
            time.sleep(0.05)
        raise AssertionError(f"no success within {timeout} s: {summary(self.since(at))}")


def summary(outcomes) -> Counter:
    out: Counter = Counter()
    for _, kind, what in outcomes:
        if isinstance(what, httpx.Response):
            out[f"{kind} {what.status_code}"] += 1
        elif isinstance(what, BaseException):
            out[f"{kind} {type(what).__module__}.{type(what).__name__}"] += 1
        else:
            out[f"{kind} {what}"] += 1
    return out


def check_contract(outcomes) -> None:
    """Every failure is StoreUnavailable; every gateway answer 200, or 503 with Retry-After."""
    for _, _, what in outcomes:
        if isinstance(what, BaseException):
            assert isinstance(what, StoreUnavailable), repr(what)
        elif isinstance(what, httpx.Response):
            assert what.status_code in (200, 503), what.text
            if what.status_code == 503:
                assert what.headers.get("retry-after") == "1"
                assert what.json()["error"]["type"] == "service_unavailable"


def test_kill_9_under_load_one_restart_and_only_store_unavailable(default_home, record):
    home = default_home
    ready_before = log_lines(home, "ready to accept connections")
    with (
        gateway_server(GatewaySettings(auth=False)) as gw,
        Load(gw.base_url) as load,
    ):
        load.wait_for_success_after(time.perf_counter(), 30)
        time.sleep(0.5)
        pid = int((embedded.data_dir(home) / "postmaster.pid").read_text().split()[0])
        killed_at = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        back_s = load.wait_for_success_after(killed_at + 0.001, 30)
        time.sleep(1.0)
    after = load.since(killed_at)
    check_contract(load.outcomes)
    # One restart: one more start logged, and no second postmaster refused by the first's lock.
    assert log_lines(home, "ready to accept connections") == ready_before + 1
    assert log_lines(home, 'lock file "postmaster.pid" already exists') == 0
    assert back_s < BACK_BOUND_S
    record(
        "kill -9 of the embedded postmaster under 3 clients and a gateway",
        bound_s=BACK_BOUND_S,
        back_s=round(back_s, 2),
        outcomes_after=dict(summary(after)),
        restarts=1,
    )


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVENGERS_", "PG"))}
    return subprocess.run(
        [sys.executable, "-m", "avengers_store.cli.main", *args],
        env={**env, "AVENGERS_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_stop_under_load_stops_within_a_bound_and_stays_stopped(default_home, record):
    home = default_home
    with (
        gateway_server(GatewaySettings(auth=False)) as gw,
        Load(gw.base_url) as load,
    ):
        load.wait_for_success_after(time.perf_counter(), 30)
        began = time.perf_counter()
        stopped = cli(home, "db", "stop")
        stop_s = time.perf_counter() - began
        time.sleep(2.0)  # the clients keep asking: none may start it again
        still_stopped = embedded.running_url(home) is None
        stopped_outcomes = load.since(began + stop_s + 0.5)
        status = cli(home, "db", "status")
        started_at = time.perf_counter()
        started = cli(home, "db", "start")
        back_s = load.wait_for_success_after(started_at, 30)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the embedded server" in stopped.stdout and "db start" in stopped.stdout
    assert "Traceback" not in stopped.stderr + stopped.stdout
    assert stop_s < COMMAND_BOUND_S
    assert still_stopped
    assert status.returncode == 1 and "avengers db start" in status.stderr
    assert "Traceback" not in status.stderr
    check_contract(load.outcomes)
    refused = [w for _, _, w in stopped_outcomes if isinstance(w, BaseException)]
    assert refused and all("avengers db start" in str(e) for e in refused)
    assert not [
        w for _, k, w in stopped_outcomes if w == "ok" or getattr(w, "status_code", 0) == 200
    ]
    assert started.returncode == 0 and "running" in started.stdout
    said_s = float(re.search(r"shutdown, ([0-9.]+) s\)", stopped.stdout).group(1))
    assert said_s < STOP_BOUND_S
    record(
        "avengers db stop under 3 clients and a gateway",
        bound_s=STOP_BOUND_S,
        command_bound_s=COMMAND_BOUND_S,
        command_s=round(stop_s, 2),
        shutdown_s=said_s,
        stayed_stopped_s=2.0,
        back_after_db_start_s=round(back_s, 2),
        outcomes_while_stopped=dict(summary(stopped_outcomes)),
    )
