"""Run every benchmark with its default sizes (about 10 minutes on 2 idle cores), one embedded
server for all of them, then print the results table (markdown) from bench/results/*.json.

Example:
    .venv/bin/python bench/run_all.py
    .venv/bin/python bench/run_all.py --big            # growth up to 1M queries (slow)
    .venv/bin/python bench/run_all.py --only route_latency batch_routing
    .venv/bin/python bench/run_all.py --table          # only print the table
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH, HOME_ENV, RESULTS, parser, say

from avengers_store.store import config, embedded

SCRIPTS = [
    "route_latency",
    "batch_routing",
    "tradeoff",
    "onboarding",
    "growth",
    "embedding_throughput",
    "ask_overhead",
    "gateway",
    "feedback",
]


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# A SELECT 1 round trip slower than this (p50, µs) is the machine's load, not a floor.
VOID_SELECT1_US = 1000


def mark(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**missed**")


def table() -> str:
    rows: list[tuple[str, str, str, str]] = []
    r = load("route_latency")
    if r:
        for b in r["by_k"]:
            placed = b.get("placement") or {}
            pinned = (
                f"; pinned to one core **{placed['same_core']['ratio']:.2f}**, to two cores "
                f"**{placed['cross_core']['ratio']:.2f}**"
                if placed
                else ""
            )
            # The target is the ratio as scheduled; the pinned placements are reported beside it.
            goal = 1.5 if b["k"] <= 64 else 2.0
            rows.append(
                (
                    f"Single route, k = {b['k']:,} (client, default method {b.get('method', '?')}, vector in)",
                    f"p50 {b['route_p50_us'] / 1000:.2f} ms, p99 {b['route_p99_us'] / 1000:.2f} ms;"
                    f" numpy {b['numpy_p50_us']:.0f} µs, SELECT 1 {b['select1_p50_us']:.0f} µs; "
                    f"**ratio {b['ratio']:.2f}** (bare SQL {b['ratio_sql']:.2f}, through the "
                    f"pool {b.get('ratio_via_pool', float('nan')):.2f}; method paper "
                    f"{b['ratio_paper']:.2f}){pinned}",
                    f"ratio ≤ {goal:g}",
                    # A floor the machine's load starved (SELECT 1 in milliseconds) voids the ratio.
                    f"void: `SELECT 1` took {b['select1_p50_us'] / 1000:.1f} ms (the machine's load)"
                    if b["select1_p50_us"] > VOID_SELECT1_US
                    else mark(b["ratio"] <= goal)
                    + (
                        " (one core: **missed**)"
                        if any(p["ratio"] > goal for p in placed.values())
                        else ""
                    ),
                )
            )
    r = load("batch_routing")
    if r:
        for b in r["by_k"]:
            rows.append(
                (
                    f"Batch routing, 10k vectors in one statement, k = {b['k']:,}",
                    f"**{b['client_qps']:,} queries/s** through the client (method paper "
                    f"{b['paper_qps']:,}; bare SQL {b['sql_qps']:,}, **×"
                    f"{b['client_qps'] / b['sql_qps']:.2f}**; numpy {b['numpy_qps']:,}, "
                    f"**1/{b['numpy_qps'] / b['client_qps']:.0f}**)",
                    "≥ 0.9× bare SQL and ≥ 1/10 numpy",
                    mark(b["client_qps"] >= 0.9 * b["sql_qps"])
                    + " / "
                    + mark(b["client_qps"] >= b["numpy_qps"] / 10),
                )
            )
    r = load("tradeoff")
    if r:
        one, many = r["single"], r["batch"]
        rows.append(
            (
                f"Cost-aware route against the plain one, k = {r['k']:,} (client, vector in, "
                "same run)",
                f"single: plain p50 {one['plain_p50_us']:.0f} µs, trade-off 0.5 "
                f"{one['tradeoff_p50_us']:.0f} µs (**×{one['ratio_tradeoff_to_plain']:.2f}**; "
                f"max_cost ×{one['ratio_max_cost_to_plain']:.2f}, trade-off 1 "
                f"×{one['ratio_tradeoff_1_to_plain']:.2f}); batch of {many['batch']:,}: "
                f"{many['plain_qps']:,} vs {many['tradeoff_qps']:,} queries/s "
                f"(**×{many['ratio_plain_to_tradeoff']:.2f}**)",
                "reported",
                "",
            )
        )
    r = load("onboarding")
    if r:
        lib, f, d = r["new_model_library"], r["new_model_file"], r["new_dataset"]
        rows.append(
            (
                f"New model: {lib['outcomes']:,} outcomes + profile refresh "
                f"(store of {r['base_queries']:,} queries x {r['base_models']} models)",
                f"**{lib['total_s']:.1f} s** library (upsert {lib['upsert_s']:.1f} + refresh "
                f"{lib['refresh_s']:.1f}); **{f['total_s']:.1f} s** `outcomes import` from a file",
                "≤ 10 s",
                mark(r["outcomes_met"]),
            )
        )
        rows.append(
            (
                f"New dataset: {d['queries']:,} queries + precomputed vectors, then re-cluster "
                f"k = 64 over {d['calibration_vectors']:,} vectors ({d['recluster_algorithm']})",
                f"add {d['add_dataset_s']:.1f} s, vectors (COPY) {d['import_vectors_s']:.1f} s, "
                f"**re-cluster {d['recluster_s']:.1f} s**",
                "re-cluster ≤ 60 s",
                mark(r["recluster_met"]),
            )
        )
    r = load("growth")
    if r:
        pts = r["points"]
        rows.append(
            (
                "Growth, re-cluster k = 64 "
                + " / ".join(f"{p['queries'] // 1000:,}k" for p in pts),
                " / ".join(f"{p['recluster_s']:.1f} s" for p in pts)
                + f"; log-log slope {r['slopes'].get('recluster', float('nan')):.2f}"
                + (
                    f" ({r['slopes']['recluster_minibatch']:.2f} in the MiniBatchKMeans range)"
                    if "recluster_minibatch" in r["slopes"]
                    else ""
                ),
                "",
                "",
            )
        )
        rows.append(
            (
                "Growth, route p50 " + " / ".join(f"{p['queries'] // 1000:,}k" for p in pts),
                " / ".join(f"{p['route_p50_us'] / 1000:.2f} ms" for p in pts)
                + f"; log-log slope {r['slopes'].get('route_p50', float('nan')):.2f}",
                "",
                "",
            )
        )
    r = load("growth")
    if r and r.get("k_axis"):
        kx = r["k_axis"]
        pts = kx["points"]
        ks = " / ".join(f"{p['k']:,}" for p in pts)
        rows.append(
            (
                f"Store + activate a clustering over {kx['queries'] // 1000}k queries x "
                f"{kx['models']} models, k = {ks}",
                " / ".join(f"**{p['total_s']:.1f} s**" for p in pts)
                + "; of which novelty fit "
                + " / ".join(f"{p['steps_s'].get('novelty_fit', 0):.1f}" for p in pts)
                + " s, distance statistics "
                + " / ".join(f"{p['steps_s'].get('distance_profile', 0):.2f}" for p in pts)
                + " s, activation (profile refresh) "
                + " / ".join(f"{p['steps_s'].get('activate', 0):.2f}" for p in pts)
                + f" s; log-log slope over k {kx['slopes'].get('total', float('nan')):.2f}",
                "seconds, not minutes",
                mark(all(p["total_s"] < 60 for p in pts)),
            )
        )
    r = load("embedding_throughput")
    if r and "backends" in r:
        for label, b in r["backends"].items():
            for tag in ("default threads", "1 thread"):
                fig = b.get(tag)
                if not fig:
                    continue
                vs = fig["vs_torch"]
                rows.append(
                    (
                        f"Embedding, {b['name']} on {label}, {tag}",
                        f"short (~{fig['short']['mean_words']:.0f} words) "
                        f"{fig['short']['texts_per_s']:,.0f} texts/s (×{vs['short_texts_per_s']:.2f}"
                        f" torch), long (~{fig['long']['mean_words']:.0f} words) "
                        f"{fig['long']['texts_per_s']:,.0f} texts/s (×{vs['long_texts_per_s']:.2f});"
                        f" one short text p50 {fig['single_short_ms']['p50']:.1f} ms "
                        f"(×{vs['single_short_p50_speedup']:.2f} faster)",
                        "reported",
                        "",
                    )
                )
    r = load("embedder_quality")
    if r:
        agree = r["agreement"]
        for label in r["embedders"]:
            replay = r["replay"].get(label, {})
            figures = []
            for ref, what in (("vs_torch", "fresh torch vectors"), ("vs_npy", "torch's")):
                same = agree.get(label, {}).get(ref)
                if same:
                    figures.append(
                        f"same decision as with {what} on **{same['same_decision']:.2%}** of "
                        f"{same['test_queries']:,} RouterDC test queries (one clustering)"
                    )
            rdc, llr = replay.get("routerdc"), replay.get("llmrouter")
            if rdc:
                figures.append(
                    f"replay in its own space: RouterDC ID **{rdc['id_macro']:.2f}**, OOD3 "
                    f"{rdc['ood_macro']:.2f}"
                )
            if llr:
                figures.append(f"LLMRouter **{llr['id_macro']:.2f}**")
            name = "precomputed torch vectors" if label == "npy" else label.split("/")[-1]
            verdict = ""
            if label == "onnx":  # the default's backend: the target applies to it
                checks = [same["same_decision"] >= 0.99 for same in agree["onnx"].values()]
                if rdc:
                    checks += [abs(rdc["id_macro"] - 58.05) <= 0.2]
                    checks += [abs(rdc["ood_macro"] - 46.34) <= 0.2]
                if llr:
                    checks.append(abs(llr["id_macro"] - 58.10) <= 0.2)
                verdict = mark(all(checks)) + ("" if rdc else " (RouterDC replay not run)")
            rows.append(
                (
                    f"Routing with the embedder {name}",
                    "; ".join(figures),
                    "default: ≥ 99 % same; replay within 0.2 of 58.05 / 46.34 / 58.10",
                    verdict,
                )
            )
    for name in ("ask_overhead", "ask_overhead_torch1"):
        r = load(name)
        for b in r["by_samples"] if r else []:
            rows.append(
                (
                    f"`ask` overhead over a direct call, n = {b['samples']} ({b['strategy']}, "
                    f"SmolLM2, max_tokens {r['max_tokens']}, torch threads "
                    f"{r.get('torch_threads', '?')})",
                    # The median of the per-pair differences is the added time; the difference
                    # of the two medians moves with the sampled lengths at n > 1.
                    f"**{b['added_ms_paired_median']:+.0f} ms** median of paired differences "
                    f"(p50 ask {b['ask_ms_p50']:.0f} ms vs direct {b['direct_ms_p50']:.0f} ms: "
                    f"{b['added_ms']:+.0f}); of which embedding "
                    f"{b.get('embed_after_generation_ms_p50', r['embed_one_ms_p50']):.0f} ms "
                    f"(alone {r['embed_one_ms_p50']:.0f} ms), vector route "
                    f"{r['route_vector_ms_p50']:.2f} ms",
                    "reported",
                    "",
                )
            )
    r = load("gateway")
    if r:
        for b in r["overhead"]:
            one = b["clients"] == 1
            rows.append(
                (
                    f"Gateway `/v1/chat/completions` over a direct call, {b['clients']} "
                    f"concurrent client{'s' if b['clients'] > 1 else ''} (SmolLM2, max_tokens "
                    f"{r['max_tokens']}, embedding included)",
                    f"overhead p50 **{b['overhead_ms_p50']:.1f} ms**, p99 "
                    f"{b['overhead_ms_p99']:.1f} ms (paired; gateway p50 {b['gateway_ms_p50']:.0f}"
                    f" ms, direct {b['direct_ms_p50']:.0f} ms); embedding mean "
                    f"{b.get('embed_ms_mean', float('nan')):.1f} ms" + gateway_inside(b),
                    "p50 ≤ 5 ms + embedding"
                    if one
                    else ("p99 ≤ 3× p50" if b["clients"] == 32 else ""),
                    mark(r["met"]["a_p50_1_client"])
                    if one
                    else (mark(r["met"]["a_p99_32_clients"]) if b["clients"] == 32 else ""),
                )
            )
        rps = r["route_rps"]
        rows.append(
            (
                "Gateway `/v1/route`, 32 concurrent clients",
                f"vector (embedding excluded) **{rps['vector']:,.0f}/s**, text (included) "
                f"{rps['text']:,.0f}/s; floor `SELECT 1` through the same app and pool "
                f"{rps['floor']:,.0f}/s (ratios {r['route_ratio_vector']:.2f} / "
                f"{r['route_ratio_text']:.2f})",
                "≥ 0.5× floor",
                mark(r["met"]["b_route"]),
            )
        )
    # The tail phase: gateway.json's when the full script ran last, else gateway_tail.json.
    tail = (load("gateway") or {}).get("tail") or load("gateway_tail")
    if tail:
        for b in tail["by_clients"]:
            at32 = b["clients"] == 32
            ex, inc, fl, two = b["excluded"], b["included"], b["floor"], b["excluded_2_workers"]
            rows.append(
                (
                    f"Gateway `/v1/chat/completions` in front of an instant upstream, "
                    f"{b['clients']} client{'s' if b['clients'] > 1 else ''} (closed loop)",
                    f"embedding excluded **{ex['rps']:,.0f}/s** (**{b['ratio_excluded']:.2f}×** "
                    f"the floor's {fl['rps']:,.0f}/s), p50 {ex['p50_ms']:.1f} ms, p99 "
                    f"{ex['p99_ms']:.1f} ms (**p99/p50 {b['p99_over_p50_excluded']:.1f}**; floor "
                    f"p50 {fl['p50_ms']:.1f}, p99 {fl['p99_ms']:.1f}); two workers "
                    f"{two['rps']:,.0f}/s (**{b['workers_2_over_1']:.2f}×** one); embedding "
                    f"included {inc['rps']:,.0f}/s ({b['ratio_included']:.2f}×), p50 "
                    f"{inc['p50_ms']:.1f} ms, p99 {inc['p99_ms']:.1f} ms",
                    "p99 ≤ 3× p50; ≥ 0.5× floor; 2 workers ≥ 1.6×" if at32 else "",
                    " / ".join(
                        mark(v)
                        for v in (
                            b["p99_over_p50_excluded"] <= 3.0,
                            b["ratio_excluded"] >= 0.5,
                            b["workers_2_over_1"] >= 1.6,
                        )
                    )
                    if at32
                    else "",
                )
            )
    r = load("feedback")
    if r:
        one, f, bulk = r["one_at_a_time"], r["file_import"], r["bulk_insert"]
        rows.append(
            (
                "Feedback, one row at a time (`client.feedback`: rules, insert, O(1) count)",
                f"p50 {one['feedback']['p50_us'] / 1000:.2f} ms, **{one['feedback']['rows_per_s']:,}"
                f" rows/s** (with the refresh that serves it {one['feedback_refresh']['p50_us'] / 1000:.1f}"
                f" ms); floor one INSERT {one['floor']['p50_us'] / 1000:.2f} ms (ratio "
                f"{one['ratio_to_floor']:.1f})",
                "reported",
                "",
            )
        )
        rows.append(
            (
                f"Feedback from a file, {f['rows']:,} rows (`avengers feedback import`)",
                f"**{f['rows_per_s']:,} rows/s** ({f['import_s']:.1f} s); floor COPY "
                f"{f['floor_rows_per_s']:,} rows/s; {bulk['rows']:,} rows in one INSERT "
                f"{bulk['rows_per_s']:,} rows/s",
                "reported",
                "",
            )
        )
        many = r["serving_many"]
        rows.append(
            (
                f"Serving feedback with {r['route_log_rows']:,} route_log rows and "
                f"{many['feedback_rows']:,} feedback rows",
                f"`refresh_production` **{many['refresh_production_ms']:.0f} ms** "
                f"({r['serving_few']['refresh_production_ms']:.0f} ms with "
                f"{r['serving_few']['feedback_rows']:,} rows); `refresh_profiles` "
                f"{many['refresh_profiles_ms']:.0f} ms (ratio {many['ratio_full_to_incremental']:.0f}"
                f"); recount of every feedback row {many['rebuild_production_ms'] / 1000:.1f} s",
                "reported",
                "",
            )
        )
    lines = ["| Measure | Figure | Target | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def gateway_inside(b: dict) -> str:
    """The gateway's own time outside the upstream call and the direct-vs-direct control, when
    the run recorded them."""
    out = ""
    if "gateway_side_ms_mean" in b:
        out += f", all but the upstream call {b['gateway_side_ms_mean']:.1f} ms (gateway's mean)"
    if "control" in b:
        c = b["control"]
        out += (
            f"; direct vs direct, paired the same way: p50 {c['overhead_ms_p50']:.1f} ms, "
            f"p99 {c['overhead_ms_p99']:.1f} ms"
        )
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these")
    ap.add_argument("--big", action="store_true", help="growth up to 1M calibration queries")
    ap.add_argument("--table", action="store_true", help="print the table of stored results")
    args = ap.parse_args()
    if args.table:
        print(table())
        return
    env = dict(os.environ)
    home = None
    if config.database_url() is None and not env.get(HOME_ENV):
        home = Path(tempfile.mkdtemp(prefix="avengers-bench-"))
        home.chmod(0o755)
        env[HOME_ENV] = str(home)
    started = time.perf_counter()
    failed = []
    try:
        for name in args.only or SCRIPTS:
            extra = ["--max", "1000000"] if name == "growth" and args.big else []
            say(f"== {name} {' '.join(extra)}".rstrip())
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *extra], env=env)
            say(f"== {name}: {time.perf_counter() - t0:.0f} s (exit {done.returncode})")
            if done.returncode:
                failed.append(name)
    finally:
        if home is not None:
            embedded.stop(home)
            shutil.rmtree(home, ignore_errors=True)
    say(f"\nall benchmarks: {time.perf_counter() - started:.0f} s")
    print(table())
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
