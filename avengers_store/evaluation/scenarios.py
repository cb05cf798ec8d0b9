"""Streams that move: the drift scenarios of the online replay, built from the stored outcomes.

A scenario says what changes at which point of the stream (``at``: a fraction of it) and, for
the recalibrated reference, what calibration would have been had it seen the change:

``iid``
    The test split in a seeded order: nothing moves (the replay as before).
``degrade``
    From the change on, the target model's outcomes are another model's on the same queries
    (``like``; default: the weakest active model by dataset-balanced calibration mean), or its
    own with each set to 0 with probability ``flip`` (a right answer turned wrong).
``new-model``
    The target model's calibration outcomes are kept out of calibration; it joins the pool at
    the change (default: the start of the stream) with no calibration evidence.
``shift``
    The target dataset is kept out of calibration; its queries enter the stream at the change,
    mixed at random with the rest (``mix``: their share of the queries after the change; 1: they
    alone). Streamed are its test queries when it has calibration queries too, else a seeded
    half of its queries; the reference calibrates on the rest.

Everything random is drawn from the seed, so a scenario and a seed give one stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg

from avengers_store.arguments import one_of
from avengers_store.errors import InputError

KINDS = ("iid", "degrade", "new-model", "shift")
# Where the change happens when no fraction is given.
DEFAULT_AT = {"iid": 0.0, "degrade": 0.3, "new-model": 0.0, "shift": 0.3}


@dataclass(frozen=True)
class Scenario:
    """What moves in the stream (see the module docstring)."""

    kind: str = "iid"
    target: str | None = None
    at: float | None = None
    like: str | None = None
    flip: float | None = None
    mix: float | None = None

    def __post_init__(self) -> None:
        one_of(self.kind, KINDS, "scenario", "scenario")
        if self.kind != "iid" and not self.target:
            raise InputError(f"scenario {self.kind} needs a target", location="scenario")
        if self.at is not None and not 0.0 <= self.at < 1.0:
            raise InputError(
                f"the change point must be in [0, 1), got {self.at}", location="scenario"
            )
        if (self.like is not None or self.flip is not None) and self.kind != "degrade":
            raise InputError("as= and flip= belong to degrade", location="scenario")
        if self.like is not None and self.flip is not None:
            raise InputError("give degrade either as= or flip=, not both", location="scenario")
        if self.flip is not None and not 0.0 < self.flip <= 1.0:
            raise InputError(f"flip must be in (0, 1], got {self.flip}", location="scenario")
        if self.mix is not None and (self.kind != "shift" or not 0.0 < self.mix <= 1.0):
            raise InputError("mix= belongs to shift and must be in (0, 1]", location="scenario")

    @property
    def change_at(self) -> float:
        return DEFAULT_AT[self.kind] if self.at is None else self.at

    @property
    def moves(self) -> bool:
        return self.kind != "iid"

    def label(self) -> str:
        """The scenario in the CLI's syntax, defaults filled in."""
        if self.kind == "iid":
            return "iid"
        text = f"{self.kind}:{self.target}@{self.change_at:g}"
        if self.like is not None:
            text += f",as={self.like}"
        if self.flip is not None:
            text += f",flip={self.flip:g}"
        if self.mix is not None:
            text += f",mix={self.mix:g}"
        return text


IID = Scenario()


@dataclass
class Stream:
    """One seed's stream: query rows in order, where the change starts, the outcome every model
    would get at each position (NaN: not evaluated), and what the recalibrated reference
    changes in calibration."""

    rows: np.ndarray
    change: int
    outcomes: np.ndarray
    model: int | None  # the degraded or new model's column
    reference_outcomes: np.ndarray | None  # degrade: the target's calibration outcomes, changed
    reference_rows: np.ndarray | None  # shift: the target dataset's rows calibrated on


def resolve(scenario: Scenario, models: tuple[str, ...], datasets: set[str], weakest: str):
    """The scenario's target (and degrade's ``like``) checked against the store; ``like``
    filled in with ``weakest`` when neither it nor flip is given."""
    if scenario.kind in ("degrade", "new-model") and scenario.target not in models:
        raise InputError(
            f"no active model {scenario.target!r}; active models: {', '.join(models)}",
            location="scenario",
        )
    if scenario.kind == "shift" and scenario.target not in datasets:
        raise InputError(
            f"no dataset {scenario.target!r} with queries to stream; datasets: "
            f"{', '.join(sorted(datasets))}",
            location="scenario",
        )
    if scenario.kind == "degrade":
        like = scenario.like
        if like is None and scenario.flip is None:
            like = weakest
        if like is not None and like not in models:
            raise InputError(f"no active model {like!r} to degrade to", location="scenario")
        if like == scenario.target:
            raise InputError("a model cannot degrade to itself", location="scenario")
        return Scenario("degrade", scenario.target, scenario.at, like, scenario.flip)
    return scenario


