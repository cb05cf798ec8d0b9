"""Streams that move, on a synthetic store: a degraded model is routed around by the online arms
(also where it was routed alone) and never by the static one, a new model is only ever routed by
the online arms, a shifted dataset arrives only after the change; the recalibrated reference,
regret and recovery are reported, the store is unchanged afterwards, and the CLI parses the
scenario syntax."""

from __future__ import annotations

import json

import numpy as np
import pytest
from avengers_store.cli.main import cli
from avengers_store.cli.testing import run_cli
from click.testing import CliRunner

from avengers_store.errors import InputError
from avengers_store.evaluation import scenarios
from avengers_store.evaluation.online import evaluate_online
from avengers_store.evaluation.scenarios import Scenario
from avengers_store.store import connections
from avengers_store.testing import seed_store, table_counts


@pytest.fixture(scope="module")
def store(db_url) -> str:
    with connections.connect(db_url) as conn:
        seed_store(conn, per_blob=100)
        conn.commit()
    return db_url


def test_a_degraded_model_routed_alone_is_routed_around_without_exploration(store):
    before = table_counts(store)
    result = evaluate_online(
        k=4, seeds=[1, 2], batch=16, scenario=Scenario("degrade", "model-0", 0.3, flip=1.0),
        exploration_share=0.2, url=store,
    )  # fmt: skip
    assert table_counts(store) == before
    arms = result.arms
    assert result.scenario == "degrade:model-0@0.3,flip=1"
    assert result.change_at == round(0.3 * result.stream_queries)
    assert list(arms) == [
        "static", "online", "online + targeted", "best single", "recalibrated",
    ]  # fmt: skip
    static, online, explored = arms["static"], arms["online"], arms["online + targeted"]
    ref = arms["recalibrated"]
    # Model 0 (best on blob 0, which the OOD gamma queries sit near too) now always fails.
    assert static.regret.mean > 10
    # Routed alone on its clusters, its rivals have no feedback to compare it with; its own
    # outcomes fell far past the material change, after a point of the stream, and that decides:
    # the loop routes around it without exploring.
    assert online.routed_after_change["model-0"] < static.routed_after_change["model-0"] - 5
    assert online.regret.mean < static.regret.mean - 2
    # With exploration too.
    assert explored.routed_after_change["model-0"] < static.routed_after_change["model-0"] - 5
    assert explored.regret.mean < static.regret.mean - 2
    assert ref.regret.mean < explored.regret.mean
    assert static.recovery is None and ref.recovery == 0
    assert len(explored.regret_windows) == 10


def test_a_new_model_is_routed_only_by_the_online_arms(store):
    result = evaluate_online(
        k=4, seeds=[3], batch=16, scenario=Scenario("new-model", "model-2"),
        exploration=["targeted"], exploration_share=0.2, url=store,
    )  # fmt: skip
    arms = result.arms
    assert result.change_at == 0 and result.post_change_queries == result.stream_queries
    # Model 2 is the one good model on blob 2: without it static loses there, for good.
    assert arms["static"].regret.mean > 5
    assert arms["static"].routed_after_change["model-2"] == 0
    assert arms["online + targeted"].routed_after_change["model-2"] > 0
    assert arms["online + targeted"].explored.mean > 0
    assert arms["recalibrated"].regret.mean < arms["static"].regret.mean


def test_a_shifted_dataset_arrives_after_the_change_only():
    rng = np.random.default_rng(0)
    names = np.array(["alpha"] * 50 + ["beta"] * 30 + ["gamma"] * 20, dtype=object)
    split = np.array((["calibration"] * 30 + ["test"] * 20) + ["calibration"] * 30 + ["test"] * 20,
                     dtype=object)  # fmt: skip
    Y = rng.random((100, 3))
    test_rows = np.flatnonzero(split == "test")
    cal_rows = np.flatnonzero(split == "calibration")
    column = {"a": 0, "b": 1, "c": 2}
    # beta has no test queries: half of its 30 are streamed, the other half calibrates the
    # reference; 20 alpha + 20 gamma test queries are the rest.
    stream = scenarios.build(Scenario("shift", "beta", 0.5), 7, Y, names, split, test_rows,
                             cal_rows, column)  # fmt: skip
    streamed = names[stream.rows]
    assert stream.change == 20 and len(stream.rows) == 40 + 15
    assert not (streamed[: stream.change] == "beta").any()
    assert (streamed[stream.change :] == "beta").sum() == 15
    assert set(stream.reference_rows) | set(stream.rows[streamed == "beta"]) == set(range(50, 80))
    alone = scenarios.build(Scenario("shift", "beta", 0.5, mix=1.0), 7, Y, names, split,
                            test_rows, cal_rows, column)  # fmt: skip
    assert (names[alone.rows[alone.change :]] == "beta").all()
    again = scenarios.build(Scenario("shift", "beta", 0.5), 7, Y, names, split, test_rows,
                            cal_rows, column)  # fmt: skip
    assert np.array_equal(again.rows, stream.rows)  # seeded


def test_a_shift_replays_with_a_reference(store):
    result = evaluate_online(k=4, seeds=[1], batch=32, scenario=Scenario("shift", "beta"),
                             url=store)  # fmt: skip
    assert "recalibrated" in result.arms and result.scenario == "shift:beta@0.3"
    assert result.arms["recalibrated"].regret.mean < result.arms["static"].regret.mean


@pytest.mark.parametrize(
    "scenario",
    [Scenario("degrade", "no-such-model", 0.3), Scenario("shift", "no-such-dataset")],
)
def test_unknown_targets_are_refused(store, scenario):
    with pytest.raises(InputError) as caught:
        evaluate_online(k=4, seeds=[1], scenario=scenario, url=store)
    assert caught.value.location == "scenario"


def test_cli_scenarios(store, cli_env):
    out = json.loads(
        run_cli(
            "evaluate", "--online", "--k", "4", "--seeds", "5", "--batch", "32", "--scenario",
            "degrade:model-1@0.5,as=model-6", "--json",
        ).stdout
    )  # fmt: skip
    assert out["scenario"] == "degrade:model-1@0.5,as=model-6"
    assert out["arms"]["recalibrated"]["recovery"] == 0
    for bad, says in [
        ("degrade:model-1", "degrade:MODEL@FRACTION"),
        ("degrade:model-1@1.5", "[0, 1)"),
        ("drift:model-1@0.5", "expected iid"),
        ("shift:beta@0.2,flip=0.5", "belong to degrade"),
        ("degrade:model-1@0.2,speed=3", "unknown scenario option"),
    ]:
        failed = CliRunner().invoke(cli, ["evaluate", "--online", "--scenario", bad])
        assert failed.exit_code == 2 and says in failed.output, (bad, failed.output)
