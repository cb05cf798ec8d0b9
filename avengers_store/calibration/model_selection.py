"""Model-set selection (paper): keep the ``budget`` models with the highest
s(m) = sum over clusters c of 1 / rank_m(c), over the active clustering.

Scores come from the ``avengers.model_selection_scores`` view; ties fall to the overall
calibration score, then the name. Ranks are among all models, active or not, so the choice does
not depend on which models happen to be active. With a price ceiling (``max_price``) only the
models priced at most that per 1M tokens compete, ranked among themselves
(``avengers.priced_selection_scores``): the best pool a budget per token can buy.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from avengers_store.errors import InputError, StoreStateError
from avengers_store.store import connections
from avengers_store.store.queries import query
from avengers_store.store.refresh import refresh_profiles


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
    price_in: float | None = None
    price_out: float | None = None


@dataclass(frozen=True)
class Selection:
    budget: int
    clustering_id: int
    selected: tuple[str, ...]
    scores: tuple[SelectionScore, ...]
    applied: bool
    max_price: float | None = None
    priced_out: tuple[str, ...] = ()  # models left out by max_price (dearer, or no price)


def select_models(
    budget: int,
    *,
    max_price: float | None = None,
    apply: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> Selection:
    """The top ``budget`` models by s(m). Models without outcomes in the clustered queries are
    never chosen. ``max_price``: only models whose input and output prices per 1M tokens are at
    most this compete (ranked among themselves; a model without a price is left out).
    ``apply``: make exactly the chosen models active (the rest inactive) and refresh profiles,
    in one transaction."""
    if budget < 1:
        raise InputError(f"budget must be at least 1, got {budget}", location="budget")
    if max_price is not None and not max_price >= 0:
        raise InputError(f"must be a price >= 0, got {max_price}", location="max_price")
    with connections.connection(url, conn=conn) as c, c.transaction():
        active = c.execute("SELECT id FROM avengers.active_clustering").fetchone()
        if active is None:
            raise StoreStateError(
                "no active clustering: run `avengers recluster` before selecting models"
            )
        if max_price is None:
            rows = c.execute(query("calibration", "selection_scores")).fetchall()
            priced_out: tuple[str, ...] = ()
        else:
            rows = c.execute(
                """SELECT model, active, selection_score, clusters_won, clusters_ranked,
                          overall_score, selection_rank, price_in, price_out
                   FROM avengers.priced_selection_scores(%s) ORDER BY selection_rank""",
                (max_price,),
            ).fetchall()
            kept = {r[0] for r in rows}
            priced_out = tuple(
                n
                for (n,) in c.execute("SELECT name FROM avengers.models ORDER BY name")
                if n not in kept
            )
        ranked = [r for r in rows if r[4] > 0]
        if not ranked:
            if max_price is not None:
                raise StoreStateError(
                    f"no model priced at most {max_price:g} per 1M tokens has outcomes on the "
                    "clustered calibration queries: raise `max_price` or set prices "
                    "(avengers.models.cost_in_per_m, cost_out_per_m)"
                )
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
                price_in=r[7],
                price_out=r[8],
            )
            for r in rows
        )
    return Selection(
        budget=budget,
        clustering_id=active[0],
        selected=chosen,
        scores=scores,
        applied=apply,
        max_price=max_price,
        priced_out=priced_out,
    )
