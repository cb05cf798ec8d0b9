"""AsyncAvengersClient against a real PostgreSQL and the scripted server: the same decisions,
answers and route-log rows as the sync client; embedding batched across concurrent calls; the
background route-log writer drains on close."""

from __future__ import annotations

import asyncio

import numpy as np
import psycopg
import pytest

from avengers_store import AsyncAvengersClient, AvengersClient
from avengers_store.errors import InputError, SchemaOutOfDate, StoreStateError
from avengers_store.ingest.text_identity import content_hash
from avengers_store.store import connections
from avengers_store.testing import FixedEmbedder, set_endpoints, two_cluster_store

SPACE = "test-space-4"


@pytest.fixture(scope="module")
def store(db_url) -> str:
    return two_cluster_store(db_url, SPACE)


def near(cluster: int) -> FixedEmbedder:
    return FixedEmbedder([1.0, 0.1, 0, 0] if cluster == 0 else [0.1, 1.0, 0, 0])


def log_rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT route_id, query_hash, cluster, models, strategy, final_answer, samples "
            "FROM avengers.route_log ORDER BY id"
        ).fetchall()


def test_routes_like_the_sync_client(store):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((20, 4)).astype(np.float32)
    with AvengersClient(store) as sync:
        expected = sync.route_many(vectors, 2)
        one = sync.route(vectors[3], 3)

    async def go():
        async with AsyncAvengersClient(store, embedder=near(1)) as client:
            many = await client.route_many(vectors, 2)
            single = await client.route(vectors[3], 3)
            text = await client.route("anything", 1)
            listed = await client.route_many([vectors[0], "text"], 2)
            with pytest.raises(InputError, match="query 1: the query text is empty"):
                await client.route("  ")
            return many, single, text, listed

    many, single, text, listed = asyncio.run(go())
    assert many == expected and single == one
    assert text.cluster == 1 and text.model == "bravo"
    assert listed[0] == expected[0] and listed[1].cluster == 1


def test_constructor_does_not_connect_and_schema_is_checked_on_first_use(empty_db_url):
    AsyncAvengersClient("postgresql://nobody@127.0.0.1:1/nothing")  # nothing to close
    with connections.connect(empty_db_url, vector=False) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.commit()

    async def go():
        async with AsyncAvengersClient(empty_db_url) as client:
            await client.route(np.ones(4), 1)

    with pytest.raises(SchemaOutOfDate, match="avengers db upgrade"):
        asyncio.run(go())


def test_ask_many_answers_and_logs_like_the_sync_client(store, scripted_server, closed_port_url):
    scripted_server.answers("bravo", "\\boxed{42}", "\\boxed{42}", "\\boxed{41}")
    set_endpoints(store, alpha=closed_port_url, bravo=scripted_server.base_url)
    before = len(log_rows(store))
    stages: list[str] = []

    async def go():
        async with AsyncAvengersClient(
            store, embedder=near(0), on_stage=lambda s, _: stages.append(s)
        ) as client:
            return await client.ask_many(
                ["What is 6*7?", "And 7*6?"], samples=3, task_type="math", return_exceptions=True
            )

    answers = asyncio.run(go())
    with AvengersClient(store, embedder=near(0)) as sync:
        reference = sync.ask("What is 6*7?", samples=3, task_type="math")
    for answer in answers:
        assert answer.answer == "42" and dict(answer.votes) == {"42": 2, "41": 1}
        assert answer.models == ("bravo",) and [f.model for f in answer.fallbacks] == ["alpha"]
        assert answer.decision == reference.decision
    rows = log_rows(store)[before:]
    assert len(rows) == 3
    assert [r[0] for r in rows[:2]] == [a.route_id for a in answers]
    assert rows[0][1:] == (content_hash("What is 6*7?"), 0, ["bravo"], "self-consistency", "42", 3)
    assert rows[0][1:] == rows[2][1:]  # the sync client's row for the same question
    assert {"embed", "route", "upstream", "vote"} <= set(stages)


def test_no_callable_model_is_a_clear_error(store):
    set_endpoints(store, alpha=None, bravo=None, charlie=None)

    async def go():
        async with AsyncAvengersClient(store, embedder=near(0)) as client:
            await client.ask("anything", samples=1)

    with pytest.raises(StoreStateError, match="no active model with an endpoint"):
        asyncio.run(go())


def test_concurrent_texts_are_embedded_together(store):
    embedder = near(0)

    async def go():
        async with AsyncAvengersClient(store, embedder=embedder) as client:
            await client.route("warm up", 1)
            decisions = await asyncio.gather(*(client.route(f"q{i}", 1) for i in range(12)))
            return decisions, client._batcher.batches

    decisions, batches = asyncio.run(go())
    assert all(d.cluster == 0 for d in decisions)
    assert sum(embedder.calls) == 13
    # The first call embeds alone; the twelve that arrive together share far fewer batches.
    assert embedder.calls[0] == 1 and len(embedder.calls) <= 4 and batches == len(embedder.calls)


def test_background_log_writer_drains_on_close(store, scripted_server):
    scripted_server.answers("alpha", "Answer: B")
    set_endpoints(store, alpha=scripted_server.base_url)
    before = len(log_rows(store))

    async def go():
        client = AsyncAvengersClient(store, embedder=near(0), background_log=True, log_queue=4)
        answers = await client.ask_many(
            [f"Question {i}: A) x B) y" for i in range(10)], samples=1, task_type="multiple_choice"
        )
        queued = client.log_writer.pending + len(log_rows(store)) - before
        await client.aclose()
        return answers, queued, client.log_writer.written

    answers, queued, written = asyncio.run(go())
    assert queued <= 10 and written == 10
    rows = log_rows(store)[before:]
    assert sorted(r[0] for r in rows) == sorted(a.route_id for a in answers)
