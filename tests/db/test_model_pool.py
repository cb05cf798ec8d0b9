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


@pytest.mark.parametrize(
    "endpoint, message",
    [
        ("file:///etc/passwd", "is not an http or https URL"),
        ("javascript:alert(1)", "is not an http or https URL"),
        ("ftp://mirror.example/v1", "is not an http or https URL"),
        ("vllm:8000/v1", "is not an http or https URL"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("http://", "has no host"),
        ("http://vllm:99999/v1", "invalid port"),
        ("http://vllm:8000/v1?key=1", "no ?query"),
        ("http://vllm:8000/v 1", "spaces or control characters"),
        ("http://bob:hunter2@vllm:8000/v1", "credentials in the URL"),
        ("https://bob@vllm:8000/v1", "credentials in the URL"),
    ],
)
def test_bad_endpoints_are_refused_naming_the_argument(conn, endpoint, message):
    with pytest.raises(InputError, match=r"^endpoint: ") as info:
        model_pool.add_model("m", endpoint, conn=conn)
    assert message in str(info.value) and "hunter2" not in str(info.value)
    assert info.value.location == "endpoint"
    model_pool.add_model("m", conn=conn)
    with pytest.raises(InputError, match=r"^endpoint: "):
        model_pool.set_model("m", endpoint=endpoint, conn=conn)
    assert model_pool.get_model("m", conn=conn).endpoint is None


def test_good_endpoints_are_kept(conn):
    for i, endpoint in enumerate(
        ["http://vllm:8000/v1", "https://api.example/v1", "http://[::1]:8000", "HTTP://h/v1"]
    ):
        assert model_pool.add_model(f"m{i}", endpoint, conn=conn).endpoint == endpoint
    assert model_pool.add_model("padded", "  http://h/v1 ", conn=conn).endpoint == "http://h/v1"


def test_api_key_env_must_be_a_variable_name_and_is_not_echoed(conn):
    with pytest.raises(InputError, match=r"^api_key_env: expected the NAME") as info:
        model_pool.add_model("m", "http://h/v1", api_key_env="sk-live-abc123", conn=conn)
    assert "abc123" not in str(info.value)
    assert model_pool.add_model("m", api_key_env="VLLM_API_KEY", conn=conn).api_key_env


@pytest.mark.parametrize("served", ["", "   "])
def test_a_blank_served_name_is_refused_when_adding_as_when_setting(conn, served):
    with pytest.raises(InputError, match=r"^served_name: a served name must not be blank"):
        model_pool.add_model("m", "http://h/v1", served_name=served, conn=conn)
    assert model_pool.list_models(conn=conn) == []
    model_pool.add_model("m", "http://h/v1", conn=conn)
    with pytest.raises(InputError, match=r"^served_name: a served name must not be blank"):
        model_pool.set_model("m", served_name=served, conn=conn)


def test_set_model_changes_fields_and_keeps_outcomes(conn):
    _tiny_active_clustering(conn)

    def outcomes():
        return conn.execute("SELECT count(*) FROM avengers.outcomes").fetchone()[0]

    def served(name):
        return conn.execute(
            "SELECT endpoint, served_name, api_key_env FROM avengers.routing_models "
            "WHERE model_id = (SELECT id FROM avengers.models WHERE name = %s)",
            (name,),
        ).fetchone()

    before = outcomes()
    changed = model_pool.set_model(
        "good",
        endpoint="http://vllm-good:8000/v1",
        served_name="org/good",
        api_key_env="GOOD_KEY",
        cost_in=0.2,
        conn=conn,
    )
    assert (changed.endpoint, changed.served_name, changed.api_key_env) == (
        "http://vllm-good:8000/v1",
        "org/good",
        "GOOD_KEY",
    )
    assert (changed.cost_in_per_m, changed.cost_out_per_m, changed.active) == (0.2, None, True)
    assert outcomes() == before
    # Routing reads the change in the same transaction (trigger on avengers.models).
    assert served("good") == ("http://vllm-good:8000/v1", "org/good", "GOOD_KEY")
    only_cost = model_pool.set_model("good", cost_out=0.4, conn=conn)
    assert only_cost.endpoint == "http://vllm-good:8000/v1" and only_cost.cost_out_per_m == 0.4
    cleared = model_pool.set_model("good", clear=("endpoint", "api_key_env"), conn=conn)
    assert (cleared.endpoint, cleared.api_key_env, cleared.served_name) == (None, None, "org/good")
    assert served("good") == (None, "org/good", None)
    assert outcomes() == before
    with pytest.raises(NotFound, match="no model 'ghost'"):
        model_pool.set_model("ghost", cost_in=1.0, conn=conn)
    with pytest.raises(InputError, match="nothing to change"):
        model_pool.set_model("good", conn=conn)
    with pytest.raises(InputError, match=r"^clear: endpoint given and cleared"):
        model_pool.set_model("good", endpoint="http://h/v1", clear=("endpoint",), conn=conn)
    with pytest.raises(InputError, match=r"^clear: cannot clear name"):
        model_pool.set_model("good", clear=("name",), conn=conn)


def test_cli_models_set_gives_a_loaded_model_an_endpoint(cli_env):
    runner = CliRunner()
    with connections.connect(cli_env) as c:
        model_pool.model_ids(c, ["from-table"], create=True)  # as load-table creates them
        c.commit()
    refused = runner.invoke(cli, ["models", "add", "from-table", "--endpoint", "http://h:8000/v1"])
    assert refused.exit_code != 0 and "avengers models set from-table" in str(refused.exception)
    result = runner.invoke(
        cli, ["models", "set", "from-table", "--endpoint", "http://h:8000/v1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["endpoint"] == "http://h:8000/v1"
    bad = runner.invoke(cli, ["models", "set", "from-table", "--endpoint", "file:///etc/passwd"])
    assert bad.exit_code != 0 and str(bad.exception).startswith("--endpoint: ")
    secret = runner.invoke(cli, ["models", "add", "x", "--endpoint", "http://u:hunter2@h/v1"])
    assert secret.exit_code != 0 and "hunter2" not in str(secret.exception) + secret.output
    assert "--api-key-env" in str(secret.exception)
    cleared = runner.invoke(cli, ["models", "set", "from-table", "--clear-endpoint"])
    assert cleared.exit_code == 0 and "endpoint none" in cleared.output
    with connections.connect(cli_env) as c:
        assert c.execute("SELECT endpoint FROM avengers.models").fetchall() == [(None,)]
    assert "Example:" in runner.invoke(cli, ["models", "set", "--help"]).output
