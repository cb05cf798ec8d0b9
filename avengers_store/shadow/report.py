"""The shadow report: ``avengers.shadow_summary`` (sql/085_shadow.sql) read into values, the
95% intervals and the overlap verdict of the off-policy estimates, and its picture."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from avengers_store import figures
from avengers_store.store.connections import connection

SUMMARY_SQL = "SELECT * FROM avengers.shadow_summary(%s)"

# Rewarded requests where exploration asked the shadow's choice against the served policy's
# greedy one: below this the estimates rest on too few matched requests to be trusted.
MIN_SUPPORT = 10
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """An estimate of (shadow value - served value) with its 95% interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class ShadowSummary:
    """One row of ``avengers.shadow_summary``: overall (``cluster`` None) or one cluster."""

    policy_name: str
    cluster: int | None
    requests: int
    agreement: float | None
    agreement_greedy: float | None
    shadow_quality: float | None
    served_quality: float | None
    shadow_cost: float | None
    served_cost: float | None
    rewarded: int
    served_reward: float | None
    ips: float | None
    ips_se: float | None
    dr: float | None
    dr_se: float | None
    support: int
    disagreeing_rewarded: int
    unknown_propensity: int
    sampled: int
    sample_agreement: float | None
    sample_scored: int
    sample_difference: float | None
    sample_spend: float

    @property
    def overlap(self) -> str | None:
        """Why the off-policy estimates cannot be trusted (None: they can): no feedback, a
        propensity without closed form (thompson), or too few matched disagreements."""
        if self.rewarded == 0:
            return "no feedback on the shadowed requests"
        if self.unknown_propensity > 0:
            return (
                f"{self.unknown_propensity} rewarded request(s) have no propensity (thompson "
                "exploration): explore with epsilon to estimate"
            )
        if self.disagreeing_rewarded > 0 and self.support < MIN_SUPPORT:
            return (
                f"too little overlap: {self.support} rewarded request(s) where exploration asked "
                f"the shadow's choice, of {self.disagreeing_rewarded} where the policies "
                f"disagree (at least {MIN_SUPPORT} needed; turn exploration on or raise its share)"
            )
        return None

    def _interval(self, value: float | None, se: float | None) -> Estimate | None:
        if value is None or self.overlap is not None:
            return None
        half = Z95 * (se if se is not None and math.isfinite(se) else 0.0)
        return Estimate(value, value - half, value + half)

    @property
    def ips_estimate(self) -> Estimate | None:
        """Inverse-propensity estimate of shadow - served value (None: not supported)."""
        return self._interval(self.ips, self.ips_se)

    @property
    def dr_estimate(self) -> Estimate | None:
        """Doubly-robust estimate of shadow - served value (None: not supported)."""
        return self._interval(self.dr, self.dr_se)


@dataclass(frozen=True)
class ShadowReport:
    """The comparison since ``since``: per shadow policy its overall row and its clusters."""

    since: datetime
    rows: tuple[ShadowSummary, ...]

    def overall(self, name: str | None = None) -> ShadowSummary | None:
        """The overall row of shadow policy ``name`` (None: the first)."""
        return next(
            (r for r in self.rows if r.cluster is None and (name is None or r.policy_name == name)),
            None,
        )

    def clusters(self, name: str) -> list[ShadowSummary]:
        return [r for r in self.rows if r.policy_name == name and r.cluster is not None]


def report(
    since: timedelta | datetime | None = None,
    url: str | None = None,
    *,
    conn: psycopg.Connection | None = None,
) -> ShadowReport:
    """The shadow comparison of the decisions stored since ``since`` (a time, or a window
    ending now; None: all)."""
    now = datetime.now(UTC)
    start = (
        now - since if isinstance(since, timedelta) else since or datetime(1970, 1, 1, tzinfo=UTC)
    )
    with connection(url, conn=conn) as c:
        rows = c.execute(SUMMARY_SQL, (start,)).fetchall()
    return ShadowReport(start, tuple(ShadowSummary(*r) for r in rows))


def plot_report(found: ShadowReport, path: str | Path, name: str | None = None) -> Path:
    """Both policies' expected quality and cost (with the off-policy interval of the
    difference on the served feedback), and per cluster how often they disagree."""
    plt = figures.pyplot()
    row = found.overall(name)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if row is None:
        left.text(0.5, 0.5, "no shadow decisions", ha="center")
        return figures.save(fig, path)
    quality = [row.served_quality or 0.0, row.shadow_quality or 0.0]
    cost = [row.served_cost, row.shadow_cost]
    left.bar([0, 1], quality, color=["#4c72b0", "#dd8452"], width=0.6)
    est = row.dr_estimate
    if est is not None and row.served_reward is not None:
        # The observed served value and the shadow's doubly-robust value with its interval.
        left.errorbar([0], [row.served_reward], fmt="o", color="black", label="served: observed")
        left.errorbar(
            [1],
            [row.served_reward + est.value],
            yerr=[[est.value - est.low], [est.high - est.value]],
            fmt="o",
            color="black",
            capsize=6,
            label="shadow: doubly-robust, 95%",
        )
        left.legend(loc="lower right", fontsize=8)
    elif row.overlap is not None:
        # The picture declines as the report does, and says why.
        left.set_xlabel(
            textwrap.fill(f"no off-policy interval: {row.overlap.split(' (')[0]}", 70),
            fontsize=8,
        )
    labels = ["served", row.policy_name]
    if all(c is not None for c in cost):
        labels = [f"{lab}\ncost {c:.3g}" for lab, c in zip(labels, cost, strict=True)]
    left.set_xticks([0, 1], labels)
    left.set_ylabel("expected quality (routing score)")
    left.set_title(f"{row.requests} requests, agreement {100 * (row.agreement or 0):.1f}%")
    clusters = found.clusters(row.policy_name)
    right.bar(
        [c.cluster for c in clusters],
        [c.requests * (1 - (c.agreement or 0)) for c in clusters],
        color="#c44e52",
    )
    right.set_xlabel("cluster of the shadow policy's clustering")
    right.set_ylabel("requests where the two disagree")
    right.set_title("where they disagree")
    return figures.save(fig, path)
