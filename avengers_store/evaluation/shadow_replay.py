"""Shadow on replay: the test split streamed through the store as production, a stored policy
shadowed beside the served one, and the shadow report's figures set beside the truth, which
replay knows because every model's outcome is stored.

Per seed, in a savepoint rolled back afterwards: the served clustering is fitted (k, seed), the
served policy explores (epsilon, ``share``) and each test query, in batches, is routed, logged
and fed back the outcome of the model that answered (a route-log and a feedback row, as
production writes them); the shadow policy's decisions are computed by the store's own
``avengers.shadow_decide``. A shadow policy naming a clustering is replayed with a clustering of
that version's k fitted on the same seed. The report (``avengers.shadow_summary``) is read
before the rollback, with agreement computed directly from the two decisions and the true
difference mean(outcome of the shadow's choice) - mean(outcome of the model asked).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from avengers_store import routing
from avengers_store.answering import route_log
from avengers_store.calibration import reclustering
from avengers_store.evaluation.harness import Replay
from avengers_store.routing import stored_policies
from avengers_store.routing.decide import decide
from avengers_store.routing.policy import Policy
from avengers_store.shadow import control, work
from avengers_store.shadow.report import ShadowSummary, plot_report, report
from avengers_store.store import connections

REPLAY_NAME = "replay-shadow"
AGREEMENT_SQL = (
    "SELECT agreement FROM avengers.shadow_agreement WHERE policy_name = %s AND cluster IS NULL"
)


@dataclass(frozen=True)
class ShadowSeed:
    """One seed: the report's overall row, the agreement the ``avengers.shadow_agreement``
    view gives and the one computed directly from the two decisions, the true difference and
    whether the doubly-robust interval covers it."""

    seed: int
    summary: ShadowSummary
    agreement_view: float
    agreement_direct: float
    truth: float

    @property
    def covered(self) -> bool | None:
        """Whether the doubly-robust interval covers the truth (None: the report declined to
        give one, ``summary.overlap`` says why)."""
        est = self.summary.dr_estimate
        return None if est is None else est.low <= self.truth <= est.high

    @property
    def verdict(self) -> str:
        """``covers``, ``misses``, or ``declined`` (too little overlap to estimate)."""
        return {True: "covers", False: "misses", None: "declined"}[self.covered]


def evaluate_shadow(
    name: str,
    *,
    k: int = 64,
    seeds: Sequence[int] = (42, 999, 2024, 2025, 3407),
    share: float = 0.2,
    batch: int = 256,
    method: str | None = None,
    plot: str | Path | None = None,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> list[ShadowSeed]:
    """Replay the test split as production under the served policy (``method``, epsilon
    exploration at ``share``) with the stored policy ``name`` shadowed; one ``ShadowSeed`` per
    seed. ``plot``: the last seed's report picture. The store is unchanged afterwards."""
    out: list[ShadowSeed] = []
    with connections.connection(url, conn=conn) as c, c.transaction() as tx:
        shadowed = stored_policies.show(name, conn=c).policy
        shadow_k = None
        if shadowed.clustering_id is not None:
            shadow_k = c.execute(
                "SELECT k FROM avengers.clusterings WHERE id = %s", (shadowed.clustering_id,)
            ).fetchone()[0]
        chosen = routing.routing_method(method)
        rp = Replay(c, method=chosen, stratify="dataset", top_n=1, datasets=None,
                    ood_macro=None, progress=False)  # fmt: skip
        rows = np.flatnonzero(rp.test_mask())
        served = Policy(method=chosen, exploration="epsilon", exploration_share=share,
                        production_weight=0.0)  # fmt: skip
        model_id = dict(zip(rp.models, rp.model_ids.tolist(), strict=True))
        for seed in seeds:
            with c.transaction() as seed_tx:
                reclustering.recluster(k, "kmeans", seed, conn=c)
                policy = shadowed
                if shadow_k is not None:
                    other = reclustering.recluster(shadow_k, "kmeans", seed, activate=False, conn=c)
                    policy = shadowed.replace(clustering_id=other.id)
                stored_policies.create(REPLAY_NAME, policy, replace=True, conn=c)
                control.start(REPLAY_NAME, conn=c)
                rng = np.random.default_rng(seed)
                order = rows[rng.permutation(len(rows))]
                outcome_asked, outcome_shadow, agree = [], [], []
                for start in range(0, len(order), batch):
                    part = order[start : start + batch]
                    vectors = rp.X[part]
                    draws = [int(x) for x in rng.integers(0, 2**62, size=len(part))]
                    decisions = decide(c, vectors, served, seeds=draws)
                    direct = decide(c, vectors, policy.replace(exploration="off"))
                    log_rows, items, fed = [], [], []
                    for row, d, s, vec in zip(part, decisions, direct, vectors, strict=True):
                        rid = uuid.uuid4()
                        model, pick = d.candidates[0].model, s.candidates[0].model
                        log_rows.append(route_log.entry(
                            str(int(rp.query_ids[row])), decision=d, answer=None,
                            strategy="direct", latency_ms=0.0, route_id=rid, models=[model],
                        ))  # fmt: skip
                        found = work.item(rid, vec, d, text=None, shadow=REPLAY_NAME)
                        if found is not None:
                            items.append(found)
                        score = float(rp.Y0[row, rp.column[model]])
                        fed.append((str(rid), model_id[model], score))
                        outcome_asked.append(score)
                        outcome_shadow.append(float(rp.Y0[row, rp.column[pick]]))
                        agree.append(pick == model)
                    route_log.write(c, log_rows)
                    with c.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO avengers.feedback (route_id, source, model_id, score) "
                            "VALUES (%s, 'replay', %s, %s)",
                            fed,
                        )
                    c.execute(
                        work.DECIDE_SQL, (Jsonb([i.entry() for i in items]), REPLAY_NAME)
                    ).fetchall()
                found_report = report(conn=c)
                (view,) = c.execute(AGREEMENT_SQL, (REPLAY_NAME,)).fetchone()
                truth = float(np.mean(outcome_shadow) - np.mean(outcome_asked))
                out.append(ShadowSeed(seed, found_report.overall(REPLAY_NAME), float(view),
                                      float(np.mean(agree)), truth))  # fmt: skip
                if plot is not None and seed == seeds[-1]:
                    plot_report(found_report, plot, REPLAY_NAME)
                raise psycopg.Rollback(seed_tx)
        raise psycopg.Rollback(tx)
    return out
