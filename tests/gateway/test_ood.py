"""The gateway exposes novelty and ood on /v1/route and in the x-avengers-* headers of chat
completions, and takes the OOD policy per request."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import psycopg
import pytest

from avengers_store.calibration.embedders import get_embedder
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.gateway.testing import gateway_server
from avengers_store.testing import ARITHMETIC, set_endpoints

SETTINGS = GatewaySettings(policy={"method": "paper"}, upstream_retries=0, auth=False)
OOD_DISTANCE = 0.5


@pytest.fixture
def distances(store) -> Iterator[None]:
    """Distance statistics for the hand-made clustering: out of distribution beyond 0.5."""
    with psycopg.connect(store) as conn:
        # The hand-made clustering has no assignments: its statistics are empty until set here.
        conn.execute("UPDATE avengers.cluster_distances SET scale = 0.25, ood_distance = %s",
                     (OOD_DISTANCE,))  # fmt: skip
        # Routing reads them from routing_centroids: served data changes by a refresh.
        conn.execute("CALL avengers.refresh_profiles()")
    yield
    with psycopg.connect(store) as conn:
        conn.execute("UPDATE avengers.cluster_distances SET scale = NULL, ood_distance = NULL")
        conn.execute("CALL avengers.refresh_profiles()")


def test_route_and_headers_show_ood(store, endpoints, distances, scripted_server):
    scripted_server.answers("a", "42")
    scripted_server.answers("b", "42")
    set_endpoints(
        store, alpha=(scripted_server.base_url, "a"), bravo=(scripted_server.base_url, "b")
    )
    centre = get_embedder("all-MiniLM-L6-v2").embed([ARITHMETIC])[0]
    away = (-np.asarray(centre)).tolist()
    with gateway_server(SETTINGS, database_url=store) as gw:
        near = httpx.post(gw.base_url + "/v1/route", json={"input": ARITHMETIC})
        far = httpx.post(gw.base_url + "/v1/route", json={"vector": away, "top_n": 2})
        best = httpx.post(
            gw.base_url + "/v1/route",
            json={"vector": away, "top_n": 2, "ood_policy": "best-overall"},
        )
        bad = httpx.post(gw.base_url + "/v1/route", json={"input": "x", "ood_policy": "ignore"})
        chat = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": "avengers", "messages": [{"role": "user", "content": ARITHMETIC}]},
        )
    assert near.json()["ood"] is False and near.headers["x-avengers-ood"] == "false"
    body = far.json()
    assert body["ood"] is True and body["ood_policy"] == "flag"
    assert body["novelty"] == pytest.approx(body["distance"] / OOD_DISTANCE)
    assert far.headers["x-avengers-ood"] == "true"
    assert far.headers["x-avengers-ood-policy"] == "flag"
    assert float(far.headers["x-avengers-novelty"]) == pytest.approx(body["novelty"], abs=1e-4)
    assert best.json()["ood_policy"] == "best-overall"
    assert bad.status_code == 400 and "ood_policy" in bad.text
    assert chat.status_code == 200 and chat.headers["x-avengers-ood"] == "false"
    assert chat.json()["avengers"]["ood"] is False
