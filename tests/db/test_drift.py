"""Drift views and ``avengers drift``: routed shares against calibration shares, OOD per day,
production means that left their calibration interval; windows honoured."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import numpy as np
import psycopg
import pytest
from avengers_store.cli.testing import run_cli

from avengers_store.production.drift import drift
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model


@pytest.fixture(scope="module")
def store(db_url) -> str:
    """Two clusters of 3 and 1 calibration queries (shares 0.75 / 0.25); alpha scores 1, 1, 1
    on cluster 0. Traffic: 2 requests in cluster 0, 6 in cluster 1 (one of them OOD), one
    old request outside every window; alpha's feedback in cluster 0 is all 0."""
    with connections.connect(db_url) as conn:
        cid = add_clustering(conn, np.eye(2, 3, dtype=np.float32), embedder="drift-space-3")
        conn.execute("UPDATE avengers.centroids SET size = 3 - 2 * cluster WHERE clustering_id = %s",
                     (cid,))  # fmt: skip
        for name in ("alpha", "bravo"):
            ensure_model(conn, name)
        add_profiles(conn, cid, {"alpha": [[1, 1, 1], [0, 0, 0]], "bravo": [[0, 0, 0], [1, 1, 1]]})
        activate(conn, cid)
        plan = [(0, False, "0 days")] * 2 + [(1, False, "1 day")] * 5 + [(1, True, "2 days")]
        plan += [(0, False, "40 days")]
        for cluster, ood, age in plan:
            route = uuid.uuid4()
            conn.execute(
                "INSERT INTO avengers.route_log (route_id, at, query_hash, clustering_id, cluster, "
                "distance, models, strategy, answer_model, ood, novelty) VALUES "
                "(%s, now() - %s::interval, 'h', %s, %s, %s, %s, 'self-consistency', %s, %s, %s)",
                (route, age, cid, cluster, 0.5 if ood else 0.1, ["alpha"], "alpha", ood,
                 2.0 if ood else 0.2),
            )  # fmt: skip
            if cluster == 0:
                conn.execute(
                    "SELECT avengers.record_feedback(%s, 0.0, at => now() - %s::interval)",
                    (route, age),
                )
        conn.commit()
    return db_url


def test_views_and_the_library_agree(store):
    report = drift(timedelta(days=7), url=store)
    by_cluster = {t.cluster: t for t in report.traffic}
    assert by_cluster[0].calibration_share == pytest.approx(0.75)
    assert (by_cluster[0].routed, by_cluster[1].routed, by_cluster[1].ood) == (2, 6, 1)
    assert by_cluster[1].routed_share == pytest.approx(0.75)
    assert by_cluster[1].share_ratio == pytest.approx(3.0)
    (outcome,) = report.outcomes  # the 40-day-old feedback is outside the window
    assert (outcome.cluster, outcome.model, outcome.production_n) == (0, "alpha", 2)
    assert outcome.production_mean == 0.0 and outcome.outside
    assert outcome.wilson_low > 0 and report.drifted_clusters == (0,)
    assert sum(d.routed for d in report.daily) == 8
    assert sum(d.ood for d in report.daily) == 1
    with psycopg.connect(store) as conn:
        view = conn.execute("SELECT sum(routed) FROM avengers.traffic_drift").fetchone()[0]
        wide = conn.execute(
            "SELECT sum(routed) FROM avengers.traffic_drift(now() - interval '60 days')"
        ).fetchone()[0]
    assert (view, wide) == (8, 9)
    longer = drift(timedelta(days=60), url=store)
    assert longer.outcomes[0].production_n == 3


def test_cli_marks_drifted_clusters_and_plots(store, cli_env, tmp_path):
    out = run_cli("drift", "--since", "7d", "--plot", str(tmp_path / "drift.png")).output
    lines = out.splitlines()
    row = next(line for line in lines if line.startswith("!"))
    assert "alpha 0.00 (n 2) <" in row
    assert (tmp_path / "drift.png").stat().st_size > 10_000
    as_json = json.loads(run_cli("drift", "--since", "1h", "--json").stdout)
    assert as_json["drifted_clusters"] == [0]  # the two requests of today
    assert sum(t["routed"] for t in as_json["traffic"]) == 2