def build(
    scenario: Scenario,
    seed: int,
    Y: np.ndarray,
    dataset: np.ndarray,
    split: np.ndarray,
    test_rows: np.ndarray,
    calibration_rows: np.ndarray,
    column: dict[str, int],
) -> Stream:
    """The stream of a seed. ``test_rows``: the evaluated test queries (iid streams them in
    ``default_rng(seed).permutation`` order, as the replay always has); ``calibration_rows``:
    those calibration clusters (degrade's reference changes the target's outcomes there)."""
    rng = np.random.default_rng(seed)
    if scenario.kind != "shift":
        rows = rng.permutation(test_rows)
        change = int(round(scenario.change_at * len(rows)))
        outcomes = Y[rows].copy()
        model = column[scenario.target] if scenario.target is not None else None
        reference = None
        if scenario.kind == "degrade":
            assert model is not None
            after = rows[change:]
            if scenario.flip is not None:
                failed = np.random.default_rng([seed, 3]).random(len(after)) < scenario.flip
                outcomes[change:, model] = np.where(failed, 0.0, Y[after, model])
                cal_failed = (
                    np.random.default_rng([seed, 4]).random(len(calibration_rows)) < scenario.flip
                )
                reference = np.where(cal_failed, 0.0, Y[calibration_rows, model])
            else:
                like = column[str(scenario.like)]
                outcomes[change:, model] = Y[after, like]
                reference = Y[calibration_rows, like].copy()
        return Stream(rows, change, outcomes, model, reference, None)
    inside = dataset == scenario.target
    own_test = np.flatnonzero(inside & (split == "test"))
    own_cal = np.flatnonzero(inside & (split == "calibration"))
    if len(own_test) and len(own_cal):
        streamed, kept = own_test, own_cal
    else:
        pool = np.concatenate([own_test, own_cal])
        halves = np.random.default_rng([seed, 1]).permutation(pool)
        streamed, kept = np.sort(halves[: len(pool) // 2]), np.sort(halves[len(pool) // 2 :])
    if not len(streamed):
        raise InputError(
            f"dataset {scenario.target!r} has too few queries to stream", location="scenario"
        )
    others = rng.permutation(test_rows[~inside[test_rows]])
    change = int(round(scenario.change_at * len(others)))
    rest = others[change:]
    moved = np.random.default_rng([seed, 2]).permutation(streamed)
    if scenario.mix is not None:
        if scenario.mix == 1.0:
            rest = rest[:0]
        else:
            wanted = int(round(len(moved) * (1.0 - scenario.mix) / scenario.mix))
            if wanted <= len(rest):
                rest = rest[:wanted]
            else:
                moved = moved[: int(round(len(rest) * scenario.mix / (1.0 - scenario.mix)))]
    after = np.concatenate([rest, moved])
    after = after[np.random.default_rng([seed, 5]).permutation(len(after))]
    rows = np.concatenate([others[:change], after])
    return Stream(rows, change, Y[rows].copy(), None, None, kept)


def keep_out(conn: psycopg.Connection, scenario: Scenario, calibration_ids: list[int]) -> None:
    """Keep what the scenario hides out of the next calibration (inside the caller's
    transaction, which the replay rolls back): a new model's calibration outcomes, a shifted
    dataset's queries (marked out of distribution, so never clustered)."""
    if scenario.kind == "new-model":
        conn.execute(
            "DELETE FROM avengers.outcomes o USING avengers.models m "
            "WHERE o.model_id = m.id AND m.name = %s AND o.query_id = ANY(%s)",
            (scenario.target, calibration_ids),
        )
    elif scenario.kind == "shift":
        conn.execute(
            "UPDATE avengers.datasets SET is_ood = true WHERE name = %s", (scenario.target,)
        )


def reference_world(
    conn: psycopg.Connection,
    scenario: Scenario,
    stream: Stream,
    calibration_ids: list[int],
    query_ids: np.ndarray,
    split: np.ndarray,
) -> None:
    """Calibration as it would be after the change (inside the caller's rolled-back
    transaction): the degraded model's outcomes changed on the calibration queries, or the
    shifted dataset calibrated on its queries that are not streamed."""
    if scenario.kind == "degrade" and stream.reference_outcomes is not None:
        scores = stream.reference_outcomes
        ok = ~np.isnan(scores)
        conn.execute(
            "UPDATE avengers.outcomes o SET score = x.s FROM avengers.models m, "
            "unnest(%s::bigint[], %s::float8[]) AS x(q, s) "
            "WHERE o.model_id = m.id AND m.name = %s AND o.query_id = x.q",
            (
                [calibration_ids[i] for i in np.flatnonzero(ok)],
                scores[ok].tolist(),
                scenario.target,
            ),
        )
    elif scenario.kind == "shift" and stream.reference_rows is not None:
        kept = stream.reference_rows
        relabel = kept[split[kept] != "calibration"]
        away = stream.rows[split[stream.rows] == "calibration"]
        ids = query_ids[np.concatenate([relabel, away])].tolist()
        labels = ["calibration"] * len(relabel) + ["test"] * len(away)
        if ids:
            # A text in both splits may now share a side: the key is checked at commit only,
            # and the replay rolls back.
            conn.execute("SET CONSTRAINTS avengers.queries_dataset_split_text_key DEFERRED")
            conn.execute(
                "UPDATE avengers.queries q SET split = s.split "
                "FROM unnest(%s::bigint[], %s::text[]) AS s(id, split) WHERE q.id = s.id",
                (ids, labels),
            )
        conn.execute(
            "UPDATE avengers.datasets SET is_ood = false WHERE name = %s", (scenario.target,)
        )
