"""The online replay on a synthetic store: arms, windows and macros; weight 0 routes as the
static router (and as ``evaluate``); exploration recorded; the store unchanged afterwards."""

from __future__ import annotations

import json

import pytest
from avengers_store.cli.testing import run_cli

from avengers_store.errors import InputError
from avengers_store.evaluation.online import evaluate_online
from avengers_store.evaluation.replay import evaluate
from avengers_store.store import connections
from avengers_store.testing import seed_store, table_counts


@pytest.fixture(scope="module")
def store(db_url) -> str:
    with connections.connect(db_url) as conn:
        seed_store(conn, per_blob=40)
        conn.commit()
    return db_url


def test_weight_zero_routes_exactly_as_the_static_router_and_evaluate(store):
    before = table_counts(store)
    result = evaluate_online(
        k=4, seeds=[1, 2], batch=16, windows=4, production_weight=0, exploration="epsilon",
        exploration_share=0.5, url=store,
    )  # fmt: skip
    assert table_counts(store) == before  # rolled back: no clustering, log or feedback kept
    assert result.online_equals_static is True
    arms = result.arms
    assert list(arms) == ["static", "online", "online + epsilon", "best single"]  # as asked
    assert arms["online"].accuracy == arms["static"].accuracy
    assert arms["online"].windows == arms["static"].windows and len(arms["static"].windows) == 4
    # 3 datasets x 4 blobs' test queries: alpha (2 blobs), beta (2), gamma (1, OOD), 12 each.
    assert result.stream_queries == 5 * 12
    assert arms["static"].explored.mean == 0 and arms["online + epsilon"].explored.mean > 10
    static = evaluate(k=4, seeds=[1, 2], url=store)
    assert arms["static"].id_macro.values == pytest.approx(static.groups["id"].routed.values)
    assert arms["static"].ood_macro.values == pytest.approx(static.groups["ood"].routed.values)
    assert result.best_single == static.groups["id"].best_single_cal_balanced.model


def test_the_stream_mean_is_the_mean_of_its_windows(store):
    result = evaluate_online(k=4, seeds=[3], batch=60, windows=5, url=store)
    for arm in result.arms.values():
        assert arm.accuracy.mean == pytest.approx(sum(w.mean for w in arm.windows) / 5)
    assert result.online_equals_static is None  # weight 1: not checked
    assert result.production_weight == 1.0 and result.explorations == ("targeted",)
    assert list(result.arms)[2:3] == ["online + targeted"]
    assert result.scenario == "iid" and result.change_at == 0


@pytest.mark.parametrize(
    ("kwargs", "location"),
    [({"batch": 0}, "batch"), ({"windows": 0}, "windows"), ({"exploration": "off"}, "exploration")],
)
def test_bad_options_name_the_argument(store, kwargs, location):
    with pytest.raises(InputError) as caught:
        evaluate_online(k=4, seeds=[1], url=store, **kwargs)
    assert caught.value.location == location


def test_cli_online_json(store, cli_env):
    out = json.loads(
        run_cli(
            "evaluate", "--online", "--k", "4", "--seeds", "5", "--batch", "32",
            "--production-weight", "0", "--json",
        ).stdout
    )  # fmt: skip
    assert out["online_equals_static"] is True
    assert set(out["arms"]) == {"static", "online", "online + targeted", "best single"}
    text = run_cli(
        "evaluate", "--online", "--k", "4", "--seeds", "5", "--windows", "3", "--exploration",
        "targeted,thompson",
    ).stdout  # fmt: skip
    assert "w3" in text and "best single" in text and "online + thompson" in text
    assert "online + targeted" in text
