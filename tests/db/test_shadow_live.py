"""Stored policies and shadowing under live traffic, against a real store: promotions while
clients route on four threads, and the sampled shadow answers' daily spend cap with a scripted
model server on real sockets."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from avengers_store import client_core
from avengers_store.calibration import reclustering
from avengers_store.client import AvengersClient
from avengers_store.routing import stored_policies
from avengers_store.routing.policy import Policy
from avengers_store.shadow import control
from avengers_store.store import connections
from avengers_store.testing import FixedEmbedder, build_replay_store, set_endpoints


@pytest.fixture(scope="module")
def store(db_url):
    """The replay store (three models, three topics) with two ready clusterings: k = 2 active
    and k = 1 beside it; returns (url, active id, other id)."""
    with connections.connect(db_url) as c:
        build_replay_store(c)
        active = reclustering.recluster(2, "kmeans", 42, stratify="none", conn=c).id
        other = reclustering.recluster(1, "kmeans", 42, stratify="none", activate=False, conn=c).id
        c.commit()
    return db_url, active, other


def _shape(decision) -> tuple[int, int]:
    return decision.clustering_id, len(decision.candidates)


def test_promote_under_four_routing_threads_never_mixes(store, monkeypatch):
    url, active, other = store
    # Two policies that differ in two fields seen in every decision (clustering, candidates):
    # a decision under a mix of them would show one field of each.
    a, b = Policy(clustering_id=active, top_n=2), Policy(clustering_id=other, top_n=3)
    with connections.connect(url) as c:
        stored_policies.create("pa", a, conn=c)
        stored_policies.create("pb", b, conn=c)
        stored_policies.promote("pa", conn=c)
        c.commit()
    monkeypatch.setattr(client_core, "ROLES_TTL", 0.0)  # every route reads the roles again
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(64, 4)).astype(np.float32)
    shapes: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def routing(client: AvengersClient, offset: int) -> None:
        i = offset
        try:
            while not stop.is_set():
                found = _shape(client.route(queries[i % len(queries)]))
                with lock:
                    shapes.append(found)
                i += 1
        except BaseException as exc:  # reported below, with the thread's failure
            errors.append(exc)

    with AvengersClient(url, pool_size=4) as client:
        threads = [threading.Thread(target=routing, args=(client, k * 16)) for k in range(4)]
        for t in threads:
            t.start()
        promotions = 0
        try:
            with connections.connect(url, autocommit=True) as c:
                for name in ["pb", "pa"] * 10:
                    time.sleep(0.05)
                    stored_policies.promote(name, conn=c)
                    promotions += 1
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert not errors, errors[0]
    assert promotions == 20
    allowed = {(active, 2), (other, 3)}
    mixed = [s for s in shapes if s not in allowed]
    assert not mixed, f"{len(mixed)} of {len(shapes)} decisions mixed two policies: {mixed[:5]}"
    counts = {s: shapes.count(s) for s in allowed}
    assert all(n > 0 for n in counts.values()), counts  # both policies served during the run
    assert len(shapes) > 100


def _price(url: str, name: str, cost_in: float | None, cost_out: float | None) -> None:
    with connections.connect(url, autocommit=True) as c:
        c.execute(
            "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s WHERE name = %s",
            (cost_in, cost_out, name),
        )


def _shadowed_asks(url: str, shadow: str, cap: float | None, asks: int) -> list[tuple]:
    """Serve ``asks`` questions from two clients at once (served policy: m1 only) while
    ``shadow`` (m2 or m3 only, so every request disagrees) samples every disagreement under
    ``cap``; returns each shadow decision's (sample, sampled model, cost, reserved, answer)."""
    with connections.connect(url, autocommit=True) as c:
        stored_policies.promote("only-m1", conn=c)
        c.execute("TRUNCATE avengers.shadow_decisions CASCADE")
        control.start(shadow, sample_share=1.0, max_spend_per_day=cap, conn=c)
    errors: list[BaseException] = []

    def serve(offset: int) -> None:
        embedder = FixedEmbedder([1.0, 0.05, 0.0, 0.0])
        try:
            with AvengersClient(url, embedder=embedder, max_tokens=16) as client:
                for i in range(asks // 2):
                    client.ask(f"question {offset + i}: what is 2 + 2?", strategy="direct")
                assert client.flush_shadow(60)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(k * 1000,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    with connections.connect(url, autocommit=True) as c:
        control.stop(conn=c)
        return c.execute(
            """SELECT d.sample, s.model, s.cost, s.reserved, s.answer
               FROM avengers.shadow_decisions d
               LEFT JOIN avengers.shadow_samples s USING (route_id)"""
        ).fetchall()


@pytest.fixture
def served(store, scripted_server):
    url, _, _ = store
    for name, text in (("m1", "The answer is 4."), ("m2", "The answer is 5."), ("m3", "4")):
        scripted_server.answers(name, text)
    set_endpoints(url, m1=scripted_server.base_url, m2=scripted_server.base_url,
                  m3=scripted_server.base_url)  # fmt: skip
    with connections.connect(url, autocommit=True) as c:
        for name, models in (("only-m1", ["m1"]), ("only-m2", ["m2"]), ("only-m3", ["m3"])):
            stored_policies.create(name, Policy(models=models), replace=True, conn=c)
    return url, scripted_server


def test_sampled_spend_never_passes_the_daily_cap(served):
    url, upstream = served
    # m2 at 0.01 a token in and 1 a token out: an answer (10 in, 5 out) costs 5.1, and its
    # reservation (every prompt byte a token, 16 out) more than 16: a cap of 40 binds.
    _price(url, "m2", 1e4, 1e6)
    rows = _shadowed_asks(url, "only-m2", 40.0, asks=12)
    assert len(rows) == 12 and all(r[0] for r in rows)  # every request disagrees, share 1
    asked = [r for r in rows if r[1] is not None]
    assert 1 <= len(asked) < 12, "the cap let every sample through, or none"
    assert sum(r[2] for r in asked) <= 40.0
    assert all(r[2] == pytest.approx(5.1) and r[3] > 16 for r in asked)  # cost, reservation
    assert all(r[4] == "5" for r in asked)
    assert len(upstream.requests_for("m2")) == len(asked)  # refused ones were never asked


def test_unpriced_shadow_model_costs_nothing_and_is_sampled_within_the_share(served):
    url, upstream = served
    _price(url, "m3", None, None)
    before = len(upstream.requests_for("m3"))
    rows = _shadowed_asks(url, "only-m3", 0.0, asks=6)
    # As the docs say: an unpriced model costs nothing at the store's prices, so a cap (even
    # 0) does not stop its samples; the share alone bounds them.
    assert len(rows) == 6 and all(r[1] == "m3" for r in rows)
    assert all(r[2] == 0 and r[3] == 0 for r in rows)
    assert len(upstream.requests_for("m3")) - before == 6
