"""The trade-off as users reach it: ``avengers route/ask --tradeoff/--max-cost``, both clients'
route, route_many and ask (with the route log), on a store whose clusters sit on real
all-MiniLM-L6-v2 embeddings and whose models have prices but no measurements (so the expected
cost is the documented default: text length / 4 prompt tokens, 256 completion tokens)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import psycopg
import pytest
from avengers_store.cli.main import cli
from click.testing import CliRunner

from avengers_store import AvengersClient
from avengers_store.async_client import AsyncAvengersClient
from avengers_store.calibration.embedders import get_embedder
from avengers_store.testing import ARITHMETIC, LITERATURE, two_topic_store

QUESTION, OTHER = ARITHMETIC, LITERATURE
# (price in, price out) per 1M tokens: the best model is the dearest.
PRICES = {"alpha": (2.0, 6.0), "bravo": (0.5, 1.0), "charlie": (0.1, 0.2)}


def alike(*decisions) -> bool:
    """The same decision, up to the embedding's float noise: a text embedded alone and in a
    batch with longer ones (padded) differ in the last bits, and so do their distances."""
    first = decisions[0]
    for d in decisions[1:]:
        assert d.distance == pytest.approx(first.distance, abs=1e-5)
        assert d.novelty == pytest.approx(first.novelty, abs=1e-5)
    exact = {dataclasses.replace(d, distance=0.0, novelty=None) for d in decisions}
    return len(exact) == 1


def default_cost(name: str, text: str, completions: int = 1) -> float:
    cin, cout = PRICES[name]
    return (cin * len(text) / 4 + completions * cout * 256) / 1e6


@pytest.fixture(scope="module")
def store(db_url) -> str:
    return two_topic_store(
        db_url,
        {
            "alpha": [[1, 1, 1, 1], [1, 1, 1, 0]],
            "bravo": [[1, 1, 1, 0], [1, 1, 0, 0]],
            "charlie": [[1, 0, 0, 0], [1, 0, 0, 0]],
        },
        prices=PRICES,
    )


def test_cli_route_lists_expected_cost_per_candidate(store, cli_env):
    runner = CliRunner()
    plain = json.loads(runner.invoke(cli, ["route", QUESTION, "--top-n", "3", "--json"]).stdout)
    result = runner.invoke(cli, ["route", QUESTION, "--top-n", "3", "--tradeoff", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    traded = json.loads(result.stdout)
    assert traded["tradeoff"] == 0.3 and traded["max_cost"] is None
    assert all(c["expected_cost"] is None for c in plain["candidates"])
    for c in traded["candidates"]:
        assert c["expected_cost"] == pytest.approx(default_cost(c["model"], QUESTION))
        assert 0 <= c["utility"] <= 1 and c["over_budget"] is False
    # alpha leads on quality (plain order); at 0.3 bravo's lower cost wins.
    assert [c["model"] for c in plain["candidates"]] == ["alpha", "bravo", "charlie"]
    assert traded["candidates"][0]["model"] != "alpha"
    utilities = [c["utility"] for c in traded["candidates"]]
    assert utilities == sorted(utilities, reverse=True)
    text = runner.invoke(cli, ["route", QUESTION, "--top-n", "3", "--tradeoff", "0.3"]).stdout
    assert "trade-off 0.3" in text and "expected cost" in text and "utility" in text


def test_cli_max_cost_below_every_model_returns_the_cheapest_flagged(store, cli_env):
    runner = CliRunner()
    cheapest = default_cost("charlie", QUESTION)
    result = runner.invoke(
        cli, ["route", QUESTION, "--top-n", "3", "--max-cost", f"{cheapest / 2:.10f}", "--json"]
    )
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert [c["model"] for c in decision["candidates"]] == ["charlie"]
    assert decision["candidates"][0]["over_budget"] is True
    text = runner.invoke(cli, ["route", QUESTION, "--max-cost", "0"]).stdout
    assert "no candidate fits max cost 0" in text and "(over budget)" in text
    # A ceiling between the prices keeps the ones that fit, in the plain order.
    ceiling = default_cost("bravo", QUESTION) * 1.01
    fits = json.loads(
        runner.invoke(
            cli, ["route", QUESTION, "--top-n", "3", "--max-cost", str(ceiling), "--json"]
        ).stdout
    )
    assert [c["model"] for c in fits["candidates"]] == ["bravo", "charlie"]
    bad = runner.invoke(cli, ["route", QUESTION, "--tradeoff", "1.5"])
    assert bad.exit_code == 2 and "--tradeoff" in bad.output


def test_clients_route_with_costs_alike(store):
    queries = [QUESTION, OTHER, np.asarray(get_embedder("all-MiniLM-L6-v2").embed([OTHER])[0])]
    with AvengersClient(store) as client:
        one = client.route(QUESTION, 3, tradeoff=0.5)
        many = client.route_many(queries, 3, tradeoff=0.5, prompt_chars=[None, None, 5])
        vector = client.route(queries[2], 3, tradeoff=0.5, prompt_chars=5)
        plain = client.route_many(queries, 3)
        ones = client.route_many(queries, 3, tradeoff=1.0)

    async def run():
        async with AsyncAvengersClient(store) as aclient:
            return (
                await aclient.route(QUESTION, 3, tradeoff=0.5),
                await aclient.route_many(queries, 3, tradeoff=0.5, prompt_chars=[None, None, 5]),
            )

    aone, amany = asyncio.run(run())
    assert alike(one, many[0], aone, amany[0])
    assert many == amany and many[2] == vector
    assert many[2].candidates[0].expected_cost != many[1].candidates[0].expected_cost
    assert [c.expected_cost for c in many[1].candidates] == pytest.approx(
        [default_cost(c.model, OTHER) for c in many[1].candidates]
    )
    for a, b in zip(plain, ones, strict=True):  # tradeoff 1 = the plain routing
        assert [(c.model, c.score) for c in a.candidates] == [
            (c.model, c.score) for c in b.candidates
        ]


def test_ask_counts_the_samples_and_logs_the_costs(store, scripted_server):
    scripted_server.answers("b", "42")
    scripted_server.answers("c", "42")
    with psycopg.connect(store) as conn:
        for name, served in (("bravo", "b"), ("charlie", "c")):
            conn.execute(
                "UPDATE avengers.models SET endpoint = %s, served_name = %s WHERE name = %s",
                (scripted_server.base_url, served, name),
            )
    try:
        with AvengersClient(store) as client:
            answer = client.ask(QUESTION, samples=3, task_type="math", tradeoff=0.2)
        decision = answer.decision
        assert decision.model == "charlie" and answer.models == ("charlie",)
        assert decision.expected_cost == pytest.approx(default_cost("charlie", QUESTION, 3))
        with psycopg.connect(store) as conn:
            meta = conn.execute(
                "SELECT metadata FROM avengers.route_log WHERE route_id = %s", (answer.route_id,)
            ).fetchone()[0]
        assert meta["tradeoff"] == 0.2 and meta["over_budget"] is False
        assert meta["expected_costs"] == pytest.approx(
            [c.expected_cost for c in decision.candidates]
        )
    finally:
        with psycopg.connect(store) as conn:
            conn.execute("UPDATE avengers.models SET endpoint = NULL")
