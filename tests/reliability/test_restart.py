"""The store's server stops and starts under the clients: every call either succeeds or fails with
``StoreUnavailable`` (the gateway: 503 in the OpenAI error shape), quickly, and the clients serve
again within a second of the server being back, with no new client and no restart.

A server of their own (a throwaway embedded PostgreSQL), so stopping it leaves the session's
alone.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import psycopg
import pytest

from avengers_store import AvengersClient
from avengers_store.async_client import AsyncAvengersClient
from avengers_store.errors import StoreUnavailable
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.store import connections
from avengers_store.testing import (
    RANKED_MODELS,
    OwnServer,
    add_scripted_store,
    own_postgres_server,
    scripted_server,
)

pytestmark = pytest.mark.timeout(180)

QUESTION = "What is 6 times 7? Answer with a number."
RECOVERY_S = 1.0  # the bound: serving again this long after the server accepts connections


@pytest.fixture(scope="module")
def llm():
    with scripted_server() as server:
        for name in RANKED_MODELS:
            server.answers(name, r"\boxed{42}")
        yield server


@pytest.fixture(scope="module")
def server(llm) -> OwnServer:
    with own_postgres_server() as own:
        with connections.connect(own.url) as conn:
            add_scripted_store(conn, llm.base_url)
            conn.commit()
        yield own


@pytest.fixture
def running(server) -> OwnServer:
    server.start()  # a test that failed half-way may have left it stopped
    return server


def logged(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM avengers.route_log").fetchone()[0]


def answers_logged(url: str) -> int:
    """route_log rows of answers (a failed request's row carries its error instead)."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM avengers.route_log WHERE NOT metadata ? 'error'"
        ).fetchone()[0]


def until_serving(call, started: float, limit: float = 10.0) -> float:
    """Seconds from ``started`` until ``call()`` first succeeds (StoreUnavailable meanwhile)."""
    while True:
        try:
            call()
            return time.perf_counter() - started
        except StoreUnavailable:
            if time.perf_counter() - started > limit:
                raise
            time.sleep(0.02)


def test_sync_client_fails_fast_while_down_and_recovers_within_a_second(running, record):
    with AvengersClient(running.url, pool_size=2) as client:
        client.route(QUESTION, 2)
        running.stop()
        for _ in range(3):  # the pooled connection is dead, then the server refuses
            began = time.perf_counter()
            with pytest.raises(StoreUnavailable) as caught:
                client.route(QUESTION, 2)
            failed_s = time.perf_counter() - began
            assert failed_s < 3.0
        message = str(caught.value)
        assert "avengers db status" in message or "AVENGERS_DATABASE_URL" in message
        assert "psycopg" not in type(caught.value).__module__
        running.start()
        back_s = until_serving(lambda: client.route(QUESTION, 2), time.perf_counter())
        assert back_s < RECOVERY_S
        answer = client.ask(QUESTION, samples=1)
        assert answer.answer == "42"
    record("sync client, server stopped", bound_s=3.0, measured_s=round(failed_s, 3))
    record("sync client, back after start", bound_s=RECOVERY_S, measured_s=round(back_s, 3))


def test_async_client_fails_fast_while_down_and_recovers_within_a_second(running, record):
    async def go() -> tuple[float, float]:
        async with AsyncAvengersClient(running.url, pool_size=2) as client:
            await client.route(QUESTION, 2)
            await asyncio.to_thread(running.stop)
            for _ in range(3):
                began = time.perf_counter()
                with pytest.raises(StoreUnavailable):
                    await client.route(QUESTION, 2)
                failed_s = time.perf_counter() - began
                assert failed_s < 3.0
            await asyncio.to_thread(running.start)
            started = time.perf_counter()
            while True:
                try:
                    await client.route(QUESTION, 2)
                    break
                except StoreUnavailable:
                    assert time.perf_counter() - started < 10
                    await asyncio.sleep(0.02)
            back_s = time.perf_counter() - started
            answer = await client.ask(QUESTION, samples=1)
            assert answer.answer == "42"
            return failed_s, back_s

    failed_s, back_s = asyncio.run(go())
    assert back_s < RECOVERY_S
    record("async client, server stopped", bound_s=3.0, measured_s=round(failed_s, 3))
    record("async client, back after start", bound_s=RECOVERY_S, measured_s=round(back_s, 3))


