"""``avengers shadow start | stop | status | report``: compute a stored policy's decisions beside
the served ones, and compare the two."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command, Group
from avengers_store.cli.output import echo_json, echo_table
from avengers_store.cli.param_types import Duration

from avengers_store.errors import InputError
from avengers_store.shadow import control
from avengers_store.shadow.report import Estimate, plot_report, report


def _spend(value: str | None) -> float | None:
    """``5/day`` or ``5``: the daily cap."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(/\s*day)?\s*", value)
    if m is None:
        raise InputError(f"expected an amount per day such as 5/day, got {value!r}",
                         location="--max-spend")  # fmt: skip
    return float(m.group(1))


def _status(s: control.ShadowStatus) -> None:
    if s.name is None:
        click.echo(f"not shadowing ({s.decisions} decisions stored before)")
        return
    cap = "no cap" if s.max_spend_per_day is None else f"cap {s.max_spend_per_day:g}/day"
    click.echo(
        f"shadowing {s.name} since {s.since:%Y-%m-%d %H:%M %Z}: {s.decisions} decisions, "
        f"{s.samples} sampled ({100 * s.sample_share:g}% of disagreements, {cap}; "
        f"spent today {s.spent_today:.4g})"
    )


@click.group("shadow", cls=Group)
def command() -> None:
    """Shadow routing: every decision also computed under a stored policy, off the response
    path, and compared with the served one.

    \b
    Example:
      avengers shadow start k16 --sample-share 0.1 --max-spend 5/day
      avengers shadow report --since 7d
    """


@command.command("start", cls=Command, flags={"max_spend_per_day": "--max-spend"})
@click.argument("name")
@click.option("--sample-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the disagreeing requests also asked of the shadow's top model.")  # fmt: skip
@click.option("--max-spend", help="Most the sampled answers may cost per UTC day, e.g. 5/day.")
def start(name: str, sample_share: float, max_spend: str | None) -> None:
    """Shadow the stored policy NAME (replacing another shadow).

    \b
    Example:
      avengers shadow start k16
      avengers shadow start paper --sample-share 0.2 --max-spend 2/day
    """
    _status(control.start(name, sample_share=sample_share, max_spend_per_day=_spend(max_spend)))


@command.command("stop")
def stop() -> None:
    """Stop shadowing (what was stored stays for the report).

    \b
    Example:
      avengers shadow stop
    """
    _status(control.stop())


@command.command("status")
def status() -> None:
    """What is shadowed, and what it stored.

    \b
    Example:
      avengers shadow status
    """
    _status(control.status())


def _est(e: Estimate | None) -> str:
    return "" if e is None else f"{e.value:+.4f} [{e.low:+.4f}, {e.high:+.4f}]"


def _f(x: float | None, spec: str = ".4f") -> str:
    return "" if x is None else format(x, spec)


@command.command("report")
@click.option("--since", type=Duration(), default="7d", show_default=True,
              help="Shadow decisions of the last N (s, m, h, d, w).")  # fmt: skip
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Also draw both policies' quality and cost, and where they disagree, to this PNG.")  # fmt: skip
@options.json_output
def report_(since: timedelta, plot: str | None, as_json: bool) -> None:
    """Shadow against served: agreement overall and per cluster, both policies' expected
    quality and cost on the same requests, the sampled answers, and inverse-propensity and
    doubly-robust estimates of the difference from the served feedback (95% intervals), or
    why there is too little overlap to estimate. SQL: avengers.shadow_summary(since).

    \b
    Example:
      avengers shadow report
      avengers shadow report --since 30d --plot shadow.png --json
    """
    found = report(since)
    path = plot_report(found, plot) if plot else None
    if as_json:
        rows: list[dict[str, Any]] = []
        for r in found.rows:
            rows.append({**r.__dict__, "overlap": r.overlap, "ips_estimate": r.ips_estimate,
                         "dr_estimate": r.dr_estimate})  # fmt: skip
        echo_json({"since": found.since, "rows": rows, "plot": str(path) if path else None})
        return
    overall = [r for r in found.rows if r.cluster is None]
    if not overall:
        click.echo(f"no shadow decisions since {found.since:%Y-%m-%d %H:%M %Z}")
    for r in overall:
        click.echo(
            f"shadow {r.policy_name}: {r.requests} shadow decisions since "
            f"{found.since:%Y-%m-%d %H:%M %Z}; agreement {100 * (r.agreement or 0):.1f}% "
            f"(with the served policy's greedy choice {100 * (r.agreement_greedy or 0):.1f}%)"
        )
        click.echo(
            f"  expected quality: served {_f(r.served_quality)}, shadow {_f(r.shadow_quality)}; "
            f"expected cost: served {_f(r.served_cost, '.4g')}, shadow {_f(r.shadow_cost, '.4g')}"
        )
        click.echo(
            f"  sampled disagreements: {r.sampled} (spend {r.sample_spend:.4g}); answers agree "
            f"{'' if r.sample_agreement is None else f'{100 * r.sample_agreement:.1f}%'}"
            + (
                f"; scored {r.sample_scored}, shadow - served {r.sample_difference:+.4f}"
                if r.sample_scored and r.sample_difference is not None
                else ""
            )
        )
        click.echo(f"  feedback on {r.rewarded} served answers (mean {_f(r.served_reward)})")
        if r.overlap is not None:
            click.echo(f"  off-policy estimate: {r.overlap}")
        else:
            click.echo(f"  shadow - served, inverse-propensity: {_est(r.ips_estimate)}")
            click.echo(f"  shadow - served, doubly-robust:      {_est(r.dr_estimate)}")
        clusters = found.clusters(r.policy_name)
        if clusters:
            echo_table([{"cluster": c.cluster, "requests": c.requests,
                         "agreement": f"{100 * (c.agreement or 0):.1f}%",
                         "served quality": _f(c.served_quality),
                         "shadow quality": _f(c.shadow_quality)} for c in clusters])  # fmt: skip
    if path:
        click.echo(f"wrote {path}")
