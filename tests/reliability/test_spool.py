"""Nothing answered is lost: with the store down, a gateway's route-log rows are fsync'd to its
spool before each answer is sent, so a ``kill -9`` of the gateway right after loses none; the next
gateway replays them into the store (once each, by route id) when it starts.

A real ``avengers serve`` process, a throwaway embedded server of the module's own (stopped and
started), a scripted model server that holds the answers until the store is down.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.store import connections
from avengers_store.testing import (
    RANKED_MODELS,
    OwnServer,
    add_scripted_store,
    free_port,
    log_rows,
    own_postgres_server,
    scripted_server,
)

pytestmark = pytest.mark.timeout(240)

QUESTION = "What is 6 times 7? Answer with a number."
ANSWERED = 6


@pytest.fixture(scope="module")
def llm():
    with scripted_server() as server:
        yield server


@pytest.fixture(scope="module")
def server(llm) -> OwnServer:
    with own_postgres_server(prefix="avengers-spool-") as own:
        with connections.connect(own.url) as conn:
            add_scripted_store(conn, llm.base_url)
            conn.commit()
        yield own


def serve(url: str, spool: Path, output: Path) -> tuple[subprocess.Popen, str]:
    """``avengers serve`` on a free port, ready; its output goes to ``output``."""
    port = free_port()
    env = {**os.environ, "AVENGERS_DATABASE_URL": url}
    with open(output, "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "avengers_store.cli.main", "serve", "--no-auth", "--port",
             str(port), "--spool-dir", str(spool)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    ends = time.monotonic() + 90
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < ends, output.read_text()
        time.sleep(0.1)


def chats(llm) -> int:
    """Chat completions the model server was asked for (its embeddings are counted apart)."""
    with llm.lock:
        return sum(r["path"] == "/v1/chat/completions" for r in llm.requests)


def metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_kill_9_with_the_store_down_loses_no_answered_row(server, llm, tmp_path, record):
    spool, output = tmp_path / "spool", tmp_path / "gateway.log"
    gate = threading.Event()
    for name in RANKED_MODELS:
        llm.script(name, {"gate": gate, "texts": [r"\boxed{42}"]})
    chat = {"model": "avengers", "messages": [{"role": "user", "content": QUESTION}]}
    proc, base = serve(server.url, spool, output)
    try:
        asked = chats(llm)
        with concurrent.futures.ThreadPoolExecutor(ANSWERED) as pool:
            futures = [
                pool.submit(httpx.post, base + "/v1/chat/completions", json=chat, timeout=60)
                for _ in range(ANSWERED)
            ]
            ends = time.monotonic() + 60
            while chats(llm) - asked < ANSWERED:  # all routed, waiting on the model
                assert time.monotonic() < ends
                time.sleep(0.02)
            server.stop()
            gate.set()
            answers = [f.result() for f in futures]
        answered_at = time.perf_counter()
        spooled = metric(base, "avengers_gateway_route_log_rows_total", outcome="spooled")
        held = metric(base, "avengers_gateway_route_log_spool_bytes")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_s = time.perf_counter() - answered_at
    finally:
        if proc.poll() is None:
            proc.kill()
        for name in RANKED_MODELS:
            llm.answers(name, r"\boxed{42}")
    assert [a.status_code for a in answers] == [200] * ANSWERED, [a.text for a in answers]
    route_ids = [a.headers["x-avengers-route-id"] for a in answers]
    on_disk = "".join(p.read_text() for p in spool.glob("*.jsonl"))
    assert all(r in on_disk for r in route_ids)
    assert spooled == ANSWERED and held > 0

    server.start()
    assert log_rows(server.url, route_ids) == {}  # nothing of them reached the store
    proc, base = serve(server.url, spool, output)
    try:
        began = time.perf_counter()
        while len(found := log_rows(server.url, route_ids)) < ANSWERED:
            assert time.perf_counter() - began < 30, found
            time.sleep(0.05)
        replayed_s = time.perf_counter() - began
        replayed = metric(base, "avengers_gateway_route_log_rows_total", outcome="replayed")
        # A second replay of the same rows would add none (idempotent by route id).
        again = httpx.post(base + "/v1/chat/completions", json=chat, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert replayed == ANSWERED and again.status_code == 200
    assert all(row[3] == "42" for row in found.values()), found
    assert list(spool.glob("*.jsonl")) == []
    with connections.connect(server.url) as conn:
        dupes = conn.execute(
            "SELECT count(*) - count(DISTINCT route_id) FROM avengers.route_log"
        ).fetchone()[0]
    assert dupes == 0
    record(
        "kill -9 of the gateway with the store down after 6 answers",
        answered=ANSWERED,
        spooled=int(spooled),
        spool_bytes=int(held),
        killed_after_s=round(killed_s, 3),
        rows_after_restart=len(found),
        replayed_within_s=round(replayed_s, 2),
    )


def test_a_full_spool_turns_new_requests_away_until_the_store_is_back(server, llm, tmp_path):
    """Room for one row: the answers' rows that do not fit wait in memory; while the spool is
    full and the store down, a new request gets 503 naming the spool and /ready says why; once
    the store is back every row is written and requests are answered again."""
    gate = threading.Event()
    for name in RANKED_MODELS:
        llm.script(name, {"gate": gate, "texts": [r"\boxed{42}"]})
    chat = {"model": "avengers", "messages": [{"role": "user", "content": QUESTION}]}
    settings = GatewaySettings(auth=False)
    overrides = {"database_url": server.url, "spool_dir": str(tmp_path), "spool_max_bytes": 1500}
    try:
        with gateway_server(settings, **overrides) as gw:
            url = gw.base_url + "/v1/chat/completions"
            asked = chats(llm)
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                futures = [pool.submit(httpx.post, url, json=chat, timeout=60) for _ in range(3)]
                while chats(llm) - asked < 3:
                    time.sleep(0.02)
                server.stop()
                gate.set()
                answers = [f.result() for f in futures]
            assert [a.status_code for a in answers] == [200] * 3, [a.text[-400:] for a in answers]
            turned_away = httpx.post(url, json=chat, timeout=60)
            ready = httpx.get(gw.base_url + "/ready", timeout=10)
            full = metric(gw.base_url, "avengers_gateway_route_log_spool_full")
            server.start()
            began = time.perf_counter()
            while (again := httpx.post(url, json=chat, timeout=60)).status_code != 200:
                assert time.perf_counter() - began < 30, again.text
                time.sleep(0.2)
            back_s = time.perf_counter() - began
            route_ids = [a.headers["x-avengers-route-id"] for a in answers]
            while len(log_rows(server.url, route_ids)) < 3:
                assert time.perf_counter() - began < 30
                time.sleep(0.05)
            emptied = metric(gw.base_url, "avengers_gateway_route_log_spool_full")
    finally:
        server.start()
        for name in RANKED_MODELS:
            llm.answers(name, r"\boxed{42}")
    assert [a.status_code for a in answers] == [200] * 3
    assert turned_away.status_code == 503 and "spool is full" in turned_away.text
    assert turned_away.headers["retry-after"] == "5"
    assert ready.status_code == 503 and "spool is full" in ready.text
    assert full == 1 and emptied == 0 and back_s < 15