def test_clients_asking_in_a_loop_across_restarts_log_exactly_their_answers(running, record):
    """Two threads of a sync client and an async client ask without pause while the server is
    stopped and started twice: each ask answers or raises StoreUnavailable, nothing else, and
    route_log holds one row per answer (a failed ask's row cannot be written: the store is
    down)."""
    before = logged(running.url)
    done = threading.Event()
    counts = {"answers": 0, "unavailable": 0}
    others: list[BaseException] = []
    lock = threading.Lock()

    def tally(ok: bool) -> None:
        with lock:
            counts["answers" if ok else "unavailable"] += 1

    def sync_loop(client: AvengersClient) -> None:
        while not done.is_set():
            try:
                client.ask(QUESTION, samples=1, timeout=10)
                tally(True)
            except StoreUnavailable:
                tally(False)
                time.sleep(0.02)
            except BaseException as exc:  # noqa: BLE001 - anything else fails the test
                others.append(exc)
                return

    def async_loop() -> None:
        async def go() -> None:
            async with AsyncAvengersClient(running.url) as client:
                while not done.is_set():
                    try:
                        await client.ask(QUESTION, samples=1, timeout=10)
                        tally(True)
                    except StoreUnavailable:
                        tally(False)
                        await asyncio.sleep(0.02)

        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001
            others.append(exc)

    with AvengersClient(running.url) as client:
        threads = [threading.Thread(target=sync_loop, args=(client,)) for _ in range(2)]
        threads.append(threading.Thread(target=async_loop))
        for t in threads:
            t.start()
        for _ in range(2):
            time.sleep(1.0)
            running.stop()
            time.sleep(0.5)
            running.start()
        time.sleep(1.0)
        done.set()
        for t in threads:
            t.join(timeout=30)
    assert not others, others
    assert counts["answers"] > 0 and counts["unavailable"] > 0
    assert logged(running.url) - before == counts["answers"]
    record(
        "sync + async clients asking across 2 restarts",
        answers=counts["answers"],
        unavailable=counts["unavailable"],
        rows_logged=logged(running.url) - before,
    )


def test_gateway_answers_503_while_the_store_is_down_and_recovers_by_itself(running, record):
    chat = {"model": "avengers", "messages": [{"role": "user", "content": QUESTION}]}
    with gateway_server(GatewaySettings(auth=False), database_url=running.url) as gw:
        url = gw.base_url + "/v1/chat/completions"
        assert httpx.post(url, json=chat, timeout=30).status_code == 200
        running.stop()
        began = time.perf_counter()
        down = httpx.post(url, json=chat, timeout=30)
        down_s = time.perf_counter() - began
        again = httpx.post(url, json=chat, timeout=30)
        running.start()
        started = time.perf_counter()
        while (up := httpx.post(url, json=chat, timeout=30)).status_code != 200:
            assert up.status_code == 503, up.text
            assert time.perf_counter() - started < 10
            time.sleep(0.02)
        back_s = time.perf_counter() - started
    for response in (down, again):
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["type"] == "service_unavailable" and error["message"]
        assert "psycopg" not in error["message"]
    assert down_s < 3.0 and back_s < RECOVERY_S
    assert up.json()["choices"][0]["message"]["content"]
    record("gateway, store stopped (503)", bound_s=3.0, measured_s=round(down_s, 3))
    record("gateway, back after start", bound_s=RECOVERY_S, measured_s=round(back_s, 3))


