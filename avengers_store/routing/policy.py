"""A routing policy: everything a decision depends on besides the query, as one value.

``Policy`` mirrors ``avengers.routing_policy`` (sql/040_decide.sql), the one value
``avengers.decide`` takes; the rule itself lives there. The method's numbers (``neighbours``,
``temperature``, ``shrinkage``) come from a ``RoutingMethod`` preset; ``exploration``,
``exploration_share``, ``exploration_overlap`` and ``production_weight`` left None take the
clustering's settings,
``clustering_id`` None the active clustering.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from avengers_store.arguments import one_of
from avengers_store.errors import InputError
from avengers_store.routing.methods import RoutingMethod, routing_method

OOD_POLICIES = ("flag", "best-overall", "widen")
EXPLORATIONS = ("off", "targeted", "thompson", "epsilon")


@dataclass(frozen=True)
class Policy:
    """How to route. ``top_n``: candidates returned; ``require_endpoint``: only models with an
    endpoint; ``models``: only these models (None: every active one); ``tradeoff`` α in [0, 1]
    (1 ranks by expected quality, 0 by expected cost; None: no trade-off) and ``max_cost`` (the
    highest expected cost a candidate may have; when none fits, the cheapest is returned flagged
    over budget) make the decision cost-aware; ``completions``: answers the request draws from
    its first model (its expected cost counts them); ``ood_policy``: what an out-of-distribution
    query gets (``flag``, ``best-overall`` or ``widen``); ``exploration`` (``off``,
    ``targeted``, ``thompson``, ``epsilon``), ``exploration_share`` and ``exploration_overlap``
    (targeted: the chance of beating the leader from which a candidate is plausible);
    ``production_weight``: how much a
    production outcome counts against a calibration one (0: the static router);
    ``max_latency_ms`` (a ceiling on a candidate's expected latency, measured from the route
    log) and ``latency_weight`` (β in [0, 1]: the trade-off's share for low latency) make it
    latency-aware as well."""

    method: RoutingMethod = dataclasses.field(default_factory=lambda: routing_method(None))
    top_n: int = 1
    require_endpoint: bool = False
    models: tuple[str, ...] | None = None
    tradeoff: float | None = None
    max_cost: float | None = None
    completions: int = 1
    ood_policy: str = "flag"
    exploration: str | None = None
    exploration_share: float | None = None
    production_weight: float | None = None
    clustering_id: int | None = None
    max_latency_ms: float | None = None
    latency_weight: float | None = None
    exploration_overlap: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.method, str):
            object.__setattr__(self, "method", routing_method(self.method))
        if self.models is not None:
            if isinstance(self.models, str):
                raise InputError("a list of model names, not one string", location="models")
            object.__setattr__(self, "models", tuple(str(m) for m in self.models))
        _whole(self.top_n, "top_n", 1)
        _whole(self.completions, "completions", 1)
        if self.clustering_id is not None:
            _whole(self.clustering_id, "clustering_id", 1)
        if self.tradeoff is not None and not 0.0 <= self.tradeoff <= 1.0:
            raise InputError(
                f"tradeoff must be between 0 and 1, got {self.tradeoff}", location="tradeoff"
            )
        for name in ("max_cost", "production_weight", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise InputError(f"{name} must be a finite number >= 0, got {value}", location=name)
        one_of(self.ood_policy, OOD_POLICIES, "OOD policy", "ood_policy")
        if self.exploration is not None:
            one_of(self.exploration, EXPLORATIONS, "exploration", "exploration")
        if self.latency_weight is not None and not 0.0 <= self.latency_weight <= 1.0:
            raise InputError(
                f"latency_weight must be between 0 and 1, got {self.latency_weight}",
                location="latency_weight",
            )
        overlap = self.exploration_overlap
        if overlap is not None and not 0.0 <= overlap < 1.0:
            raise InputError(
                f"exploration_overlap must be in [0, 1), got {overlap}",
                location="exploration_overlap",
            )
        share = self.exploration_share
        if share is not None and not 0.0 <= share <= 1.0:
            raise InputError(
                f"exploration_share must be in [0, 1], got {share}", location="exploration_share"
            )

    @property
    def costed(self) -> bool:
        """Whether decisions compute expected costs and latencies (a trade-off or a ceiling is
        asked)."""
        return any(
            v is not None
            for v in (self.tradeoff, self.max_cost, self.max_latency_ms, self.latency_weight)
        )

    def replace(self, **changes: Any) -> Policy:
        """A copy with ``changes`` (fields of Policy; None values are kept as None)."""
        if not changes:
            return self
        unknown = sorted(set(changes) - _FIELD_NAMES)
        if unknown:
            raise InputError(
                f"unknown routing option(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(f.name for f in dataclasses.fields(self))}",
                location=unknown[0],
            )
        try:
            # Keyed by each value's type too: 1 and 1.0 are equal keys, not equal policies.
            key = tuple(sorted((k, type(v), v) for k, v in changes.items()))
            return _replaced(self, key)
        except TypeError:  # an unhashable value (a list of models): made anew
            return dataclasses.replace(self, **changes)

    def sql(self) -> tuple[str, tuple[Any, ...]]:
        """The ``avengers.policy(...)`` call naming only the fields that differ from its SQL
        defaults, and their values (bound, never in the text). The fields left out are
        constants in the statement, so a plain policy's plan folds away the rules it does not
        use; each set of fields is one statement text (and one prepared plan)."""
        return self._sql_call

    @cached_property
    def _sql_call(self) -> tuple[str, tuple[Any, ...]]:
        # Once per policy: a client routes every query with the same one (it is frozen).
        values = self._sql_values()
        given = tuple(name for name, _, default in POLICY_ARGS if values[name] != default)
        return _policy_sql(given), tuple(values[name] for name in given)

    def _sql_values(self) -> dict[str, Any]:
        m = self.method
        return {
            "top_n": self.top_n, "neighbours": m.neighbours, "temperature": m.temperature,
            "shrinkage": m.shrinkage, "tradeoff": self.tradeoff, "max_cost": self.max_cost,
            "completions": self.completions, "ood_policy": self.ood_policy,
            "exploration": self.exploration, "exploration_share": self.exploration_share,
            "production_weight": self.production_weight,
            "require_endpoint": self.require_endpoint,
            "models": list(self.models) if self.models is not None else None,
            "clustering_id": self.clustering_id, "max_latency_ms": self.max_latency_ms,
            "latency_weight": self.latency_weight,
            "exploration_overlap": self.exploration_overlap,
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields that differ from the defaults, plus ``top_n`` (the method by its
        numbers and name): what a route-log row keeps, and all ``from_dict`` needs."""
        out: dict[str, Any] = {"top_n": self.top_n}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "top_n" or value == _DEFAULT_FIELDS[f.name]:
                continue
            if f.name == "method":
                value = dataclasses.asdict(value)
            elif f.name == "models":
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """The policy ``to_dict`` wrote (missing fields take their defaults)."""
        fields = dict(data)
        method = fields.pop("method", None)
        if isinstance(method, Mapping):
            method = RoutingMethod(**method)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InputError(f"unknown policy field(s) {', '.join(unknown)}", location=unknown[0])
        return cls(method=routing_method(method), **fields)


# The arguments of avengers.policy(...) (sql/040_decide.sql): name, SQL type, SQL default.
POLICY_ARGS: tuple[tuple[str, str, Any], ...] = (
    ("top_n", "integer", 1), ("neighbours", "integer", 16), ("temperature", "float8", 0.1),
    ("shrinkage", "float8", 1.0), ("tradeoff", "float8", None), ("max_cost", "float8", None),
    ("completions", "integer", 1), ("ood_policy", "text", "flag"),
    ("exploration", "text", None), ("exploration_share", "float8", None),
    ("production_weight", "float8", None), ("require_endpoint", "boolean", False),
    ("models", "text[]", None), ("clustering_id", "integer", None),
    ("max_latency_ms", "float8", None), ("latency_weight", "float8", None),
    ("exploration_overlap", "float8", None),
)  # fmt: skip
_TYPES = {name: kind for name, kind, _ in POLICY_ARGS}


@lru_cache(maxsize=256)
def _policy_sql(given: tuple[str, ...]) -> str:
    return "avengers.policy(" + ", ".join(f"{n} => %s::{_TYPES[n]}" for n in given) + ")"


def _whole(value: Any, name: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{name} must be a whole number >= {least}, got {value!r}", location=name)


@lru_cache(maxsize=1024)
def _replaced(policy: Policy, changes: tuple[tuple[str, type, Any], ...]) -> Policy:
    """``policy.replace`` made once per policy and changes: a router asks the same few on every
    route, and each copy validated every field again."""
    return dataclasses.replace(policy, **{k: v for k, _, v in changes})


DEFAULT = Policy()
_DEFAULT_FIELDS = {f.name: getattr(DEFAULT, f.name) for f in dataclasses.fields(Policy)}
# Checked on every route's policy changes: the names once, not dataclasses.fields each time.
_FIELD_NAMES = frozenset(_DEFAULT_FIELDS)
