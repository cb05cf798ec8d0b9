"""Majority vote over extracted answers.

Unparseable samples (value None) do not vote. Answers of different kinds (a text answer, a tool
call: ``ExtractedAnswer.kind``) are counted kind first: the kind most valid samples gave wins,
then the most common answer of that kind. Ties go to the answer (and the kind) given earliest in
the input order; callers pool samples model by model, in rank order, so the first model's
earliest sample wins a tie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from avengers_store.answering.extraction import TEXT, ExtractedAnswer


@dataclass(frozen=True)
class Vote:
    """``counts`` lists answers by votes (desc), then first appearance; ``share`` = winner /
    valid; ``kind`` is the winner's (``text`` or ``tool_calls``)."""

    winner: str | None
    counts: Mapping[str, int] = field(default_factory=dict)
    share: float = 0.0
    valid: int = 0
    total: int = 0
    winner_index: int | None = None  # position of the first sample that gave the winner
    kind: str | None = None


def vote(answers: Sequence[ExtractedAnswer | str | None]) -> Vote:
    """Count the valid answers; the winner is the most common answer of the most common kind,
    ties to the earliest given."""
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    kinds: dict[str, int] = {}
    kind_first: dict[str, int] = {}
    kind_of: dict[str, str] = {}
    for i, answer in enumerate(answers):
        value = answer.value if isinstance(answer, ExtractedAnswer) else answer
        if value is None or value == "":
            continue
        kind = answer.kind if isinstance(answer, ExtractedAnswer) else TEXT
        counts[value] = counts.get(value, 0) + 1
        first_seen.setdefault(value, i)
        kinds[kind] = kinds.get(kind, 0) + 1
        kind_first.setdefault(kind, i)
        kind_of.setdefault(value, kind)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], first_seen[kv[0]])))
    valid = sum(counts.values())
    if not ordered:
        return Vote(winner=None, counts={}, share=0.0, valid=0, total=len(answers))
    kind = min(kinds, key=lambda k: (-kinds[k], kind_first[k]))
    winner = next(value for value in ordered if kind_of[value] == kind)
    return Vote(
        winner=winner,
        counts=ordered,
        share=ordered[winner] / valid,
        valid=valid,
        total=len(answers),
        winner_index=first_seen[winner],
        kind=kind,
    )