def test_gateway_in_a_loop_across_restarts_logs_exactly_its_answers(running, record):
    """Requests without pause while the server is stopped and started twice: each gets 200 or
    503, and once the gateway has shut down (its background writer flushed) route_log holds one
    answer row per 200 (a row whose write met the outage was retried, not lost); the 503s' error
    rows are written when the store is back in time, never as answers."""
    before = answers_logged(running.url)
    chat = {"model": "avengers", "messages": [{"role": "user", "content": QUESTION}]}
    statuses: list[int] = []
    done = threading.Event()
    with gateway_server(GatewaySettings(auth=False), database_url=running.url) as gw:
        url = gw.base_url + "/v1/chat/completions"

        def loop() -> None:
            with httpx.Client(timeout=30) as http:
                while not done.is_set():
                    statuses.append(http.post(url, json=chat).status_code)

        thread = threading.Thread(target=loop)
        thread.start()
        for _ in range(2):
            time.sleep(1.0)
            running.stop()
            time.sleep(0.5)
            running.start()
        time.sleep(1.0)
        done.set()
        thread.join(timeout=60)
    answered = statuses.count(200)
    assert set(statuses) <= {200, 503}, statuses
    assert answered > 0 and 503 in statuses
    assert answers_logged(running.url) - before == answered
    record(
        "gateway requests across 2 restarts",
        answered=answered,
        unavailable=statuses.count(503),
        answer_rows_logged=answers_logged(running.url) - before,
    )


def test_an_answer_given_while_the_store_is_down_keeps_its_log_row(running, llm, record):
    """The model answers after the store has stopped (the route was read before): the answer is
    returned, its route-log row waits in the background writer through an outage longer than
    the retries a bad row gets, and is in route_log once the store is back."""
    gate = threading.Event()
    for name in RANKED_MODELS:
        llm.script(name, {"gate": gate, "texts": [r"\boxed{42}"]})
    outage_s = 6.0

    async def go():
        async with AsyncAvengersClient(running.url, background_log=True) as client:
            await client.route(QUESTION, 2)
            asked = len(llm.requests)
            task = asyncio.create_task(client.ask(QUESTION, samples=1))
            while len(llm.requests) == asked:
                assert not task.done(), task
                await asyncio.sleep(0.01)
            await asyncio.to_thread(running.stop)
            gate.set()
            answer = await task
            await asyncio.sleep(outage_s)
            waiting = client.log_writer.written
            await asyncio.to_thread(running.start)
            return answer, waiting, client.log_writer

    try:
        answer, written_while_down, writer = asyncio.run(go())
    finally:
        for name in RANKED_MODELS:
            llm.answers(name, r"\boxed{42}")
    assert answer.answer == "42" and written_while_down == 0
    assert (writer.written, writer.dropped) == (1, 0)
    with psycopg.connect(running.url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM avengers.route_log WHERE route_id = %s", (answer.route_id,)
        ).fetchone()[0]
    assert found == 1
    record("answer's log row across a 6 s outage", written_after_restart=found, dropped=0)


def route_log_metrics(base_url: str) -> tuple[float, float, float]:
    """(rows waiting, written, dropped) from the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {"waiting": 0.0, "written": 0.0, "dropped": 0.0}
    text = httpx.get(base_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "avengers_gateway_route_log_waiting":
                found["waiting"] = sample.value
            elif sample.name == "avengers_gateway_route_log_rows_total":
                found[sample.labels["outcome"]] = sample.value
    return found["waiting"], found["written"], found["dropped"]


def test_gateway_metrics_show_log_rows_waiting_for_the_store(running):
    """A 503 while the store is down leaves its error row waiting; /metrics (which needs no
    store) says so, and says it was written once the store is back."""
    chat = {"model": "avengers", "messages": [{"role": "user", "content": QUESTION}]}
    with gateway_server(GatewaySettings(auth=False), database_url=running.url) as gw:
        url = gw.base_url + "/v1/chat/completions"
        assert httpx.post(url, json=chat, timeout=30).status_code == 200
        deadline = time.perf_counter() + 10
        while route_log_metrics(gw.base_url)[:2] != (0, 1):
            assert time.perf_counter() < deadline, route_log_metrics(gw.base_url)
            time.sleep(0.02)
        running.stop()
        try:
            assert httpx.post(url, json=chat, timeout=30).status_code == 503
            time.sleep(0.5)
            while_down = route_log_metrics(gw.base_url)
        finally:
            running.start()
        deadline = time.perf_counter() + 15
        while (after := route_log_metrics(gw.base_url))[0] != 0:
            assert time.perf_counter() < deadline, after
            time.sleep(0.05)
    assert while_down == (1, 1, 0)
    assert after == (0, 2, 0)
