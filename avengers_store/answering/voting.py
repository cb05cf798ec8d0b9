"""Majority vote over extracted answers.

Unparseable samples (value None) do not vote. Ties go to the answer given earliest in the input
order; callers pool samples model by model, in rank order, so the first model's earliest sample
wins a tie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from avengers_store.answering.extraction import ExtractedAnswer


@dataclass(frozen=True)
class Vote:
    """``counts`` lists answers by votes (desc), then first appearance; ``share`` = winner / valid."""

    winner: str | None
    counts: Mapping[str, int] = field(default_factory=dict)
    share: float = 0.0
    valid: int = 0
    total: int = 0
    winner_index: int | None = None  # position of the first sample that gave the winner


def vote(answers: Sequence[ExtractedAnswer | str | None]) -> Vote:
    """Count the valid answers; the winner is the most common, ties to the earliest given."""
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for i, answer in enumerate(answers):
        value = answer.value if isinstance(answer, ExtractedAnswer) else answer
        if value is None or value == "":
            continue
        counts[value] = counts.get(value, 0) + 1
        first_seen.setdefault(value, i)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], first_seen[kv[0]])))
    valid = sum(counts.values())
    if not ordered:
        return Vote(winner=None, counts={}, share=0.0, valid=0, total=len(answers))
    winner = next(iter(ordered))
    return Vote(
        winner=winner,
        counts=ordered,
        share=ordered[winner] / valid,
        valid=valid,
        total=len(answers),
        winner_index=first_seen[winner],
    )
