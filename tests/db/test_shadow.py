"""Stored policies and shadow decisions against a real store: a policy naming a ready
clustering is served by the routing views; promote switches whole policies; the stored
shadow decisions agree with decide run directly."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from psycopg.types.json import Jsonb

from avengers_store.calibration import reclustering
from avengers_store.errors import StoreStateError
from avengers_store.routing import stored_policies
from avengers_store.routing.decide import decide
from avengers_store.routing.policy import Policy
from avengers_store.shadow import control, work
from avengers_store.testing import build_replay_store


@pytest.fixture
def store(conn):
    build_replay_store(conn)
    reclustering.recluster(2, "kmeans", 42, stratify="none", conn=conn)
    other = reclustering.recluster(1, "kmeans", 42, stratify="none", activate=False, conn=conn)
    return conn, other.id


def test_shadow_decisions_match_decide(store):
    conn, other = store
    stored_policies.create("one", Policy(clustering_id=other), conn=conn)
    built = [r[0] for r in conn.execute("SELECT clustering_id FROM avengers.routing_state")]
    assert other in built and len(built) == 2
    stored_policies.create("default", Policy(), conn=conn)
    stored_policies.promote("default", conn=conn)
    control.start("one", conn=conn)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(20, 4)).astype(np.float32)
    served = decide(conn, vectors, Policy())
    direct = decide(conn, vectors, Policy(clustering_id=other, exploration="off"))
    items = [work.item(uuid.uuid4(), v, d, text=None) for v, d in zip(vectors, served, strict=True)]
    conn.execute(work.DECIDE_SQL, (Jsonb([i.entry() for i in items]), "one")).fetchall()
    stored = dict(conn.execute("SELECT route_id::text, model FROM avengers.shadow_decisions"))
    assert [stored[i.route_id] for i in items] == [d.model for d in direct]
    agree = np.mean([a.model == b.model for a, b in zip(served, direct, strict=True)])
    row = conn.execute(
        "SELECT agreement FROM avengers.shadow_agreement WHERE cluster IS NULL"
    ).fetchone()
    assert row[0] == pytest.approx(agree)


def test_promote_and_back_and_remove_guard(store):
    conn, other = store
    stored_policies.create("a", Policy(top_n=2), conn=conn)
    stored_policies.create("b", Policy(top_n=3), conn=conn)
    stored_policies.promote("a", conn=conn)
    stored_policies.promote("b", conn=conn)
    assert stored_policies.roles(conn=conn).served == Policy(top_n=3)
    assert stored_policies.promote(back=True, conn=conn).name == "a"
    with pytest.raises(StoreStateError, match="served"):
        stored_policies.remove("a", conn=conn)


def test_a_batch_is_decided_under_the_policy_it_was_served_beside(store):
    # Shadow work lingers before it runs: a batch computed after the shadow role moved on is
    # still decided under the policy its requests were served beside, and not sampled.
    conn, other = store
    stored_policies.create("default", Policy(), conn=conn)
    stored_policies.promote("default", conn=conn)
    stored_policies.create("one", Policy(clustering_id=other), conn=conn)
    stored_policies.create("two", Policy(top_n=2), conn=conn)
    control.start("one", sample_share=1.0, conn=conn)
    vectors = np.random.default_rng(2).normal(size=(12, 4)).astype(np.float32)
    served = decide(conn, vectors, Policy())
    direct = decide(conn, vectors, Policy(clustering_id=other, exploration="off"))

    def batch(shadow):
        items = [
            work.item(uuid.uuid4(), v, d, text="q", shadow=shadow)
            for v, d in zip(vectors, served, strict=True)
        ]
        rows = conn.execute(work.DECIDE_SQL, (Jsonb([i.entry() for i in items]), shadow))
        return items, rows.fetchall()

    control.start("two", conn=conn)  # the role moved on before the batch ran
    items, to_sample = batch("one")
    stored = conn.execute(
        "SELECT route_id::text, policy_name, model, sample FROM avengers.shadow_decisions"
    ).fetchall()
    by_id = {r[0]: r[1:] for r in stored}
    assert [by_id[i.route_id][:2] for i in items] == [("one", d.model) for d in direct]
    assert to_sample == [] and not any(r[3] for r in stored)
    disagree = sum(a.model != b.model for a, b in zip(served, direct, strict=True))
    assert disagree > 0  # under the role's share the disagreements would have been sampled
    control.stop(conn=conn)
    items, _ = batch(None)  # no name and no shadow now: nothing is decided
    found = conn.execute(
        "SELECT count(*) FROM avengers.shadow_decisions WHERE route_id = ANY(%s::uuid[])",
        ([i.route_id for i in items],),
    ).fetchone()[0]
    assert found == 0
