"""``avengers serve``: the OpenAI-compatible routing gateway."""

from __future__ import annotations

import click
from avengers_store.cli import options
from avengers_store.cli.commands import Command

from avengers_store.answering.strategies import DEFAULT_THRESHOLD, STRATEGIES
from avengers_store.errors import ConfigurationError, InputError
from avengers_store.gateway.settings import GatewaySettings


@click.command("serve", cls=Command)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="TCP port to listen on.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (each with its own pools and embedder).")  # fmt: skip
@click.option("--no-auth", is_flag=True,
              help="Accept requests without an API key (loopback addresses only).")  # fmt: skip
@click.option("--max-in-flight", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests answered at once per worker; more get 429 with Retry-After.")  # fmt: skip
@click.option("--samples", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Default samples per request (a request's 'samples' overrides it).")  # fmt: skip
@click.option("--strategy", type=click.Choice(STRATEGIES), default="self-consistency",
              show_default=True, help="Default strategy.")  # fmt: skip
@click.option("--top-n", type=click.IntRange(1, 16),
              help="Default ranked candidates per request (default 3).")  # fmt: skip
@options.routing
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True),
              default=DEFAULT_THRESHOLD, show_default=True,
              help="Model-Switch vote-share threshold.")  # fmt: skip
@click.option("--route-on", type=click.Choice(["last_user", "conversation"]),
              default="last_user", show_default=True,
              help="Route on the last user message or the whole conversation.")  # fmt: skip
@options.max_tokens
@click.option("--upstream-timeout", type=click.FloatRange(min=0, min_open=True), default=120.0,
              show_default=True, help="Seconds per model call (between chunks when streaming).")  # fmt: skip
@click.option("--upstream-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Retries of a failing model call before falling back.")  # fmt: skip
@options.timeout(
    help="Seconds one request may take in all (routing, model calls, retries, fallbacks); a "
    "request's 'timeout' field may shorten it. Past it: 504, or a vote over the samples drawn."
)
@click.option("--session-ttl", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds a conversation keeps the model of its first turn.")  # fmt: skip
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds SIGTERM waits for requests in flight.")  # fmt: skip
@click.option("--max-body", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Largest request body in bytes.")  # fmt: skip
@click.option("--log-vectors", is_flag=True,
              help="Keep each routed query's embedding (not its text), so feedback on it counts "
              "in later clustering versions.")  # fmt: skip
@click.option("--log-texts", is_flag=True,
              help="With the embedding, keep the query text too.")  # fmt: skip
@click.option("--feedback-refresh", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds within which POST /v1/feedback is served to routing (0: at once, "
              "one refresh per request).")  # fmt: skip
@click.option("--spool-dir", type=click.Path(file_okay=False, writable=True),
              help="Where route-log rows the store cannot take are kept until it can "
              "(default: $AVENGERS_HOME/route-log-spool).")  # fmt: skip
@click.option("--spool-max-mb", type=click.FloatRange(min=0, min_open=True), default=64.0,
              show_default=True,
              help="Largest spool per worker, in MiB; when it is full and the store is "
              "unreachable, requests get 503.")  # fmt: skip
@click.option("--no-access-log", is_flag=True,
              help="Do not print the access log (one JSON line per request on stdout: route "
              "id, key name, model, status, latency, tokens; never a key or a prompt).")  # fmt: skip
def command(
    host, port, workers, no_auth, max_in_flight, samples, strategy, top_n, routing, threshold,
    route_on, max_tokens, upstream_timeout, upstream_retries, timeout, session_ttl, grace,
    max_body, log_vectors, log_texts, feedback_refresh, spool_dir, spool_max_mb, no_access_log,
) -> None:  # fmt: skip
    """Serve the router as an OpenAI-compatible API: point any OpenAI SDK at it with
    model="avengers" (route, sample, vote) or a pool model's name (passed straight through),
    on POST /v1/chat/completions or the Responses API, POST /v1/responses.

    Requests need an API key (`avengers keys create NAME`) unless --no-auth, which only a
    loopback address allows; a key's policy (spend limits, models, samples, requests per
    minute, default routing options: `avengers keys set`) is enforced before any model is
    called. GET /health, /ready and /metrics need no key. The routing options
    (--method, --tradeoff, --max-cost, --max-latency-ms, ...) are defaults a request may
    override with the body fields of the same names; with a trade-off or a ceiling in force
    (--tradeoff 1 prices every answer without changing the ranking) routed answers name their
    expected cost in x-avengers-expected-cost. POST /v1/feedback scores an answer by the
    x-avengers-route-id it got. Each answer's route-log row is in the store,
    or fsync'd in the spool (--spool-dir) if the store cannot take it, before the answer is
    sent; the spool is written to the store once it is back, or by the next start.

    \b
    Example:
      avengers keys create my-app
      avengers serve --host 0.0.0.0 --port 8080 --workers 2
      avengers serve --tradeoff 0.7 --max-cost 0.001
      curl -s localhost:8080/v1/chat/completions -H "Authorization: Bearer $KEY" \\
        -H 'Content-Type: application/json' \\
        -d '{"model": "avengers", "messages": [{"role": "user", "content": "What is 7*6?"}]}'
      curl -s localhost:8080/v1/feedback -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' -d '{"route_id": "<x-avengers-route-id>", "score": 1}'
    """
    from avengers_store.gateway import server

    try:
        settings = GatewaySettings(
            host=host,
            port=port,
            workers=workers,
            auth=not no_auth,
            max_in_flight=max_in_flight,
            max_body_bytes=max_body,
            samples=samples,
            strategy=strategy,
            top_n=top_n,
            policy=routing,
            threshold=threshold,
            route_on=route_on,
            max_tokens=max_tokens,
            session_ttl_s=session_ttl,
            upstream_timeout_s=upstream_timeout,
            upstream_retries=upstream_retries,
            timeout_s=timeout,
            grace_s=grace,
            log_vectors=log_vectors,
            log_texts=log_texts,
            feedback_refresh_s=feedback_refresh,
            spool_dir=spool_dir,
            spool_max_bytes=max(1, int(spool_max_mb * 1024 * 1024)),
            access_log=not no_access_log,
        )
    except (ConfigurationError, InputError) as exc:
        raise click.UsageError(str(exc)) from exc
    server.run(settings)
