"""Prometheus metrics of the gateway (``GET /metrics``): requests by status, latency histograms
per stage (embed, route, upstream, vote), fallbacks, samples and tokens per model, vote shares,
requests keys' policies refused, feedback received, the route-log rows waiting for the store,
written, spooled, replayed and given up on, and the size of the route-log spool.

Each app has its own registry (several apps in one process stay apart). The labelled series a
request touches are looked up once and kept (``_child``): prometheus-client's ``labels`` builds
and locks on every call, a dozen times a request. With several uvicorn
workers, ``PROMETHEUS_MULTIPROC_DIR`` set by ``avengers serve`` makes ``/metrics`` add up every
worker's values (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from avengers_store.answering.strategies import Answer

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SHARE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_MAX_SOURCES = 16


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sources: set[str] = set()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "avengers_gateway_requests", "Requests answered, by path and status.",
            ["path", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "avengers_gateway_request_seconds", "Time to answer a request (to the last byte).",
            ["path"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stages = Histogram(
            "avengers_gateway_stage_seconds",
            "Time per stage: embed (query embedding), route (the routing statement), upstream "
            "(one model call), vote (extraction and voting), log (the response held until its "
            "route-log rows are in the store or the spool).",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "avengers_gateway_in_flight", "Requests being answered.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.rejected = Counter(
            "avengers_gateway_rejected", "Requests refused with 429 (in-flight limit).", registry=r
        )
        self.fallbacks = Counter(
            "avengers_gateway_fallbacks", "Candidates that failed and were replaced, by model.",
            ["model"], registry=r,
        )  # fmt: skip
        self.samples = Counter(
            "avengers_gateway_samples", "Completions drawn, by model.", ["model"], registry=r
        )
        self.tokens = Counter(
            "avengers_gateway_tokens", "Tokens used, by model and kind (prompt, completion).",
            ["model", "kind"], registry=r,
        )  # fmt: skip
        self.log_waiting = Gauge(
            "avengers_gateway_route_log_waiting",
            "Route-log rows queued and not yet written (they wait out a store outage).",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.log_rows = Counter(
            "avengers_gateway_route_log_rows",
            "Route-log rows by outcome: written (to the store), dropped, spooled (kept on local "
            "disk while the store was unreachable), replayed (from an earlier process's spool).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.spool_bytes = Gauge(
            "avengers_gateway_route_log_spool_bytes",
            "Bytes of route-log rows kept in the local spool, waiting for the store.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.spool_full = Gauge(
            "avengers_gateway_route_log_spool_full",
            "1 while the spool is full and the store unreachable (new requests get 503).",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.refused = Counter(
            "avengers_gateway_key_refusals",
            "Requests a key's policy refused with 429, by reason: day or month (spend limit), "
            "rate (requests per minute).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.feedback = Counter(
            "avengers_gateway_feedback",
            "Feedback recorded (POST /v1/feedback), by source and whether it replaced an earlier "
            "score of the same source.",
            ["source", "replaced"], registry=r,
        )  # fmt: skip
        self.feedback_score = Histogram(
            "avengers_gateway_feedback_score", "Scores of the feedback recorded.",
            buckets=_SHARE_BUCKETS, registry=r,
        )  # fmt: skip
        self.vote_share = Histogram(
            "avengers_gateway_vote_share", "Share of valid votes the returned answer received.",
            buckets=_SHARE_BUCKETS, registry=r,
        )  # fmt: skip

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, made once (the label values a request uses are few:
        paths, statuses, stages, pool models)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, path: str, status: int, seconds: float | None = None) -> None:
        """A request answered (``seconds``: how long it took, when it was not refused)."""
        self._child(self.requests, path, str(status)).inc()
        if seconds is not None:
            self._child(self.latency, path).observe(seconds)

    def stage(self, stage: str, seconds: float) -> None:
        self._child(self.stages, stage).observe(seconds)

    def route_log(self, event: str, rows: int) -> None:
        """``AsyncAvengersClient(on_log=...)``: rows queued, written or dropped."""
        if event == "queued":
            self.log_waiting.inc(rows)
            return
        self.log_waiting.dec(rows)
        self._child(self.log_rows, event).inc(rows)

    def spool(self, event: str, rows: int, held_bytes: int, full: bool) -> None:
        """Rows ``spooled`` or ``replayed`` (None: only the spool's state changed)."""
        if rows:
            self._child(self.log_rows, event).inc(rows)
        self.spool_bytes.set(held_bytes)
        self.spool_full.set(1 if full else 0)

    def drawn(self, model: str, samples: int, tokens_in: int, tokens_out: int) -> None:
        """Completions drawn from one model and the tokens they used."""
        if samples:
            self._child(self.samples, model).inc(samples)
        self._child(self.tokens, model, "prompt").inc(tokens_in)
        self._child(self.tokens, model, "completion").inc(tokens_out)

    def answered(self, answer: Answer) -> None:
        for usage in answer.usage:
            self.drawn(usage.model, usage.samples, usage.tokens_in, usage.tokens_out)
        for fallback in answer.fallbacks:
            self.fallbacks.labels(fallback.model).inc()
        if answer.valid:
            self.vote_share.observe(answer.share)

    def fed_back(self, source: str, score: float, replaced: bool) -> None:
        # Sources are the callers' words: past the first few, they are counted as "other" so a
        # caller cannot grow the exposition without bound.
        if source not in self._sources and len(self._sources) < _MAX_SOURCES:
            self._sources.add(source)
        label = source if source in self._sources else "other"
        self.feedback.labels(label, "true" if replaced else "false").inc()
        self.feedback_score.observe(score)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            _multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
