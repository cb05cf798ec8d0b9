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
    conn.execute(work.DECIDE_SQL, (Jsonb([i.entry() for i in items]),)).fetchall()
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
