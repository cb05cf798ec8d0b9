"""kill -9 at the worst moments: the client process (a real ``avengers`` process) or the
PostgreSQL postmaster, during a re-cluster (fit, COPY, activation), an outcomes import, an
``embed`` run and a gateway request. After each: the same rows as before (or, for ``embed``,
the batches committed and then the rest on a second run), no orphan rows, and the old
clustering version still serving (or, when a killed postmaster's backend finished the activation
it had in hand, the new version, whole: never a mix).

A throwaway embedded server of the module's own, so killing its postmaster leaves the session's
server alone. The moment is found by watching ``pg_stat_activity`` for the statement of the
phase, not by sleeping.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from avengers_store.cli.testing import run_process

from avengers_store import AvengersClient
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.store import connections, schema
from avengers_store.testing import (
    MODELS,
    OwnServer,
    free_port,
    own_postgres_server,
    scripted_server,
    seed_store,
)

pytestmark = pytest.mark.timeout(240)

DIM = 16
PER_BLOB = 1500


@pytest.fixture(scope="module")
def llm():
    with scripted_server() as server:
        yield server


@pytest.fixture(scope="module")
def server() -> OwnServer:
    with own_postgres_server(prefix="avengers-crash-") as own:
        with connections.connect(own.url) as conn:
            syn = seed_store(conn, per_blob=PER_BLOB, dim=DIM)
            conn.commit()
        done = run_process("recluster", "--k", "12", env={"AVENGERS_DATABASE_URL": own.url})
        assert done.returncode == 0, done.stderr
        own.syn = syn  # type: ignore[attr-defined]
        yield own


@pytest.fixture
def up(server) -> OwnServer:
    ensure_running(server)
    return server


def ensure_running(server: OwnServer) -> None:
    ends = time.monotonic() + 60
    while True:
        try:
            server.start()
            with psycopg.connect(server.url, connect_timeout=5) as c:
                c.execute("SELECT 1")
            return
        except Exception:  # noqa: BLE001 - the old backends may still be exiting
            if time.monotonic() > ends:
                raise
            time.sleep(0.2)


def spawn(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "avengers_store.cli.main", *args],
        env={**os.environ, "AVENGERS_DATABASE_URL": url, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_statement(url: str, pattern: str, proc: subprocess.Popen, timeout: float = 90) -> str:
    """Poll pg_stat_activity until another session runs a statement matching ``pattern``
    (ILIKE); returns it."""
    ends = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as c:
        while time.monotonic() < ends:
            row = c.execute(
                "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND state = 'active' AND query ILIKE %s LIMIT 1",
                (pattern,),
            ).fetchone()
            if row:
                return row[0]
            assert proc.poll() is None, f"finished before {pattern!r}: {proc.communicate()}"
            time.sleep(0.002)
    raise AssertionError(f"no statement like {pattern!r} within {timeout} s")


def kill(proc: subprocess.Popen, server: OwnServer, target: str) -> None:
    if target == "client":
        proc.send_signal(signal.SIGKILL)
    else:
        os.kill(server.postmaster_pid(), signal.SIGKILL)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.communicate()
    ensure_running(server)


def snapshot(url: str) -> dict:
    """Row counts of every table, the active version and orphan counts."""
    with psycopg.connect(url) as c:
        counts = {
            t: c.execute(f"SELECT count(*) FROM avengers.{t}").fetchone()[0] for t in schema.TABLES
        }
        active = c.execute("SELECT id FROM avengers.active_clustering").fetchone()
        orphans = c.execute(
            """SELECT
                 (SELECT count(*) FROM avengers.clusterings k
                  WHERE NOT EXISTS (SELECT 1 FROM avengers.centroids c
                                    WHERE c.clustering_id = k.id)),
                 (SELECT count(*) FROM avengers.query_embeddings e
                  WHERE NOT EXISTS (SELECT 1 FROM avengers.queries q WHERE q.id = e.query_id)),
                 (SELECT count(*) FROM avengers.clusterings WHERE status NOT IN ('ready', 'active'))
                 + (SELECT count(*) FROM avengers.clusterings WHERE status = 'active') - 1"""
        ).fetchone()
        scores = c.execute("SELECT count(*), sum(score) FROM avengers.outcomes").fetchone()
    return {
        "counts": counts,
        "active": active[0] if active else None,
        "orphans": orphans,
        "scores": scores,
    }


def old_version_serves(url: str, server: OwnServer, active: int) -> None:
    vector = next(iter(server.syn.vectors.values()))  # type: ignore[attr-defined]
    with AvengersClient(url) as client:
        decision = client.route(vector, 2)
    assert decision.clustering_id == active


RECLUSTER_PHASES = {
    # phase -> the statement that marks it
    "fit": "%FROM avengers.query_embeddings%",
    "copy": 'COPY "avengers".%',  # store.bulk.copy_rows quotes the names it composes
    "activation": "%activate_clustering%",
}


@pytest.mark.parametrize("target", ["client", "postmaster"])
@pytest.mark.parametrize("phase", list(RECLUSTER_PHASES))
def test_kill_during_recluster_leaves_one_whole_version_serving(up, phase, target, record):
    before = snapshot(up.url)
    proc = spawn(up.url, "recluster", "--k", "24", "--stratify", "none", "--seed", "7")
    seen = wait_for_statement(up.url, RECLUSTER_PHASES[phase], proc)
    if phase == "fit":
        time.sleep(0.3)  # the vectors are read: the fit runs in the client now
    killed_at = time.perf_counter()
    kill(proc, up, target)
    recovered_s = time.perf_counter() - killed_at
    after = snapshot(up.url)
    assert after["orphans"] == (0, 0, 0)
    if proc.returncode == 0:
        # A killed postmaster's backends finish the statement in hand before they notice: the
        # activation may still commit. Then the new version is whole and serves.
        assert target == "postmaster" and phase == "activation", seen
        assert after["active"] != before["active"]
        assert after["counts"]["clusterings"] == before["counts"]["clusterings"] + 1
        with psycopg.connect(up.url) as c:
            assert (
                c.execute(
                    "SELECT count(*) FROM avengers.centroids WHERE clustering_id = %s",
                    (after["active"],),
                ).fetchone()[0]
                == 24
            )
        old_version_serves(up.url, up, after["active"])
        outcome = "the new version committed whole before the kill took effect"
    else:
        assert after == before
        old_version_serves(up.url, up, before["active"])
        outcome = "the old version serves"
    record(
        f"kill -9 {target} during recluster {phase}",
        rows_in=sum(before["counts"].values()),
        rows_kept=sum(after["counts"].values()),
        recovered_s=round(recovered_s, 3),
        outcome=outcome,
    )


def write_outcomes(path: Path, server: OwnServer) -> int:
    syn = server.syn  # type: ignore[attr-defined]
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as out:
        w = csv.writer(out)
        w.writerow(["text", "model", "score"])
        for position, qid in enumerate(syn.query_ids["alpha"]):
            text = f"alpha blob {syn.blob_of[qid]} question {position % PER_BLOB}"
            for model in MODELS:
                w.writerow([text, model, 1.0])
                rows += 1
    return rows


@pytest.mark.parametrize("target", ["client", "postmaster"])
def test_kill_during_outcomes_import_keeps_every_row_as_it_was(up, tmp_path, target, record):
    path = tmp_path / "outcomes.csv"
    n = write_outcomes(path, up)
    before = snapshot(up.url)
    proc = spawn(up.url, "outcomes", "import", str(path), "--dataset", "alpha")
    wait_for_statement(up.url, "%outcomes%", proc)
    kill(proc, up, target)
    after = snapshot(up.url)
    assert proc.returncode != 0
    assert after == before  # same count and the same sum of scores: nothing half imported
    old_version_serves(up.url, up, before["active"])
    record(
        f"kill -9 {target} during outcomes import",
        rows_in=n,
        rows_kept=after["scores"][0],
        rows_before=before["scores"][0],
    )


def test_kill_during_gateway_request_writes_nothing_and_a_new_gateway_serves(up, llm, record):
    llm.script("model-0", {"delay": 4, "texts": [r"\boxed{1}"]})
    with psycopg.connect(up.url, autocommit=True) as c:
        c.execute(
            "UPDATE avengers.models SET endpoint = %s, served_name = 'model-0' "
            "WHERE name = 'model-0'",
            (llm.base_url,),
        )
    before = snapshot(up.url)
    chat = {"model": "model-0", "messages": [{"role": "user", "content": "1?"}]}

    def start_gateway() -> tuple[subprocess.Popen, str]:
        port = free_port()
        proc = spawn(up.url, "serve", "--no-auth", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        ends = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code < 500:
                    return proc, base
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < ends, proc.communicate()
            time.sleep(0.1)

    proc, base = start_gateway()
    try:
        with pytest.raises(httpx.HTTPError):
            # killed while the request waits on the model
            def killer() -> None:
                time.sleep(1.0)
                proc.send_signal(signal.SIGKILL)

            threading.Thread(target=killer).start()
            httpx.post(base + "/v1/chat/completions", json=chat, timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert snapshot(up.url) == before
    llm.script("model-0", {"texts": [r"\boxed{1}"]})
    proc, base = start_gateway()
    try:
        ok = httpx.post(base + "/v1/chat/completions", json=chat, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert ok.status_code == 200, ok.text
    after = snapshot(up.url)
    assert after["counts"]["route_log"] == before["counts"]["route_log"] + 1
    record("kill -9 gateway during a request", route_log_rows_added=0)


@pytest.mark.parametrize("target", ["client", "postmaster"])
def test_kill_during_embed_then_a_second_run_resumes(up, llm, target, record):
    embedder = f"openai:{llm.base_url}#crash-embed-{target}"
    llm.script(f"crash-embed-{target}", {"delay": 0.05, "dim": DIM})
    proc = spawn(up.url, "embed", "--embedder", embedder, "--batch-size", "100")
    with psycopg.connect(up.url, autocommit=True) as c:
        ends = time.monotonic() + 90
        while True:
            done = c.execute(
                "SELECT count(*) FROM avengers.query_embeddings e "
                "JOIN avengers.embedding_spaces s ON s.id = e.space_id "
                "WHERE s.embedder LIKE %s",
                (f"%crash-embed-{target}",),
            ).fetchone()[0]
            if done >= 1000:
                break
            assert proc.poll() is None and time.monotonic() < ends, proc.communicate()
            time.sleep(0.01)
    kill(proc, up, target)
    with psycopg.connect(up.url) as c:
        kept = c.execute(
            "SELECT count(*) FROM avengers.query_embeddings e "
            "JOIN avengers.embedding_spaces s ON s.id = e.space_id WHERE s.embedder LIKE %s",
            (f"%crash-embed-{target}",),
        ).fetchone()[0]
        total = c.execute("SELECT count(*) FROM avengers.queries").fetchone()[0]
    assert 1000 <= kept < total and kept % 100 == 0  # whole batches only
    llm.script(f"crash-embed-{target}", {"dim": DIM})
    again = run_process("embed", "--embedder", embedder, env={"AVENGERS_DATABASE_URL": up.url})
    assert again.returncode == 0, again.stderr
    with psycopg.connect(up.url) as c:
        final = c.execute(
            "SELECT count(*), count(DISTINCT e.query_id) FROM avengers.query_embeddings e "
            "JOIN avengers.embedding_spaces s ON s.id = e.space_id WHERE s.embedder LIKE %s",
            (f"%crash-embed-{target}",),
        ).fetchone()
    assert final == (total, total)
    record(f"kill -9 {target} during embed, then rerun", rows_in=total, rows_kept=kept)


def test_kill_postmaster_during_gateway_request_then_the_gateway_recovers(up, llm, record):
    """The store dies while a request waits on its model: the request is answered (its log row
    is retried in the background) or refused with 503, never a 500; once the server is back the
    same gateway serves again without a restart."""
    llm.script("model-1", {"delay": 2, "texts": [r"\boxed{1}"]})
    with psycopg.connect(up.url, autocommit=True) as c:
        c.execute(
            "UPDATE avengers.models SET endpoint = %s, served_name = 'model-1' "
            "WHERE name = 'model-1'",
            (llm.base_url,),
        )
    before = snapshot(up.url)
    chat = {"model": "model-1", "messages": [{"role": "user", "content": "1?"}]}
    with gateway_server(GatewaySettings(auth=False), database_url=up.url) as gw:
        url = gw.base_url + "/v1/chat/completions"
        timer = threading.Timer(0.5, lambda: os.kill(up.postmaster_pid(), signal.SIGKILL))
        timer.start()
        during = httpx.post(url, json=chat, timeout=30)
        timer.join()
        down = httpx.post(url, json=chat, timeout=30)
        ensure_running(up)
        llm.script("model-1", {"texts": [r"\boxed{1}"]})
        started = time.perf_counter()
        while (after := httpx.post(url, json=chat, timeout=30)).status_code != 200:
            assert after.status_code == 503, after.text
            assert time.perf_counter() - started < 10
            time.sleep(0.05)
        back_s = time.perf_counter() - started
    assert during.status_code in (200, 503), during.text
    assert down.status_code in (200, 503), down.text
    now = snapshot(up.url)
    assert {t: n for t, n in now["counts"].items() if t != "route_log"} == {
        t: n for t, n in before["counts"].items() if t != "route_log"
    }
    assert now["active"] == before["active"] and now["orphans"] == (0, 0, 0)
    record(
        "kill -9 postmaster during a gateway request",
        during=during.status_code,
        right_after=down.status_code,
        back_s=round(back_s, 3),
    )
