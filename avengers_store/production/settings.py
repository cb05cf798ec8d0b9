"""The loop's settings, per clustering version (columns of ``avengers.clusterings``): how much
production outcomes count and how fast they fade, exploration, and the OOD threshold.

Defaults, and why:
- ``production_weight`` 1: production evidence (``avengers.production_evidence``: the update
  rule, sql/027_production.sql) counts in full, a feedback row as much as one calibration
  outcome of the same cluster before decay. 0 serves calibration outcomes only (the static
  router, exactly).
- ``change_threshold`` 3: the z-score above which a model's feedback, compared with that of
  the other models of its clusters and with its own calibration, says the model changed (a lower one caught a degraded
  model sooner on the replays but cost 0.2-0.5 points on the i.i.d. stream; docs/evaluation.md).
- ``half_life`` 14 days: a row counts half after two weeks, so a cluster's production evidence
  follows the traffic of about the last month and a model that got worse is seen within weeks.
- ``exploration`` off: a default route stays the same route for the same question until an
  operator opts in; on the replays targeted exploration moved quality by less than its noise.
  ``targeted`` (recommended where feedback flows) sends up to ``exploration_share`` of requests
  to a candidate that could plausibly be best (``production.exploration_rule``), with exact
  propensities for off-policy estimates.
- ``exploration_share`` 0.02 (0.05 for versions made before migration 0008): targeted's and
  epsilon's share of requests; 0.05 and 0.10 cost more on the calibration splits for no
  measurable gain.
- ``exploration_overlap`` 0.2: targeted's plausibility threshold (the chance of beating the
  leader).
- ``ood_quantile`` 0.99: about 1 in 100 calibration queries would be called out of
  distribution.

A new version (``recluster``) starts with the served version's settings. Changing ``half_life``
recounts the version's production outcomes and ``ood_quantile`` its distance statistics, in the
same transaction (a trigger on the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql

from avengers_store.arguments import one_of
from avengers_store.errors import InputError, NotFound, StoreStateError
from avengers_store.store import connections, driver_errors

EXPLORATION = ("off", "targeted", "thompson", "epsilon")

_COLUMNS = (
    "id, production_weight, half_life, exploration, exploration_share, ood_quantile, "
    "change_threshold, exploration_overlap"
)


@dataclass(frozen=True)
class LoopSettings:
    clustering_id: int
    production_weight: float
    half_life: timedelta
    exploration: str
    exploration_share: float
    ood_quantile: float
    change_threshold: float
    exploration_overlap: float


def _target(conn: psycopg.Connection, clustering_id: int | None) -> int:
    if clustering_id is not None:
        found = conn.execute(
            "SELECT id FROM avengers.clusterings WHERE id = %s", (clustering_id,)
        ).fetchone()
        if found is None:
            raise NotFound(
                f"clustering {clustering_id} does not exist (see `avengers clusterings list`)"
            )
        return clustering_id
    row = conn.execute("SELECT id FROM avengers.active_clustering").fetchone()
    if row is None:
        raise StoreStateError("no clustering is active: name one, or run `avengers recluster`")
    return row[0]


def loop_settings(
    clustering_id: int | None = None,
    *,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> LoopSettings:
    """The settings of a clustering version (default: the active one)."""
    with connections.connection(url, conn=conn) as c:
        target = _target(c, clustering_id)
        row = c.execute(
            f"SELECT {_COLUMNS} FROM avengers.clusterings WHERE id = %s", (target,)
        ).fetchone()
    return LoopSettings(*row)


def configure(
    clustering_id: int | None = None,
    *,
    production_weight: float | None = None,
    half_life: timedelta | None = None,
    exploration: str | None = None,
    exploration_share: float | None = None,
    ood_quantile: float | None = None,
    change_threshold: float | None = None,
    exploration_overlap: float | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> LoopSettings:
    """Change the given settings of a clustering version (default: the active one) in one
    transaction, with what they change (production outcomes recounted, distance statistics
    rewritten, the served views refreshed); returns the settings now in force."""
    changes: dict[str, object] = {}
    if production_weight is not None:
        if not (0.0 <= float(production_weight) < math.inf):
            raise InputError(
                f"production_weight must be >= 0 and finite, got {production_weight}",
                location="production_weight",
            )
        changes["production_weight"] = float(production_weight)
    if half_life is not None:
        if not isinstance(half_life, timedelta) or half_life <= timedelta(0):
            raise InputError(
                f"half_life must be a positive duration, got {half_life!r}", location="half_life"
            )
        changes["half_life"] = half_life
    if exploration is not None:
        changes["exploration"] = one_of(exploration, EXPLORATION, "exploration", "exploration")
    if exploration_share is not None:
        if not 0.0 <= float(exploration_share) <= 1.0:
            raise InputError(
                f"exploration_share must be in [0, 1], got {exploration_share}",
                location="exploration_share",
            )
        changes["exploration_share"] = float(exploration_share)
    if ood_quantile is not None:
        if not 0.0 < float(ood_quantile) < 1.0:
            raise InputError(
                f"ood_quantile must be in (0, 1), got {ood_quantile}", location="ood_quantile"
            )
        changes["ood_quantile"] = float(ood_quantile)
    if change_threshold is not None:
        if not 0.0 < float(change_threshold) < math.inf:
            raise InputError(
                f"change_threshold must be > 0 and finite, got {change_threshold}",
                location="change_threshold",
            )
        changes["change_threshold"] = float(change_threshold)
    if exploration_overlap is not None:
        if not 0.0 <= float(exploration_overlap) < 1.0:
            raise InputError(
                f"exploration_overlap must be in [0, 1), got {exploration_overlap}",
                location="exploration_overlap",
            )
        changes["exploration_overlap"] = float(exploration_overlap)
    with connections.connection(url, conn=conn) as c, driver_errors.translated(), c.transaction():
        target = _target(c, clustering_id)
        if changes:
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name))
                for name in changes
            )
            c.execute(
                sql.SQL("UPDATE avengers.clusterings SET {} WHERE id = %(id)s").format(assignments),
                {**changes, "id": target},
            )
        return loop_settings(target, conn=c)
