"""AvengersClient against a real PostgreSQL (pools, schema check, read replica, route log) and the
scripted OpenAI-compatible server (exact answers)."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from avengers_store import AvengersClient
from avengers_store.errors import ConnectionFailed, SchemaOutOfDate, StoreStateError
from avengers_store.ingest.text_identity import content_hash
from avengers_store.store import connections
from avengers_store.testing import FixedEmbedder, set_endpoints, two_cluster_store

SPACE = "test-space-4"


def near_0() -> FixedEmbedder:
    """Every text lands near centroid 0 (the text's content does not matter to these tests)."""
    return FixedEmbedder([1.0, 0.1, 0.0, 0.0], name=SPACE)


@pytest.fixture(scope="module")
def store(db_url) -> str:
    return two_cluster_store(db_url, SPACE)


def route_log(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT query_hash, clustering_id, cluster, models, strategy, final_answer, "
            "vote_share, samples, metadata FROM avengers.route_log ORDER BY id"
        ).fetchall()


def test_constructor_does_not_connect():
    client = AvengersClient("postgresql://nobody@127.0.0.1:1/nothing")
    with pytest.raises(ConnectionFailed, match="127.0.0.1"):
        client.route([1.0, 0.0])
    client.close()
    client.close()  # idempotent


def test_schema_revision_is_checked_on_first_use(empty_db_url):
    with connections.connect(empty_db_url, vector=False) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.commit()
    with (
        AvengersClient(empty_db_url) as client,
        pytest.raises(SchemaOutOfDate, match="avengers db upgrade"),
    ):
        client.route([1.0, 0.0])


def test_route_and_route_many(store):
    with AvengersClient(store) as client:
        decision = client.route([1, 0.1, 0, 0], top_n=2)
        assert decision.cluster == 0 and [c.model for c in decision.candidates] == [
            "alpha",
            "bravo",
        ]
        many = client.route_many([[0, 1, 0, 0], [1, 0, 0, 0], np.array([0.2, 1, 0, 0])], top_n=1)
        assert [(d.cluster, d.model) for d in many] == [(1, "bravo"), (0, "alpha"), (1, "bravo")]
        assert client._pools["read"] is client._pools["write"]  # no replica configured
    with (
        connections.connect(store) as conn,
        AvengersClient("postgresql://unused@127.0.0.1:1/x") as client,
    ):
        # conn=: the caller's connection; the client's own URL is never used.
        assert client.route([0, 1, 0, 0], conn=conn).model == "bravo"
        assert client._pools == {}


def test_routes_without_prepared_statements(store):
    # For a transaction-mode pooler: same decisions, nothing prepared on the pool's connections.
    queries = [[1, 0.1, 0, 0], [0, 1, 0, 0], [0.3, 1, 0, 0], [1, 0, 0, 0]]
    with (
        AvengersClient(store) as prepared,
        AvengersClient(store, prepared_statements=False) as plain,
    ):
        for q in queries:
            a, b = prepared.route(q, top_n=3), plain.route(q, top_n=3)
            assert (a.cluster, [(c.model, c.score) for c in a.candidates]) == (
                b.cluster,
                [(c.model, c.score) for c in b.candidates],
            )
        count = (
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%avengers.decide%'"
        )
        with plain._pools["read"].connection() as c:
            assert c.prepare_threshold is None
            assert c.execute(count).fetchone()[0] == 0
        with prepared._pools["read"].connection() as c:
            assert c.execute(count).fetchone()[0] >= 1


def test_reads_go_to_the_read_replica(store, monkeypatch):
    replica = make_conninfo(store, application_name="avengers-replica")
    monkeypatch.setenv("AVENGERS_READ_DATABASE_URL", replica)
    with AvengersClient(store) as client:
        assert client.read_url == replica
        client.route_many([[1, 0, 0, 0], [0, 1, 0, 0]])
        assert set(client._pools) == {"read"}  # the primary was not even opened
        read = client._pools["read"]
        assert read.get_stats()["requests_num"] >= 1
        with read.connection() as c:
            name = c.execute("SELECT current_setting('application_name')").fetchone()[0]
        assert name == "avengers-replica"


def test_ask_routes_samples_votes_and_logs(store, scripted_server):
    scripted_server.answers("alpha", "\\boxed{42}", "\\boxed{42}", "\\boxed{41}")
    set_endpoints(store, alpha=scripted_server.base_url, bravo=scripted_server.base_url)
    replica = make_conninfo(store, application_name="avengers-replica")
    with AvengersClient(store, read_url=replica, embedder=near_0()) as client:
        before = len(route_log(store))
        answer = client.ask("What is 6*7?", samples=3, task_type="math")
        assert client._pools["read"] is not client._pools["write"]  # the log went to the primary
    assert answer.answer == "42" and dict(answer.votes) == {"42": 2, "41": 1}
    assert answer.models == ("alpha",) and answer.fallbacks == ()
    assert answer.decision.cluster == 0
    assert [c.model for c in answer.decision.candidates] == ["alpha", "bravo"]
    rows = route_log(store)[before:]
    assert len(rows) == 1
    qhash, clustering, cluster, models, strategy, final, share, samples, meta = rows[0]
    assert qhash == content_hash("What is 6*7?") and cluster == 0 and clustering is not None
    assert (models, strategy, final, samples) == (["alpha"], "self-consistency", "42", 3)
    assert share == pytest.approx(2 / 3)
    assert meta["candidates"] == ["alpha", "bravo"] and meta["usage"][0]["samples"] == 3


def test_ask_many_keeps_order_and_logs_each(store, scripted_server):
    scripted_server.answers("alpha", "Answer: B")
    set_endpoints(store, alpha=scripted_server.base_url, bravo=scripted_server.base_url)
    with AvengersClient(store, embedder=near_0(), max_concurrency=3) as client:
        before = len(route_log(store))
        questions = [f"Question {i}: A) x B) y" for i in range(5)]
        answers = client.ask_many(questions, samples=2, task_type="multiple_choice")
    assert [a.question for a in answers] == questions
    assert all(a.answer == "B" and a.decision is not None for a in answers)
    rows = route_log(store)[before:]
    assert sorted(r[0] for r in rows) == sorted(content_hash(q) for q in questions)


def test_ask_without_callable_models_is_a_clear_error(store):
    set_endpoints(store, alpha=None, bravo=None, charlie=None)
    with (
        AvengersClient(store, embedder=near_0()) as client,
        pytest.raises(StoreStateError, match="no active model with an endpoint"),
    ):
        client.ask("anything", samples=1)
