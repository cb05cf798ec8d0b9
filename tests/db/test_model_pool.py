"""The model pool against a real PostgreSQL: add, list, (de)activate with profile refresh, remove."""

from __future__ import annotations

import json

import numpy as np
import pytest
from avengers_store.cli.main import cli
from click.testing import CliRunner

from avengers_store.errors import InputError, NotFound
from avengers_store.ingest import model_pool
from avengers_store.store import connections


def test_add_get_list(conn):
    added = model_pool.add_model(
        "qwen", "http://vllm:8000/v1", "Qwen/Qwen2.5-7B", "QWEN_KEY", 0.2, 0.4, conn=conn
    )
    assert added.active and added.endpoint == "http://vllm:8000/v1"
    assert (added.cost_in_per_m, added.cost_out_per_m, added.api_key_env) == (0.2, 0.4, "QWEN_KEY")
    assert model_pool.get_model("qwen", conn=conn) == added
    model_pool.add_model("bare", conn=conn)
    assert [m.name for m in model_pool.list_models(conn=conn)] == ["bare", "qwen"]
    with pytest.raises(InputError, match="already exists"):
        model_pool.add_model("qwen", conn=conn)
    with pytest.raises(NotFound, match=r"no model 'nope'; known models: bare, qwen"):
        model_pool.get_model("nope", conn=conn)
    with pytest.raises(InputError, match="^cost_in: must be a number >= 0, got -1") as err:
        model_pool.add_model("neg", cost_in=-1, conn=conn)
    assert err.value.location == "cost_in"


def _tiny_active_clustering(c) -> None:
    """One dataset, two calibration queries in one cluster, outcomes for two models."""
    ds = c.execute("INSERT INTO avengers.datasets (name) VALUES ('d') RETURNING id").fetchone()[0]
    qids = [
        c.execute(
            """INSERT INTO avengers.queries (dataset_id, text, split, content_hash)
               VALUES (%s, %s, 'calibration', %s) RETURNING id""",
            (ds, f"q{i}", f"{i:064x}"),
        ).fetchone()[0]
        for i in range(2)
    ]
    space = c.execute(
        "INSERT INTO avengers.embedding_spaces (embedder, dimension, active) "
        "VALUES ('e', 2, true) RETURNING id"
    ).fetchone()[0]
    cl = c.execute(
        "INSERT INTO avengers.clusterings (space_id, algorithm, k, status) "
        "VALUES (%s, 'kmeans', 1, 'ready') RETURNING id",
        (space,),
    ).fetchone()[0]
    c.execute(
        "INSERT INTO avengers.centroids VALUES (%s, 0, %s, 2)", (cl, np.array([1.0, 0.0], "f4"))
    )
    for q in qids:
        c.execute("INSERT INTO avengers.assignments VALUES (%s, %s, 0, 0)", (cl, q))
    for name, score in (("good", 1.0), ("weak", 0.0)):
        mid = model_pool.add_model(name, conn=c).id
        for q in qids:
            c.execute(
                "INSERT INTO avengers.outcomes (query_id, model_id, score) VALUES (%s, %s, %s)",
                (q, mid, score),
            )
    c.execute("CALL avengers.activate_clustering(%s)", (cl,))


def test_set_active_refreshes_profiles(conn):
    _tiny_active_clustering(conn)

    def ranks():
        return dict(
            conn.execute("SELECT model, active_rank FROM avengers.cluster_profiles").fetchall()
        )

    assert ranks() == {"good": 1, "weak": 2}
    changed = model_pool.set_active(["good"], False, conn=conn)
    assert [m.name for m in changed] == ["good"] and not changed[0].active
    assert ranks() == {"good": None, "weak": 1}
    assert [m.name for m in model_pool.list_models(active_only=True, conn=conn)] == ["weak"]
    model_pool.set_active(["good"], True, conn=conn)
    assert ranks() == {"good": 1, "weak": 2}
    with pytest.raises(NotFound, match="unknown model"):
        model_pool.set_active(["good", "ghost"], False, conn=conn)
    assert model_pool.remove_model("weak", conn=conn) == 2
    assert ranks() == {"good": 1}


def test_cli_models(cli_env):
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["models", "add", "cli-m", "--endpoint", "http://x:8000/v1", "--cost-in", "0.1", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cost_in_per_m"] == 0.1
    assert runner.invoke(cli, ["models", "deactivate", "cli-m"]).exit_code == 0
    listed = json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)
    assert [(m["name"], m["active"]) for m in listed] == [("cli-m", False)]
    assert (
        json.loads(runner.invoke(cli, ["models", "list", "--active-only", "--json"]).output) == []
    )
    assert runner.invoke(cli, ["models", "activate", "cli-m"]).exit_code == 0
    assert "cli-m" in runner.invoke(cli, ["models", "list"]).output
    assert runner.invoke(cli, ["models", "remove", "cli-m", "--yes"]).exit_code == 0
    with connections.connect(cli_env) as c:
        assert c.execute("SELECT count(*) FROM avengers.models").fetchone()[0] == 0
    for sub in ("add", "list", "activate", "deactivate", "remove"):
        assert "Example:" in runner.invoke(cli, ["models", sub, "--help"]).output
