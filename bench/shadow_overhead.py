"""What shadowing costs the served responses, through the gateway on the demo store with the real
SmolLM2 server (xllamacpp, in this process), and what it stores.

The demo store (``avengers demo``: the bundled sample, k = 16 active) gets every model's endpoint
on SmolLM2 and a price ($0.2 per 1M tokens in and out); policies ``default`` (served) and
``k8`` (a k = 8 re-cluster, stored as ready) are stored. The gateway (bench/gateway_app.py, the
app of ``avengers serve``) runs as its own process. One client sends ``POST
/v1/chat/completions`` (model "avengers", one sample, temperature 0, max_tokens 4) in rounds
that alternate shadowing on (``shadow start k8 --sample-share S --max-spend X``) and off,
waiting out the clients' roles cache (2 s) after each switch; request j of an "on" round is
paired with request j of the "off" round beside it (same question, another tag, so neither
finds the other's prompt in llama.cpp's cache). The figure: the paired differences' p50 (on -
off), target within 1 ms; an A/A control pairs two "off" rounds the same way.

Then ``avengers shadow report``: the shadow decisions stored (one per "on" request), the
sampled share of the disagreements (within --sample-share) and the sampled spend (within the
cap).

Example:
    .venv/bin/python bench/shadow_overhead.py
    .venv/bin/python bench/shadow_overhead.py --rounds 10 --per-round 5
"""

from __future__ import annotations

import os
import tempfile
import time

import httpx
from _common import describe_server, finish, fresh_database, parser, percentile, say
from gateway import QUESTIONS, start_gateway, totals

