"""What shadowing costs the served responses, through the gateway on the demo store, and what
it stores: in front of the real SmolLM2 server (xllamacpp, in this process), then in front of an
upstream that answers at once (bench/instant_upstream.py, as bench/gateway.py's tail phase), so
that the gateway's own path is what is measured and no model's timing hides it.

The demo store (``avengers demo``: the bundled sample, k = 16 active) gets every model's endpoint
on the phase's upstream and a price ($0.2 per 1M tokens in and out); policies ``default``
(served) and ``k8`` (a k = 8 re-cluster, stored as ready) are stored. The gateway
(bench/gateway_app.py, the app of ``avengers serve``, its real embedder) runs as its own
process. One client sends ``POST /v1/chat/completions`` (model "avengers", one sample,
temperature 0, max_tokens 4) in blocks that switch shadowing on (``shadow start k8
--sample-share S --max-spend X``) and off, waiting out the shadow's lingering batch (1 s)
before each switch and the clients' roles cache (2 s) after it: every round is three blocks,
off / on / off again (reversed every other round), of the same questions in the same order,
each text under a tag of the same length (so no cache, the embedder's or llama.cpp's prompt
cache, finds another block's prompt). Request j of the "on"
block is paired with request j of the "off" block beside it. The figures: p50 on and off, the
paired differences' p50 (on - off) with a bootstrap 95% interval (rounds resampled), target
within 1 ms, and the same for the A/A control that pairs the two "off" blocks.

Then ``avengers shadow report`` over the phase's decisions: the shadow decisions stored (one per
"on" request), the sampled share of the disagreements (within --sample-share) and the sampled
spend (within the cap).

Example:
    .venv/bin/python bench/shadow_overhead.py
    .venv/bin/python bench/shadow_overhead.py --only-instant --instant-rounds 30 --instant-block 20
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime

import httpx
import numpy as np
from _common import describe_server, finish, fresh_database, parser, percentile, say
from gateway import QUESTIONS, start_gateway, start_upstream, totals

from avengers_store import demo
from avengers_store.calibration import reclustering
from avengers_store.client_core import ROLES_TTL
from avengers_store.routing import stored_policies
from avengers_store.routing.policy import Policy
from avengers_store.shadow import control, report
from avengers_store.shadow.batches import LINGER_S
from avengers_store.store import connections
from avengers_store.testing import serve_smol

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STATES = ("off", "on", "off2")
# One letter per state: the tags of a pair are the same length, so the texts embed alike.
TAG = {"off": "a", "on": "b", "off2": "c"}
BOOTSTRAP = 5000


def ask(http: httpx.Client, base: str, text: str, max_tokens: int) -> float:
    body = {
        "model": "avengers",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0.0,
        "max_tokens": max_tokens,
    }
    t0 = time.perf_counter()
    response = http.post(base + "/v1/chat/completions", json=body)
    response.raise_for_status()
    return (time.perf_counter() - t0) * 1000.0


def paired(a: list[list[float]], b: list[list[float]]) -> list[float]:
    return [x - y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]


def median_interval(
    a: list[list[float]], b: list[list[float]], seed: int = 0
) -> tuple[float, float, float]:
    """The p50 of the paired differences a - b and its bootstrap 95% interval. Rounds are
    resampled whole, not pairs: the requests of one block share that moment's machine, so
    pairs of one round are not independent of each other."""
    x = np.asarray([[p - q for p, q in zip(ra, rb, strict=True)] for ra, rb in zip(a, b,
                   strict=True)], dtype=np.float64)  # fmt: skip
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(x), size=(BOOTSTRAP, len(x)))
    medians = np.median(x[picks].reshape(BOOTSTRAP, -1), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(x)), float(low), float(high)


def build_store(url: str) -> None:
    """The demo store with policies ``default`` (promoted) and ``k8`` (a k = 8 re-cluster)."""
    with tempfile.TemporaryDirectory() as tmp:
        demo.run_demo(url=url, plot=os.path.join(tmp, "profiles.png"))
    with connections.connect(url) as conn:
        k8 = reclustering.recluster(
            k=8, seed=demo.SEED, activate=False, stratify="none", conn=conn
        ).id
        conn.commit()
        stored_policies.create("default", Policy(), conn=conn)
        stored_policies.create("k8", Policy(clustering_id=k8), note="k = 8", conn=conn)
        stored_policies.promote("default", conn=conn)
        conn.commit()


def point_models(url: str, endpoint: str, served_name: str) -> None:
    with connections.connect(url) as conn:
        conn.execute(
            "UPDATE avengers.models SET endpoint = %s, served_name = %s, "
            "cost_in_per_m = 0.2, cost_out_per_m = 0.2",
            (endpoint, served_name),
        )
        conn.commit()


def measure(url: str, args, rounds_n: int, block: int, label: str) -> dict:
    """One phase: a gateway in front of the models' current endpoint, ``rounds_n`` rounds of
    three blocks of ``block`` requests; its latency figures and what the store kept."""
    began = datetime.now(UTC)
    process, base = start_gateway(url, args.max_tokens)
    rounds: dict[str, list[list[float]]] = {s: [] for s in STATES}
    # Per state, the gateway's own seconds outside the upstream calls, from its /metrics (the
    # upstream stage also counts the shadow's samples, which belong to no request).
    inside: dict[str, list[float]] = {s: [0.0, 0.0] for s in STATES}
    try:
        with httpx.Client(timeout=120) as http, connections.connect(url, autocommit=True) as c:
            for i in range(3):  # warm-up: connections, the embedder, the upstream
                ask(http, base, f"[w{i:02d}-00] {QUESTIONS[i]}", args.max_tokens)
            for r in range(rounds_n):
                questions = [QUESTIONS[(r + j) % len(QUESTIONS)] for j in range(block)]
                for state in STATES if r % 2 == 0 else STATES[::-1]:
                    if state == "on":
                        control.start(
                            "k8", sample_share=args.sample_share,
                            max_spend_per_day=args.max_spend, conn=c,
                        )  # fmt: skip
                    else:
                        control.stop(conn=c)
                    time.sleep(ROLES_TTL + 0.3)  # every client has read the switch
                    before = totals(base)
                    rounds[state].append(
                        [
                            ask(http, base, f"[{TAG[state]}{r:03d}-{j:02d}] {q}", args.max_tokens)
                            for j, q in enumerate(questions)
                        ]
                    )
                    after = totals(base)
                    inside[state][0] += (after["request_sum"] - before["request_sum"]) - (
                        after["upstream_sum"] - before["upstream_sum"]
                    )
                    inside[state][1] += after["request_count"] - before["request_count"]
                    # The block's shadow work runs (it lingers up to LINGER_S) before the next
                    # switch, under the role its requests were served beside.
                    time.sleep(LINGER_S + 0.3)
            control.stop(conn=c)
            time.sleep(3.0)  # the background shadow work of the last requests
    finally:
        process.terminate()
        process.wait(timeout=60)
    found = report.report(began, url=url)
    row = found.overall("k8")
    with connections.connect(url) as conn:
        disagreeing, chosen, asked, spend, reserved = conn.execute(
            """SELECT count(*) FILTER (WHERE d.model IS DISTINCT FROM d.served_model),
                      count(*) FILTER (WHERE d.sample), count(s.route_id),
                      coalesce(sum(s.cost), 0), coalesce(sum(s.reserved), 0)
               FROM avengers.shadow_decisions d
               LEFT JOIN avengers.shadow_samples s USING (route_id)
               WHERE d.at >= %s""",
            (began,),
        ).fetchone()
    diff = paired(rounds["on"], rounds["off"])
    p50, low, high = median_interval(rounds["on"], rounds["off"], seed=1)
    c50, clow, chigh = median_interval(rounds["off2"], rounds["off"], seed=2)
    flat = {s: [x for block_ms in rounds[s] for x in block_ms] for s in STATES}
    on_requests = len(flat["on"])
    mean_inside = {s: 1000 * inside[s][0] / inside[s][1] for s in STATES}
    figures = {
        "upstream": label,
        "rounds": rounds_n,
        "block": block,
        "pairs": len(diff),
        "served_ms_p50_on": round(percentile(flat["on"], 50), 2),
        "served_ms_p50_off": round(percentile(flat["off"], 50), 2),
        "served_ms_p50_off2": round(percentile(flat["off2"], 50), 2),
        "on_minus_off_ms_p50": round(p50, 3),
        "on_minus_off_ms_p50_ci95": [round(low, 3), round(high, 3)],
        "on_minus_off_ms_p90": round(percentile(diff, 90), 2),
        "control_off2_minus_off_ms_p50": round(c50, 3),
        "control_off2_minus_off_ms_p50_ci95": [round(clow, 3), round(chigh, 3)],
        "gateway_side_ms_mean": {s: round(v, 2) for s, v in mean_inside.items()},
        "requests_shadowed": on_requests,
        "shadow_decisions": row.requests if row else 0,
        "agreement": round(row.agreement, 4) if row and row.agreement is not None else None,
        "disagreeing": disagreeing,
        "sample_share": args.sample_share,
        "chosen_for_sampling": chosen,
        "sampled": asked,
        "sampled_share_of_disagreeing": round(asked / disagreeing, 3) if disagreeing else None,
        "max_spend_per_day": args.max_spend,
        "sampled_spend": round(float(spend), 8),
        "reserved": round(float(reserved), 8),
    }
    figures["met"] = {
        "p50_within_1ms": abs(p50) <= 1.0,
        "p50_interval_within_1ms": low >= -1.0 and high <= 1.0,
        "decisions_equal_requests": figures["shadow_decisions"] == on_requests,
        "sampled_within_chosen": asked <= chosen,
        "spend_within_cap": float(spend) <= args.max_spend,
    }
    say(
        f"[{label}] served p50 on {figures['served_ms_p50_on']:.2f} ms, off "
        f"{figures['served_ms_p50_off']:.2f} ms, off again {figures['served_ms_p50_off2']:.2f}"
        f" ms; paired p50 on - off {p50:+.3f} ms [95% {low:+.3f}, {high:+.3f}] over "
        f"{len(diff)} pairs; off again - off {c50:+.3f} ms [{clow:+.3f}, {chigh:+.3f}]"
    )
    say(
        f"[{label}] inside the gateway, all but the upstream calls, mean: "
        + ", ".join(f"{s} {v:.2f} ms" for s, v in mean_inside.items())
    )
    say(
        f"[{label}] shadow report: {figures['shadow_decisions']} decisions for {on_requests} "
        f"requests, agreement {figures['agreement']}, {disagreeing} disagreeing, {chosen} chosen"
        f" for sampling (share {args.sample_share}), {asked} sampled, spend "
        f"{figures['sampled_spend']} of a {args.max_spend} cap (reserved {float(reserved):.6f})"
    )
    return figures


def instant_phase(url: str, args) -> dict:
    upstream, upstream_url = start_upstream()
    try:
        point_models(url, upstream_url, "instant")
        return measure(url, args, args.instant_rounds, args.instant_block, "instant")
    finally:
        upstream.terminate()
        upstream.wait(timeout=30)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rounds", type=int, default=10, help="rounds with SmolLM2")
    ap.add_argument("--per-round", type=int, default=5, help="requests per block with SmolLM2")
    ap.add_argument("--instant-rounds", type=int, default=25, help="rounds, instant upstream")
    ap.add_argument("--instant-block", type=int, default=20,
                    help="requests per block, instant upstream")  # fmt: skip
    ap.add_argument("--only-instant", action="store_true",
                    help="the instant upstream alone (no SmolLM2), written to "
                    "bench/results/shadow_overhead_instant.json")  # fmt: skip
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--sample-share", type=float, default=0.2)
    ap.add_argument("--max-spend", type=float, default=0.0003, help="a day, in the price unit")
    args = ap.parse_args()
    store = "demo (bundled sample, k = 16 served), shadow: k = 8 re-cluster"
    if args.only_instant:
        with fresh_database("shadow_overhead") as url:
            server = describe_server(url)
            say("building the demo store ...")
            build_store(url)
            instant = instant_phase(url, args)
        finish("shadow_overhead_instant", {"store": store, "instant": instant, "server": server})
        return
    with fresh_database("shadow_overhead") as url:
        server = describe_server(url)
        say("building the demo store ...")
        build_store(url)
        with serve_smol() as endpoint:
            point_models(url, endpoint.base_url, endpoint.served_name)
            smol = measure(
                url, args, args.rounds, args.per_round, "SmolLM2-135M-Instruct Q4_1 via xllamacpp"
            )
        instant = instant_phase(url, args)
    finish(
        "shadow_overhead",
        {"store": store, "max_tokens": args.max_tokens, "smollm2": smol, "instant": instant,
         "server": server},
    )  # fmt: skip


if __name__ == "__main__":
    main()
