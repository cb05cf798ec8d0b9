"""Majority vote: invalid answers do not vote; ties go to the earliest answer."""

from __future__ import annotations

from avengers_store.answering.extraction import ExtractedAnswer
from avengers_store.answering.voting import vote


def answers(*values):
    return [ExtractedAnswer(value=v, raw=f"raw {v}") for v in values]


def test_majority_and_share_of_valid_votes():
    result = vote(answers("42", "41", "42", None, "42"))
    assert result.winner == "42"
    assert dict(result.counts) == {"42": 3, "41": 1}
    assert result.valid == 4 and result.total == 5
    assert result.share == 0.75
    assert result.winner_index == 0


def test_invalid_answers_never_win():
    result = vote(answers(None, None, None, "7"))
    assert result.winner == "7" and result.share == 1.0 and result.valid == 1
    assert list(result.counts) == ["7"]


def test_tie_goes_to_the_earliest_answer():
    assert vote(answers("b", "a", "a", "b")).winner == "b"
    assert vote(answers("a", "b", "b", "a")).winner == "a"
    result = vote(answers(None, "x", "y", "z"))
    assert result.winner == "x" and result.winner_index == 1
    assert list(result.counts) == ["x", "y", "z"]


def test_pooled_tie_goes_to_the_first_model():
    first = [ExtractedAnswer("1", model="m1"), ExtractedAnswer("2", model="m1")]
    second = [ExtractedAnswer("2", model="m2"), ExtractedAnswer("1", model="m2")]
    result = vote(first + second)
    assert result.winner == "1" and result.share == 0.5


def test_counts_are_ordered_by_votes_then_first_appearance():
    result = vote(["c", "a", "b", "a", "b", "a"])
    assert list(result.counts.items()) == [("a", 3), ("b", 2), ("c", 1)]


def test_no_valid_answers():
    result = vote(answers(None, None))
    assert result.winner is None and result.share == 0.0 and result.valid == 0
    assert result.total == 2 and result.winner_index is None
    assert vote([]).winner is None