from avengers_store import demo
from avengers_store.calibration import reclustering
from avengers_store.client_core import ROLES_TTL
from avengers_store.routing import stored_policies
from avengers_store.routing.policy import Policy
from avengers_store.shadow import control, report
from avengers_store.store import connections
from avengers_store.testing import serve_smol

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rounds", type=int, default=10, help="'on' rounds (as many 'off')")
    ap.add_argument("--per-round", type=int, default=5, help="requests per round")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--sample-share", type=float, default=0.2)
    ap.add_argument("--max-spend", type=float, default=0.0003, help="a day, in the price unit")
    args = ap.parse_args()
    with fresh_database("shadow_overhead") as url, serve_smol() as endpoint:
        server = describe_server(url)
        say("building the demo store ...")
        with tempfile.TemporaryDirectory() as tmp:
            demo.run_demo(url=url, plot=os.path.join(tmp, "profiles.png"))
        with connections.connect(url) as conn:
            conn.execute(
                "UPDATE avengers.models SET endpoint = %s, served_name = %s, "
                "cost_in_per_m = 0.2, cost_out_per_m = 0.2",
                (endpoint.base_url, endpoint.served_name),
            )
            conn.commit()
            k8 = reclustering.recluster(
                k=8, seed=demo.SEED, activate=False, stratify="none", conn=conn
            ).id
            conn.commit()
            stored_policies.create("default", Policy(), conn=conn)
            stored_policies.create("k8", Policy(clustering_id=k8), note="k = 8", conn=conn)
            stored_policies.promote("default", conn=conn)
            conn.commit()
        process, base = start_gateway(url, args.max_tokens)
        rounds: dict[str, list[list[float]]] = {"on": [], "off": [], "off2": []}
        # Per state, the gateway's own seconds outside the upstream call, from its /metrics.
        inside: dict[str, list[float]] = {s: [0.0, 0.0] for s in rounds}
        try:
            with httpx.Client(timeout=120) as http, connections.connect(url, autocommit=True) as c:
                for i in range(3):  # warm-up: connections, the embedder, llama.cpp
                    ask(http, base, f"[w{i}] {QUESTIONS[i]}", args.max_tokens)
                order = ["off", "on", "off2"]
                for r in range(args.rounds):
                    for state in order if r % 2 == 0 else order[::-1]:
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
                                ask(http, base, f"[{state}{r}-{j}] {q}", args.max_tokens)
                                for j, q in enumerate(
                                    QUESTIONS[(r + j) % len(QUESTIONS)]
                                    for j in range(args.per_round)
                                )
                            ]
                        )
                        after = totals(base)
                        inside[state][0] += (after["request_sum"] - before["request_sum"]) - (
                            after["upstream_sum"] - before["upstream_sum"]
                        )
                        inside[state][1] += after["request_count"] - before["request_count"]
                control.stop(conn=c)
                time.sleep(3.0)  # the background shadow work of the last requests
        finally:
            process.terminate()
            process.wait(timeout=60)
        found = report.report(url=url)
        row = found.overall("k8")
        with connections.connect(url) as conn:
            disagreeing, chosen, asked, spend, reserved = conn.execute(
                """SELECT count(*) FILTER (WHERE d.model IS DISTINCT FROM d.served_model),
                          count(*) FILTER (WHERE d.sample), count(s.route_id),
                          coalesce(sum(s.cost), 0), coalesce(sum(s.reserved), 0)
                   FROM avengers.shadow_decisions d
                   LEFT JOIN avengers.shadow_samples s USING (route_id)"""
            ).fetchone()
    diff = paired(rounds["on"], rounds["off"])
    control_diff = paired(rounds["off2"], rounds["off"])
    on_requests = sum(len(r) for r in rounds["on"])
    figures = {
        "llm": "SmolLM2-135M-Instruct Q4_1 via xllamacpp",
        "store": "demo (bundled sample, k = 16 served), shadow: k = 8 re-cluster",
        "max_tokens": args.max_tokens,
        "pairs": len(diff),
        "on_minus_off_ms_p50": round(percentile(diff, 50), 2),
        "on_minus_off_ms_p90": round(percentile(diff, 90), 2),
        "control_off_minus_off_ms_p50": round(percentile(control_diff, 50), 2),
        "gateway_side_ms_mean_on": round(1000 * inside["on"][0] / inside["on"][1], 2),
        "gateway_side_ms_mean_off": round(1000 * inside["off"][0] / inside["off"][1], 2),
        "gateway_side_ms_mean_off2": round(1000 * inside["off2"][0] / inside["off2"][1], 2),
        "served_ms_p50_on": round(percentile([x for r in rounds["on"] for x in r], 50), 1),
        "served_ms_p50_off": round(percentile([x for r in rounds["off"] for x in r], 50), 1),
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
        "met": {
            "p50_within_1ms": abs(percentile(diff, 50)) <= 1.0,
            "gateway_side_within_1ms": abs(
                inside["on"][0] / inside["on"][1] - inside["off"][0] / inside["off"][1]
            )
            <= 0.001,
            "decisions_equal_requests": (row.requests if row else 0) == on_requests,
            "sampled_within_chosen": asked <= chosen,
            "spend_within_cap": float(spend) <= args.max_spend,
        },
        "server": server,
    }
    say(
        f"served latency, shadowing on - off, {len(diff)} pairs: p50 "
        f"{figures['on_minus_off_ms_p50']:+.2f} ms, p90 {figures['on_minus_off_ms_p90']:+.2f} ms "
        f"(served p50 {figures['served_ms_p50_on']:.0f} / {figures['served_ms_p50_off']:.0f} ms;"
        f" off - off control p50 {figures['control_off_minus_off_ms_p50']:+.2f} ms)"
    )
    say(
        "inside the gateway, all but the upstream call, mean: on "
        f"{figures['gateway_side_ms_mean_on']:.2f} ms, off {figures['gateway_side_ms_mean_off']:.2f}"
        f" ms, off again {figures['gateway_side_ms_mean_off2']:.2f} ms"
    )
    say(
        f"shadow report: {figures['shadow_decisions']} decisions for {on_requests} requests, "
        f"agreement {figures['agreement']}, {disagreeing} disagreeing, {chosen} chosen for "
        f"sampling (share {args.sample_share}), {asked} sampled, spend "
        f"{figures['sampled_spend']} of a {args.max_spend} cap (reserved {float(reserved):.6f})"
    )
    finish("shadow_overhead", figures)


if __name__ == "__main__":
    main()
