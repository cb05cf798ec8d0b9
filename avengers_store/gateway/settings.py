"""Settings of one gateway (``avengers serve`` options), typed; the CLI parses, this holds."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from avengers_store.answering.chat import DEFAULT_MAX_TOKENS
from avengers_store.answering.route_log_spool import DEFAULT_MAX_BYTES as DEFAULT_SPOOL_BYTES
from avengers_store.answering.strategies import DEFAULT_THRESHOLD, STRATEGIES
from avengers_store.errors import ConfigurationError
from avengers_store.routing.policy import Policy

ENV = "AVENGERS_GATEWAY_SETTINGS"


@dataclass(frozen=True)
class GatewaySettings:
    """``max_in_flight``: requests answered at once before 429; ``max_body_bytes``: larger
    bodies get 400; ``samples``/``strategy``/``top_n``/``method``/``threshold``/``route_on``:
    recipe defaults a request may override; ``policy``: the fields of the routing policy
    (``routing.Policy``: ``method``, ``tradeoff``, ``max_cost``, ``ood_policy``, ...) that
    requests route with unless they set their own (without a ``tradeoff`` the gateway routes at
    α = 1, which ranks as the plain routing and prices every answer for the cost header);
    ``max_tokens``: default completion cap;
    ``session_ttl_s``: how long a conversation keeps its model; ``keepalive_s``: SSE comment
    interval while samples are drawn; ``upstream_timeout_s``/``upstream_retries``: per model
    call; ``timeout_s``: the deadline of one request as a whole (routing, every model call,
    retry and fallback; a request's ``timeout`` may shorten it); ``grace_s``: how long shutdown
    waits for requests in flight; ``log_vectors`` / ``log_texts``: keep each routed query's
    embedding (and text) for later clustering versions; ``feedback_refresh_s``: feedback
    is served at most this long after it arrives (one refresh for all that arrived meanwhile;
    0: refresh on every feedback request); ``spool_dir``: where route-log rows the store cannot
    take are kept (None: ``$AVENGERS_HOME/route-log-spool``), at most ``spool_max_bytes`` per
    worker process; ``access_log``: one JSON line per request on stdout."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    auth: bool = True
    max_in_flight: int = 64
    max_body_bytes: int = 1_000_000
    samples: int = 1
    strategy: str = "self-consistency"
    top_n: int | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    route_on: str = "last_user"
    max_tokens: int = DEFAULT_MAX_TOKENS
    session_ttl_s: float = 3600.0
    keepalive_s: float = 5.0
    upstream_timeout_s: float = 120.0
    upstream_retries: int = 2
    timeout_s: float = 120.0
    grace_s: float = 30.0
    pool_size: int = 16
    embed_threads: int | None = 1
    database_url: str | None = None
    log_vectors: bool = False
    log_texts: bool = False
    feedback_refresh_s: float = 1.0
    spool_dir: str | None = None
    spool_max_bytes: int = DEFAULT_SPOOL_BYTES
    access_log: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(f"unknown strategy {self.strategy!r}")
        if self.route_on not in ("last_user", "conversation"):
            raise ConfigurationError("route_on must be last_user or conversation")
        for name in (
            "max_in_flight",
            "max_body_bytes",
            "samples",
            "workers",
            "pool_size",
            "spool_max_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.feedback_refresh_s >= 0:
            raise ConfigurationError(
                f"feedback_refresh_s must be >= 0, got {self.feedback_refresh_s}"
            )
        _ = self.routing_policy  # checks the policy's fields (InputError naming the field)
        if not self.timeout_s > 0:
            raise ConfigurationError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")
        if not self.auth and not is_loopback(self.host):
            raise ConfigurationError(
                f"serving without API keys is only allowed on a loopback address, not "
                f"{self.host}: create a key with `avengers keys create NAME` instead"
            )

    @property
    def policy_changes(self) -> dict[str, Any]:
        """The routing fields the server sets over the store's served policy (``policy``, as
        Policy field values)."""
        own = Policy.from_dict(self.policy)
        return {name: getattr(own, name) for name in self.policy}

    @property
    def routing_policy(self) -> Policy:
        """The default routing policy requests route with (their own fields override it)."""
        # alpha = 1 decides as the plain routing but computes each answer's expected cost.
        return Policy.from_dict({"tradeoff": 1.0, **self.policy})

    def to_env(self) -> str:
        """JSON for worker processes (holds no secret: the database URL comes from the
        environment unless given, and a given one is the operator's own)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> GatewaySettings:
        return cls(**json.loads(text))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
