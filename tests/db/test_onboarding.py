"""Incremental model evaluation against the real SmolLM2 server: outcomes appear, profiles gain
the model, the clustering stays, and a second run resumes where the first stopped."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest
from avengers_store.cli.main import cli
from click.testing import CliRunner

from avengers_store.errors import ConfigurationError, NotFound
from avengers_store.production.onboarding import evaluate_model
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model

pytestmark = pytest.mark.llm

QUESTIONS = ["What is 2+3?", "What is 10-4?", "What is 3*3?", "What is 8/2?"]
REFERENCES = ["5", "6", "9", "4"]


@pytest.fixture(scope="module")
def store(db_url, smol_server) -> str:
    with connections.connect(db_url) as conn:
        cid = add_clustering(conn, np.array([[1, 0], [0, 1]], dtype=np.float32))
        ensure_model(conn, "base")
        add_profiles(
            conn,
            cid,
            {"base": [[1, 0], [0, 1]]},
            task_type="math",
            texts=QUESTIONS,
            references=REFERENCES,
        )
        activate(conn, cid)
        ensure_model(
            conn, "smol", endpoint=smol_server.base_url, served_name=smol_server.served_name
        )
        ensure_model(conn, "offline")
        conn.commit()
    return db_url


def snapshot(url: str) -> tuple:
    with psycopg.connect(url) as conn:
        outcomes = conn.execute(
            """SELECT o.query_id, o.score, o.samples, o.source, o.tokens_out, o.cost, o.latency_ms
               FROM avengers.outcomes o JOIN avengers.models m ON m.id = o.model_id
               WHERE m.name = 'smol' ORDER BY o.query_id"""
        ).fetchall()
        active = conn.execute(
            "SELECT id FROM avengers.clusterings WHERE status = 'active'"
        ).fetchone()[0]
        profiled = conn.execute(
            "SELECT count(*) FROM avengers.cluster_profiles WHERE model = 'smol'"
        ).fetchone()[0]
    return outcomes, active, profiled


def test_evaluate_writes_outcomes_and_resumes(store):
    _, active_before, _ = snapshot(store)
    first = evaluate_model("smol", samples=2, limit=2, max_tokens=48, url=store, batch_size=1)
    assert (first.evaluated, first.failed, first.ungradable) == (2, 0, 0)
    outcomes, active, profiled = snapshot(store)
    assert len(outcomes) == 2 and active == active_before and profiled >= 1
    # The second run picks only the queries still missing an outcome (through the CLI).
    result = CliRunner().invoke(
        cli,
        ["models", "evaluate", "smol", "--samples", "3", "--max-tokens", "48", "--json"],
        env={"AVENGERS_DATABASE_URL": store},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["evaluated"] == 2 and report["model"] == "smol"
    outcomes, active, profiled = snapshot(store)
    assert len(outcomes) == 4 and active == active_before and profiled == 2
    for _query, score, samples, source, tokens_out, cost, latency in outcomes:
        assert 0.0 <= score <= 1.0
        assert samples in (2, 3) and source == "evaluate:smol"
        assert tokens_out > 0 and cost > 0 and latency > 0
    assert evaluate_model("smol", samples=1, url=store).evaluated == 0


def test_evaluate_needs_a_known_model_with_an_endpoint(store):
    with pytest.raises(NotFound):
        evaluate_model("nobody", url=store)
    with pytest.raises(ConfigurationError, match="no endpoint"):
        evaluate_model("offline", url=store)
