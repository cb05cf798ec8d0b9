"""The loop's settings per clustering: read, changed (with what they recount), carried over to a
new version by recluster, refused with the option named when invalid."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from avengers_store.cli.main import cli
from avengers_store.cli.testing import run_cli, run_cli_error
from click.testing import CliRunner

from avengers_store.calibration.reclustering import recluster
from avengers_store.errors import InputError, NotFound
from avengers_store.production.settings import configure, loop_settings
from avengers_store.testing import seed_store


@pytest.fixture(scope="module")
def store(db_url) -> str:
    from avengers_store.store import connections

    with connections.connect(db_url) as conn:
        seed_store(conn)
        conn.commit()
    recluster(4, url=db_url)
    return db_url


def test_defaults_changes_and_carry_over(store):
    found = loop_settings(url=store)
    assert (found.production_weight, found.half_life, found.exploration) == (
        1.0,
        timedelta(days=14),
        "off",
    )
    assert (found.exploration_share, found.exploration_overlap, found.ood_quantile) == (
        0.02,
        0.2,
        0.99,
    )
    changed = configure(
        production_weight=0.25, half_life=timedelta(hours=36), exploration="thompson", url=store
    )
    assert (changed.production_weight, changed.half_life, changed.exploration) == (
        0.25,
        timedelta(hours=36),
        "thompson",
    )
    newer = recluster(4, seed=7, url=store)
    assert newer.id != found.clustering_id
    carried = loop_settings(url=store)
    assert carried.clustering_id == newer.id
    assert (carried.production_weight, carried.half_life, carried.exploration) == (
        0.25,
        timedelta(hours=36),
        "thompson",
    )
    assert loop_settings(found.clustering_id, url=store).exploration == "thompson"


def test_recluster_stores_the_distance_statistics(store):
    from avengers_store.store import connections

    with connections.connect(store) as conn:
        k, rows, n, bad = conn.execute(
            """SELECT k.k, count(d.*), sum(d.n),
                      count(*) FILTER (WHERE d.ood_distance IS NULL OR d.ood_distance <= 0)
               FROM avengers.active_clustering k
               JOIN avengers.cluster_distances d ON d.clustering_id = k.id
               GROUP BY k.k"""
        ).fetchone()
        clustered = conn.execute("SELECT n_queries FROM avengers.active_clustering").fetchone()[0]
    assert (rows, n, bad) == (k, clustered, 0)


@pytest.mark.parametrize(
    ("kwargs", "location"),
    [
        ({"production_weight": -1.0}, "production_weight"),
        ({"production_weight": float("inf")}, "production_weight"),
        ({"half_life": timedelta(0)}, "half_life"),
        ({"exploration": "greedy"}, "exploration"),
        ({"exploration_share": 1.5}, "exploration_share"),
        ({"ood_quantile": 1.0}, "ood_quantile"),
    ],
)
def test_invalid_settings_name_the_argument(store, kwargs, location):
    with pytest.raises(InputError) as caught:
        configure(url=store, **kwargs)
    assert caught.value.location == location


def test_cli_shows_and_changes_settings(store, cli_env):
    shown = json.loads(run_cli("clusterings", "configure", "--json").stdout)
    out = run_cli(
        "clusterings", "configure", str(shown["clustering_id"]), "--half-life", "7d",
        "--exploration", "epsilon", "--exploration-share", "0.2", "--production-weight", "0",
    ).stdout  # fmt: skip
    assert "production weight 0" in out and "epsilon (share 0.2)" in out and "7 days" in out
    error = run_cli_error("clusterings", "configure", "--ood-quantile", "2")
    assert isinstance(error, InputError) and error.location == "--ood-quantile"
    assert isinstance(run_cli_error("clusterings", "configure", "999"), NotFound)
    result = CliRunner().invoke(cli, ["clusterings", "configure", "--half-life", "soon"])
    assert result.exit_code == 2 and "--half-life" in result.output and "7d" in result.output
