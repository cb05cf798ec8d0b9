"""Which routed questions the demo shows, and the one line that says why each went where it did."""

from __future__ import annotations

import random

from avengers_store.demo import PICK_LENGTH, RoutedQuestion, pick_questions, why
from avengers_store.routing import Candidate, RouteDecision


def candidate(model: str, rank: int, score: float | None, mean: float | None = 0.5) -> Candidate:
    return Candidate(
        model=model,
        rank=rank,
        mean_score=mean,
        n=40 if mean is not None else None,
        wilson_low=0.35 if mean is not None else None,
        wilson_high=0.65 if mean is not None else None,
        endpoint=None,
        served_name=None,
        score=score,
    )


def routed(query_id: int, dataset: str, text: str, cluster: int, model: str) -> RoutedQuestion:
    decision = RouteDecision(1, cluster, 0.5, (candidate(model, 1, 0.6),))
    return RoutedQuestion(query_id, dataset, text, cluster, model, why(decision), decision)


def test_why_names_the_score_the_runner_up_and_the_cluster_record():
    decision = RouteDecision(
        3, 7, 0.41, (candidate("alpha", 1, 0.6125), candidate("beta", 2, 0.5875, mean=0.7))
    )
    assert why(decision) == (
        "pooled score 0.613 vs 0.588 for beta; cluster 7 alone 0.50 (n 40, Wilson 0.35-0.65)"
    )


def test_why_without_a_runner_up_or_an_outcome_on_the_cluster():
    alone = RouteDecision(3, 2, 0.4, (candidate("alpha", 1, 0.6, mean=None),))
    assert why(alone) == "pooled score 0.600"
    assert why(RouteDecision(3, 2, 0.4, ())) == "no active model has a profile for this cluster"


def text(length: int) -> str:
    return "q" * length


def test_picks_show_new_models_clusters_and_datasets_one_line_long_first():
    pool = [
        routed(1, "mmlu", text(PICK_LENGTH), 0, "alpha"),
        routed(2, "mmlu", text(PICK_LENGTH + 1), 5, "beta"),
        routed(3, "gsm8k", text(PICK_LENGTH - 2), 1, "alpha"),
        routed(4, "gsm8k", text(PICK_LENGTH + 4), 2, "beta"),
        routed(5, "mbpp", text(PICK_LENGTH + 140), 3, "gamma"),
        routed(6, "mbpp", text(10), 4, "delta"),
    ]
    # Nearest the one-line length first: 1, 2, 3, 4, 6, 5. 1 is first; 2 repeats mmlu, 3 alpha;
    # 4 and 6 add a model, a cluster and a dataset; 5 then repeats mbpp, so it only comes once
    # the rule asks for a new model and cluster alone.
    assert [q.query_id for q in pick_questions(pool, 3)] == [1, 4, 6]
    assert [q.query_id for q in pick_questions(pool, 4)] == [1, 4, 6, 5]


def test_picks_relax_the_rules_until_enough_and_ignore_input_order():
    pool = [routed(i, "mmlu", text(PICK_LENGTH + i), 0, "alpha") for i in range(1, 5)]
    picked = pick_questions(pool, 3)
    assert [q.query_id for q in picked] == [1, 2, 3]
    shuffled = list(pool)
    random.Random(7).shuffle(shuffled)
    assert pick_questions(shuffled, 3) == picked
    assert pick_questions(pool[:2], 5) == tuple(pool[:2])
