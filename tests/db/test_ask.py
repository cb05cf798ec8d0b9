"""End to end against real servers: all-MiniLM-L6-v2 embeds the question, PostgreSQL routes it,
xllamacpp serves SmolLM2-135M over HTTP, the client votes and writes the route log."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest
from avengers_store.cli.main import cli
from click.testing import CliRunner

from avengers_store import AvengersClient
from avengers_store.calibration.embedders import MINILM
from avengers_store.store import connections
from avengers_store.testing import activate, add_clustering, add_profiles, ensure_model, unit_rows

pytestmark = pytest.mark.llm

MAX_TOKENS = 48  # SmolLM2 on one CPU thread: short completions keep the module fast


@pytest.fixture(scope="module")
def store(db_url, smol_server) -> str:
    with connections.connect(db_url) as conn:
        centroids = unit_rows(np.random.default_rng(0), 2, 384)
        cid = add_clustering(conn, centroids, embedder=MINILM)
        # "first" is best everywhere, "second" next; both point at the real server.
        for name in ("first", "second"):
            ensure_model(
                conn, name, endpoint=smol_server.base_url, served_name=smol_server.served_name
            )
        add_profiles(conn, cid, {"first": [[1], [1]], "second": [[0.5], [0.5]]})
        activate(conn, cid)
        conn.commit()
    return db_url


def log_rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT models, strategy, final_answer, vote_share, samples, metadata, cluster "
            "FROM avengers.route_log ORDER BY id"
        ).fetchall()


def test_cli_ask_samples_votes_and_logs(store, cli_env):
    before = len(log_rows(store))
    result = CliRunner().invoke(
        cli,
        ["ask", "What is 7*6?", "--samples", "5", "--max-tokens", str(MAX_TOKENS), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["samples"]) == 5
    assert out["models"] == ["first"] and out["strategy"] == "self-consistency"
    assert sum(out["votes"].values()) == out["valid"] <= 5
    assert out["decision"]["candidates"][0]["model"] == "first"
    rows = log_rows(store)[before:]
    assert len(rows) == 1
    models, strategy, final, share, samples, meta, cluster = rows[0]
    assert (models, strategy, samples, cluster) == (
        ["first"],
        "self-consistency",
        5,
        out["decision"]["cluster"],
    )
    assert final == out["answer"] and meta["usage"][0]["samples"] == 5


def test_ask_falls_back_when_the_first_endpoint_is_closed(store, closed_port_url):
    # Credentials in a stored URL (the CLI refuses them; an older store may hold one) must not
    # reach the route log.
    with_credentials = closed_port_url.replace("http://", "http://bob:hunter2-planted@")
    with psycopg.connect(store) as conn:
        conn.execute(
            "UPDATE avengers.models SET endpoint = %s WHERE name = 'first'", (with_credentials,)
        )
    before = len(log_rows(store))
    with AvengersClient(store, max_tokens=MAX_TOKENS) as client:
        answer = client.ask("What is 7*6?", samples=2, task_type="math")
    assert answer.models == ("second",)
    assert len(answer.samples) == 2
    [fallback] = answer.fallbacks
    assert fallback.model == "first" and fallback.replaced_by == "second"
    assert [c.model for c in answer.decision.candidates] == ["first", "second"]
    [row] = log_rows(store)[before:]
    assert row[0] == ["second"]
    assert row[5]["fallbacks"][0]["model"] == "first"
    assert row[5]["candidates"] == ["first", "second"]
    assert closed_port_url.split("//")[1] in fallback.error
    assert "hunter2" not in fallback.error and "hunter2" not in json.dumps(row[5])


def test_cli_route_text_and_file(store, cli_env, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["route", "What is 7*6?", "--top-n", "2", "--json"])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert [c["model"] for c in decision["candidates"]] == ["first", "second"]
    questions = tmp_path / "q.jsonl"
    vector = unit_rows(np.random.default_rng(1), 1, 384)[0].tolist()
    questions.write_text(
        json.dumps({"text": "What is 7*6?"}) + "\n\n" + json.dumps({"vector": vector}) + "\n"
    )
    result = runner.invoke(cli, ["route", "--file", str(questions)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [x["line"] for x in lines] == [1, 2]
    assert lines[0]["cluster"] == decision["cluster"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    result = runner.invoke(cli, ["route", "--file", str(bad)])
    assert result.exit_code != 0
    assert "line 1" in str(result.exception)
