"""POST /v1/feedback: an answer scored by the route id in its headers, served to routing after
the gateway's refresh; refused feedback as OpenAI-style errors naming the field; the same auth as
the other endpoints."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import psycopg

from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import ARITHMETIC, LITERATURE, set_endpoints

SETTINGS = GatewaySettings(policy={"method": "paper"}, upstream_retries=0, auth=False)


def production_n(url: str, model: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT sum(n) FROM avengers.production_profiles WHERE model = %s", (model,)
        ).fetchone()
    return int(row[0] or 0)


def test_an_answer_is_scored_by_its_route_id(store, endpoints, scripted_server):
    scripted_server.answers("a", "42")
    set_endpoints(store, alpha=(scripted_server.base_url, "a"))
    before = production_n(store, "alpha")
    with gateway_server(SETTINGS, database_url=store, feedback_refresh_s=0.05) as gw:
        sdk = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x")
        raw = sdk.chat.completions.with_raw_response.create(
            model="avengers", messages=[{"role": "user", "content": ARITHMETIC}]
        )
        route_id = raw.headers["x-avengers-route-id"]
        first = httpx.post(gw.base_url + "/v1/feedback", json={"route_id": route_id, "score": 1})
        again = httpx.post(gw.base_url + "/v1/feedback", json={"route_id": route_id, "score": 0.0})
        deadline = time.monotonic() + 10
        while production_n(store, "alpha") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        served = production_n(store, "alpha")
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["object"], body["model"], body["route_id"], body["replaced"]) == (
        "avengers.feedback",
        "alpha",
        route_id,
        False,
    )
    assert again.json()["replaced"] is True
    assert served == before + 1


def test_refused_feedback_names_the_field(store, endpoints, scripted_server):
    scripted_server.answers("a", "42")
    set_endpoints(store, alpha=(scripted_server.base_url, "a"))
    with gateway_server(SETTINGS, database_url=store, feedback_refresh_s=0) as gw:
        decision = httpx.post(gw.base_url + "/v1/route", json={"input": LITERATURE, "top_n": 2})
        route_id = decision.json()["route_id"]
        candidates = [c["model"] for c in decision.json()["candidates"]]

        def post(**body):
            return httpx.post(gw.base_url + "/v1/feedback", json={"route_id": route_id, **body})

        too_high = post(score=1.5)
        unknown = httpx.post(
            gw.base_url + "/v1/feedback", json={"route_id": str(uuid.uuid4()), "score": 1}
        )
        not_a_uuid = httpx.post(gw.base_url + "/v1/feedback", json={"route_id": "abc", "score": 1})
        unsampled = post(score=1, model="charlie")
        # A decision only: the caller picked among its candidates and scores that one.
        picked = post(score=1, model=candidates[1])
    assert too_high.status_code == 400 and too_high.json()["error"]["param"] == "score"
    assert unknown.status_code == 404 and "no request has route id" in unknown.text
    assert not_a_uuid.status_code == 400 and not_a_uuid.json()["error"]["param"] == "route_id"
    assert unsampled.status_code == 400 and unsampled.json()["error"]["param"] == "model"
    assert picked.status_code == 200 and picked.json()["model"] == candidates[1]


def test_feedback_needs_a_key_when_auth_is_on(store, endpoints):
    with gateway_server(
        GatewaySettings(policy={"method": "paper"}, upstream_retries=0), database_url=store
    ) as gw:
        refused = httpx.post(
            gw.base_url + "/v1/feedback", json={"route_id": str(uuid.uuid4()), "score": 1}
        )
    assert refused.status_code == 401


def test_log_vectors_keeps_each_routed_embedding_and_the_text_only_when_asked(
    store, endpoints, scripted_server
):
    scripted_server.answers("a", "42")
    set_endpoints(store, alpha=(scripted_server.base_url, "a"))
    kept = {}
    for texts in (False, True):
        settings = GatewaySettings(
            policy={"method": "paper"},
            upstream_retries=0,
            auth=False,
            log_vectors=True,
            log_texts=texts,
        )
        with gateway_server(settings, database_url=store) as gw:
            chat = httpx.post(
                gw.base_url + "/v1/chat/completions",
                json={"model": "avengers", "messages": [{"role": "user", "content": ARITHMETIC}]},
            )
            routed = httpx.post(gw.base_url + "/v1/route", json={"input": LITERATURE})
        kept[texts] = (chat.headers["x-avengers-route-id"], routed.headers["x-avengers-route-id"])
    with psycopg.connect(store) as conn:
        rows = dict(
            conn.execute(
                "SELECT route_id::text, query_text FROM avengers.route_vectors "
                "WHERE route_id::text = ANY(%s)",
                ([*kept[False], *kept[True]],),
            ).fetchall()
        )
    assert set(rows) == {*kept[False], *kept[True]}
    assert [rows[r] for r in kept[False]] == [None, None]
    assert [rows[r] for r in kept[True]] == [ARITHMETIC, LITERATURE]
