"""Feedback by route id: asked through the client (scripted model server), scored with
``feedback``, counted in the production profiles after the refresh; refused rows leave nothing."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from avengers_store import AvengersClient
from avengers_store.errors import InputError, NotFound
from avengers_store.store import connections
from avengers_store.testing import FixedEmbedder, set_endpoints, two_cluster_store

SPACE = "feedback-space-4"
NEAR_0 = [1.0, 0.1, 0.0, 0.0]


@pytest.fixture(scope="module")
def store(db_url, scripted_server_module) -> str:
    two_cluster_store(db_url, SPACE)
    base = scripted_server_module.base_url
    set_endpoints(db_url, alpha=base, bravo=base)
    return db_url


@pytest.fixture(scope="module")
def scripted_server_module():
    from avengers_store.testing import scripted_server

    with scripted_server() as server:
        server.answers("alpha", "\\boxed{42}", "\\boxed{41}")
        server.answers("bravo", "\\boxed{41}")
        yield server


def client(url: str, **kw) -> AvengersClient:
    return AvengersClient(url, embedder=FixedEmbedder(NEAR_0, name=SPACE), **kw)


def production(url: str, model: str) -> tuple | None:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT cluster, n, mean_score, decayed_n FROM avengers.production_profiles "
            "WHERE model = %s",
            (model,),
        ).fetchone()


def feedback_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM avengers.feedback").fetchone()[0]


def test_ask_then_feedback_counts_once_and_replaces(store):
    with client(store) as c:
        answer = c.ask("What is 6*7?", samples=2, task_type="math")
        assert isinstance(answer.route_id, uuid.UUID)
        assert production(store, "alpha") is None
        stored = c.feedback(answer.route_id, 1.0, refresh=False)
        assert (stored.model, stored.replaced) == ("alpha", False)
        assert production(store, "alpha") is None  # counted, not yet served
        c.feedback(answer.route_id, 1.0)  # the same source again: replaces, then refreshes
        cluster, n, mean, decayed = production(store, "alpha")
        assert (cluster, n, mean) == (answer.decision.cluster, 1, 1.0)
        assert decayed == pytest.approx(1.0, abs=1e-6)
        again = c.feedback(str(answer.route_id), 0.0)
        assert again.replaced and production(store, "alpha")[1:3] == (1, 0.0)
        c.feedback(answer.route_id, 1.0, source="grader")
        assert production(store, "alpha")[1:3] == (2, 0.5)
    with psycopg.connect(store) as conn:
        stats = conn.execute(
            "SELECT n, score_sum FROM avengers.production_stats p "
            "JOIN avengers.models m ON m.id = p.model_id WHERE m.name = 'alpha'"
        ).fetchone()
        logged = conn.execute(
            "SELECT answer_model FROM avengers.route_log WHERE route_id = %s", (answer.route_id,)
        ).fetchone()
    assert stats == (2, 1.0) and logged == ("alpha",)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"score": 1.5}, InputError, "score"),
        ({"score": float("nan")}, InputError, "score"),
        ({"route_id": uuid.UUID(int=7)}, NotFound, "no request has route id"),
        ({"route_id": "not-a-uuid"}, InputError, "route_id"),
        ({"model": "bravo"}, InputError, "sampled alpha, not bravo"),
        ({"model": "nobody"}, InputError, "model"),
        ({"source": " "}, InputError, "source"),
    ],
)
def test_bad_feedback_is_a_clear_error_and_no_row(store, kwargs, error, match):
    with client(store) as c:
        answer = c.ask("What is 6*7?", samples=1, task_type="math")
        before = feedback_rows(store)
        args = {"route_id": answer.route_id, "score": 1.0, **kwargs}
        with pytest.raises(error, match=match):
            c.feedback(**args)
    assert feedback_rows(store) == before


def test_store_errors_name_the_field(store):
    with client(store) as c:
        answer = c.ask("What is 6*7?", samples=1, task_type="math")
        with pytest.raises(InputError) as caught:
            c.feedback(answer.route_id, 1.0, model="charlie")
    assert caught.value.location == "model"


def test_model_switch_feedback_may_score_either_sampled_model(store, scripted_server_module):
    with client(store) as c:
        answer = c.ask("What is 6*7?", samples=2, strategy="model-switch", task_type="math")
        # alpha splits 42 / 41, below the 0.8 threshold: bravo joins
        assert answer.models == ("alpha", "bravo")
        assert c.feedback(answer.route_id, 0.0, model="bravo", source="judge").model == "bravo"


def test_async_client_feedback(store):
    import asyncio

    from avengers_store import AsyncAvengersClient

    async def run():
        async with AsyncAvengersClient(
            store, embedder=FixedEmbedder(NEAR_0, name=SPACE), background_log=True
        ) as c:
            answer = await c.ask("What is 6*7?", samples=1, task_type="math")
            # The route-log row is queued: feedback waits for it.
            stored = await c.feedback(answer.route_id, 1.0, source="async")
            with pytest.raises(InputError, match="score"):
                await c.feedback(answer.route_id, -0.1, source="async")
            return answer, stored

    answer, stored = asyncio.run(run())
    assert answer.route_id is not None and stored.model == "alpha" and not stored.replaced


def test_log_vectors_keeps_the_embedding_and_never_the_text_unless_asked(store):
    with client(store, log_vectors=True) as c:
        quiet = c.ask("A private question", samples=1, task_type="math")
    with client(store, log_texts=True) as c:
        kept = c.ask("A question to keep", samples=1, task_type="math")
    with client(store) as c:
        plain = c.ask("Not logged", samples=1, task_type="math")
    with connections.connect(store) as conn:
        rows = dict(
            conn.execute(
                "SELECT route_id, (embedding, query_text) FROM avengers.route_vectors "
                "WHERE route_id = ANY(%s)",
                ([quiet.route_id, kept.route_id, plain.route_id],),
            ).fetchall()
        )
    assert set(rows) == {quiet.route_id, kept.route_id}
    assert rows[kept.route_id][1] == "A question to keep"
    assert rows[quiet.route_id][1] is None


def test_profiles_show_calibration_and_production_apart_and_pooled(store):
    from avengers_store.calibration.profiles import get_profiles

    def cell():
        (entry,) = get_profiles(cluster=0, model="bravo", url=store)
        return entry

    with client(store) as c:
        answer = c.ask("What is 6*7?", samples=2, strategy="model-switch", task_type="math")
        before = cell()
        c.feedback(answer.route_id, 0.0, model="bravo", source="profile-test", refresh=False)
        assert cell().production_n == before.production_n  # not served before the refresh
        c.feedback(answer.route_id, 0.0, model="bravo", source="profile-test")
    after = cell()
    assert (after.n, after.mean_score) == (before.n, before.mean_score)  # calibration untouched
    assert after.production_n == before.production_n + 1
    # bravo's calibration outcomes in cluster 0 are 1 and 0; production weight 1, and rows a
    # few seconds apart barely decay (half-life 14 days).
    n = after.production_n
    production_sum = (before.production_mean or 0.0) * before.production_n + 0.0
    assert after.production_mean == pytest.approx(production_sum / n)
    # Pooled as routing pools it: the update rule's evidence for the cell. Too few rows for a
    # change of bravo: its calibration mean moves by the cluster's shared change only.
    with connections.connect(store) as conn:
        changed, shift, dsum, dn = conn.execute(
            "SELECT model_changed, cluster_effect, delta_sum, delta_n "
            "FROM avengers.production_evidence WHERE cluster = 0 AND model_id = "
            "(SELECT id FROM avengers.models WHERE name = 'bravo')"
        ).fetchone()
    assert not changed and dn == 0 and shift < 0
    assert after.pooled_mean == pytest.approx((1 + dsum) / 2, rel=1e-9)
    assert after.pooled_mean == pytest.approx(0.5 + shift, rel=1e-9)
