"""Model-set selection (paper): keep the ``budget`` models with the highest
s(m) = sum over clusters c of 1 / rank_m(c), over the active clustering.

Scores come from the ``avengers.model_selection_scores`` view; ties fall to the overall
calibration score, then the name. Ranks are among all models, active or not, so the choice does
not depend on which models happen to be active.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from avengers_store.calibration.profiles import refresh_profiles
from avengers_store.errors import InputError, StoreStateError
from avengers_store.store import connections


@dataclass(frozen=True)
class SelectionScore:
    model: str
    active: bool
    selection_score: float
    clusters_won: int
    clusters_ranked: int
    overall_score: float | None
    selection_rank: int
    selected: bool


@dataclass(frozen=True)
class Selection:
    budget: int
    clustering_id: int
    selected: tuple[str, ...]
    scores: tuple[SelectionScore, ...]
    applied: bool


def select_models(
    budget: int,
    *,
    apply: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> Selection:
    """The top ``budget`` models by s(m). Models without outcomes in the clustered queries are
    never chosen. ``apply``: make exactly the chosen models active (the rest inactive) and
    refresh profiles, in one transaction."""
    if budget < 1:
        raise InputError(f"budget must be at least 1, got {budget}", location="budget")
    with connections.connection(url, conn=conn) as c, c.transaction():
        active = c.execute("SELECT id FROM avengers.active_clustering").fetchone()
        if active is None:
            raise StoreStateError(
                "no active clustering: run `avengers recluster` before selecting models"
            )
        rows = c.execute(
            """SELECT model, active, selection_score, clusters_won, clusters_ranked,
                      overall_score, selection_rank
               FROM avengers.model_selection_scores ORDER BY selection_rank"""
        ).fetchall()
        ranked = [r for r in rows if r[4] > 0]
        if not ranked:
            raise StoreStateError(
                "no model has outcomes on the clustered calibration queries: import outcomes"
            )
        chosen = tuple(r[0] for r in ranked[:budget])
        if apply:
            c.execute("UPDATE avengers.models SET active = (name = ANY(%s))", (list(chosen),))
            refresh_profiles(c)
        scores = tuple(
            SelectionScore(
                model=r[0],
                active=(r[0] in chosen) if apply else r[1],
                selection_score=float(r[2]),
                clusters_won=r[3],
                clusters_ranked=r[4],
                overall_score=r[5],
                selection_rank=r[6],
                selected=r[0] in chosen,
            )
            for r in rows
        )
    return Selection(
        budget=budget, clustering_id=active[0], selected=chosen, scores=scores, applied=apply
    )
