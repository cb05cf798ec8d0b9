"""The clients' one flow, without I/O: routing request → decision → sampling plan → vote →
route-log row, written once for ``AvengersClient`` and ``AsyncAvengersClient`` (and, through the
latter, the gateway).

Each operation is a generator that yields the I/O it needs as a step (``Run`` a statement,
``Embed`` texts, ``Sample`` a model, ``Gather`` several flows, ``Log`` route-log rows) and is sent
each step's result; a driver holds only I/O and runs the steps: the sync client's on pooled
connections and threads, the async client's with asyncio. ``operation`` makes such a generator a
method of both clients, so they expose the same methods with the same parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
import time
import types
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import numpy as np

from avengers_store.answering import route_log, strategies
from avengers_store.answering.prompts import PromptSet
from avengers_store.answering.sampling import Deadline, Endpoint, SampleBatch
from avengers_store.calibration.embedders import Embedder, embedder_for_space
from avengers_store.calibration.embedding_spaces import Space, space_from_row
from avengers_store.errors import AvengersError, EndpointError, InputError, StoreStateError
from avengers_store.production import feedback
from avengers_store.routing import novelty
from avengers_store.routing.decide import decisions_from_rows
from avengers_store.routing.decide import statement as decide_statement
from avengers_store.routing.decisions import RouteDecision
from avengers_store.routing.methods import RoutingMethod
from avengers_store.routing.policy import Policy
from avengers_store.routing.stored_policies import ROLES_SQL, Roles, roles_from_rows
from avengers_store.shadow import work as shadow_work
from avengers_store.store.queries import query
from avengers_store.store.statement import Statement

# Candidates handed to the ensemble. Self-Consistency and Direct sample one model; the others
# are only fallbacks when its endpoint is down. Model-Switch may pool all of them.
DEFAULT_TOP_N = {"self-consistency": 3, "model-switch": 3, "direct": 3}

Query = str | Sequence[float] | np.ndarray

# Exploration seeds drawn at a time for small requests (``ClientCore.seeds``).
SEED_BLOCK = 256

# Seconds an ``ask`` may take as a whole by default: embedding, routing, every model call, retry
# and fallback (None: only each HTTP request's own timeout bounds it).
DEFAULT_TIMEOUT = 120.0

# Seconds a client keeps the served and shadow policies it read (avengers.policy_roles) before
# reading them again: a promotion reaches every client within this, each decision under one
# whole policy.
ROLES_TTL = 2.0

SERVING_SQL = query("clients", "serving")

# Queries per part, at the least, when a batch is split over pooled connections: a part then
# takes ~0.05 s of one core at k = 64, so the snapshot's round trips cost nothing against it.
BATCH_PART = 1024

NO_SPACE = (
    "the store has no embedding space yet: run `avengers embed` and `avengers recluster` before "
    "routing text."
)


# -- steps: the I/O a flow asks its driver for --------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Run statements (several: in one transaction) with a connection of ``role`` (``read``
    may go to a replica; ``write`` to the primary), or the caller's ``conn``; the result is the
    first statement's rows (the others run for their effect). ``stage`` names the time spent
    for an observer."""

    statements: tuple[Statement, ...]
    role: str = "read"
    conn: Any = None
    stage: str | None = None


@dataclass(frozen=True)
class RunParts:
    """Run a batch's ``statements`` (its parts) with connections of ``role``, as many as the
    pool has free up to one each, in one snapshot (``store.snapshots``): the result is, for
    each statement in order, ``read(i, rows)`` of its rows (the rows when None), made as soon
    as they arrive so the other parts' server time covers it."""

    statements: tuple[Statement, ...]
    role: str = "read"
    stage: str | None = None
    read: Callable[[int, list[Any]], Any] | None = None


@dataclass(frozen=True)
class Embed:
    """Embed ``texts`` with ``embedder``: the result is a matrix, a row per text."""

    embedder: Embedder
    texts: tuple[str, ...]


@dataclass(frozen=True)
class LoadModel:
    """Read the embedder's model now (once per process), outside any question's deadline."""

    embedder: Embedder


@dataclass(frozen=True)
class Sample:
    """Draw a plan's ``SampleCall``: the result is its SampleBatch, or the EndpointError."""

    call: strategies.SampleCall


@dataclass(frozen=True)
class Gather:
    """Run ``flows`` concurrently, at most ``limit`` at a time: the result is their results in
    order (a flow's own exceptions propagate)."""

    flows: tuple[Generator[Any, Any, Any], ...]
    limit: int


@dataclass(frozen=True)
class Log:
    """Write route-log rows (``route_log.entry``), on ``conn`` when given; a driver may queue
    them for a background writer instead. ``shadow``: the requests' items for the shadow
    policy, which the driver hands to ``ClientCore.shadow_flow`` in the background, off the
    response path."""

    rows: tuple[dict[str, Any], ...]
    conn: Any = None
    shadow: tuple[shadow_work.ShadowItem, ...] = ()


@dataclass(frozen=True)
class Flush:
    """Wait (bounded) until route-log rows queued so far are written."""


@dataclass(frozen=True)
class Note:
    """Time spent in a stage, for an observer (``vote``: extraction and voting)."""

    stage: str
    seconds: float


Step = Run | RunParts | Embed | LoadModel | Sample | Gather | Log | Flush | Note
T = TypeVar("T")
Flow = Generator[Step, Any, T]


def run(
    *statements: Statement, role: str = "read", conn: Any = None, stage: str | None = None
) -> Run:
    return Run(tuple(statements), role, conn, stage)


class operation:  # noqa: N801 (used as a decorator)
    """Make a flow-returning method a method of each client: calling it drives the flow with
    the client's driver (``_drive``: a result for the sync client, a coroutine for the async
    one). Both clients share the one function, so their signatures cannot drift."""

    def __init__(self, fn: Callable[..., Flow[Any]]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        # Called on the class (``AvengersClient.route(client, q)``), as a plain method would be;
        # also what lets inspect and help() read the flow's signature there.
        return obj._drive(self.fn(obj, *args, **kwargs))

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        # A bound method of ``__call__``: made on every call of a client's method, where a
        # wrapper copying the flow's name and doc each time cost microseconds.
        return types.MethodType(self, obj)


# -- questions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """What to answer: ``text`` (routed on, and what answers are extracted against) and, for a
    caller's own conversation, the ``messages`` sent instead of the prompt template, ``extra``
    request fields passed to the model (tools, response format, sampling options),
    ``temperature`` (None: the strategy's default) and ``max_tokens`` (None: the client's)."""

    text: str
    messages: Sequence[Mapping[str, Any]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    temperature: float | None = None
    max_tokens: int | None = None


Outcome = tuple[strategies.Answer | None, AvengersError | None, float]


class ClientCore:
    """What both clients hold besides I/O: their options, the default routing policy and the
    caches (serving space, embedders, novelty models), and the operations as flows."""

    # Whether the connections keep prepared statements (the pooled clients' option): which
    # statement routes one query (``routing.decide.statement``).
    prepared_statements: bool = True
    # How many parts a large batch may be split into, run on connections of their own (the
    # pooled clients': two per pooled connection); a caller's connection takes the whole batch.
    batch_parts: int = 1

    def __init__(
        self,
        *,
        embedder: Embedder | None,
        prompts: PromptSet | None,
        threshold: float,
        max_tokens: int,
        max_concurrency: int,
        timeout: float | None,
        policy: Policy | None,
        method: str | RoutingMethod | None,
        ood_policy: str | None,
        log_vectors: bool,
        log_texts: bool,
        seed: int | None,
        policy_changes: Mapping[str, Any] | None = None,
        policy_fill: Mapping[str, Any] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise InputError(
                f"max_concurrency must be >= 1, got {max_concurrency}", location="max_concurrency"
            )
        check_timeout(timeout)
        base = policy if policy is not None else Policy()
        changes: dict[str, Any] = {}
        if method is not None:
            changes["method"] = method
        if ood_policy is not None:
            changes["ood_policy"] = ood_policy
        self.policy = base.replace(**changes)
        # Without a policy of its own the client routes with the store's served policy (when
        # one is stored), changed as its own options and ``policy_changes`` say; ``policy_fill``
        # sets fields the result leaves None and no change names (the gateway's trade-off of 1,
        # for costs: a server policy with ``"tradeoff": None`` turns pricing off).
        self._own_policy = policy is not None
        self._served_changes = {**changes, **(policy_changes or {})}
        self._policy_fill = dict(policy_fill or {})
        if not self._own_policy:
            self.policy = self._with_changes(Policy())
        self._roles = Roles()
        self._roles_at: float | None = None
        self.prompts = prompts
        self.threshold = threshold
        self.max_tokens = max_tokens
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.log_vectors = log_vectors or log_texts
        self.log_texts = log_texts
        self._rng = np.random.default_rng(seed)
        self._seed_pool: list[int] = []
        self._seed_next = 0
        self._embedder_override = embedder
        self._embedders: dict[int, Embedder] = {}
        self._serving_cache: tuple[int | None, Space] | None = None
        self._novelty = novelty.NoveltyCache()
        self._state_lock = threading.Lock()

    @property
    def method(self) -> RoutingMethod:
        return self.policy.method

    @property
    def ood_policy(self) -> str:
        return self.policy.ood_policy

    def _drive(self, flow: Flow[Any]) -> Any:  # pragma: no cover - each driver defines it
        raise NotImplementedError

    # -- policies --------------------------------------------------------------------------

    def policy_for(self, policy: Policy | None = None, **changes: Any) -> Policy:
        """``policy`` (default: the client's, or the store's served policy with the client's
        changes) with ``changes``; a change given as None keeps the policy's value."""
        return (policy or self.policy).replace(
            **{k: v for k, v in changes.items() if v is not None}
        )

    def _with_changes(self, served: Policy) -> Policy:
        chosen = served.replace(**self._served_changes)
        fill = {
            k: v
            for k, v in self._policy_fill.items()
            if k not in self._served_changes and getattr(chosen, k) is None
        }
        return chosen.replace(**fill)

    @property
    def roles(self) -> Roles:
        """The served and shadow policies as last read (``ROLES_TTL``)."""
        return self._roles

    def _read_roles(self, conn: Any) -> Flow[Roles]:
        """The store's served and shadow policies, read again when older than ``ROLES_TTL``; a
        client without a policy of its own routes with the served one from then on."""
        now = time.monotonic()
        with self._state_lock:
            fresh = self._roles_at is not None and now - self._roles_at < ROLES_TTL
            found = self._roles
        if fresh:
            return found
        rows = yield run(Statement(ROLES_SQL), conn=conn)
        found = roles_from_rows(rows)
        with self._state_lock:
            self._roles, self._roles_at = found, time.monotonic()
            if not self._own_policy:
                self.policy = self._with_changes(found.served or Policy())
        return found

    def seeds(self, count: int) -> list[int]:
        """Exploration's seeds for ``count`` decisions, from the client's generator."""
        with self._state_lock:
            # Drawn ahead in blocks: the same sequence as a draw per call (each seed is one
            # 64-bit draw of the generator), without numpy's ~13 µs per call on every route.
            out = self._seed_pool[self._seed_next : self._seed_next + count]
            self._seed_next += len(out)
            if len(out) < count:
                more = count - len(out)
                self._seed_pool = [
                    int(x) for x in self._rng.integers(0, 2**62, size=max(more, SEED_BLOCK))
                ]
                out += self._seed_pool[:more]
                self._seed_next = more
            return out

    # -- serving space and novelty ---------------------------------------------------------

    def _serving(self, conn: Any, *, refresh: bool = False) -> Flow[tuple[int | None, Space]]:
        """(active clustering id, its embedding space), read once and cached."""
        with self._state_lock:
            cached = self._serving_cache
        if cached is None or refresh:
            rows = yield run(Statement(SERVING_SQL), conn=conn)
            cached = serving_from_row(rows[0] if rows else None)
            with self._state_lock:
                self._serving_cache = cached
        return cached

    def _embedder(self, space: Space) -> Embedder:
        """The embedder of ``space`` (the one given to the client, if any), made once."""
        if self._embedder_override is not None:
            return self._embedder_override
        with self._state_lock:
            embedder = self._embedders.get(space.id)
        if embedder is None:
            embedder = embedder_for_space(space)
            with self._state_lock:
                embedder = self._embedders.setdefault(space.id, embedder)
        return embedder

    def _novelty_model(self, clustering_id: int | None, conn: Any) -> Flow[Any]:
        """The clustering's novelty model (None: it has none), read once per version."""
        if clustering_id is None:
            return None
        found, model = self._novelty.get(clustering_id)
        if not found:
            rows = yield run(novelty.load_statement(clustering_id), conn=conn)
            model = novelty.model_from_row(rows[0] if rows else None)
            self._novelty.put(clustering_id, model)
        return model

    # -- routing ---------------------------------------------------------------------------

    def _decide(
        self,
        queries: Sequence[Query] | np.ndarray,
        policy: Policy,
        *,
        prompt_chars: Sequence[int | None] | None = None,
        pinned: Sequence[str | None] | None = None,
        seeds: Sequence[int | None] | None = None,
        conn: Any = None,
    ) -> Flow[tuple[list[RouteDecision], Any]]:
        """The decisions for ``queries`` (texts embedded in the serving space, vectors as they
        are) in one statement, and the vectors routed. A clustering switched meanwhile is
        looked up again, and texts routed once more in its space."""
        matrix = isinstance(queries, np.ndarray) and queries.ndim == 2
        texts = [] if matrix else text_positions(queries)
        served, space = yield from self._serving(conn)
        chars = prompt_lengths(queries, prompt_chars, matrix)
        seeds = seeds if seeds is not None else self.seeds(len(queries))
        for attempt in range(2):
            vectors: Any = queries if matrix else list(queries)
            if texts:
                found = yield Embed(self._embedder(space), tuple(t for _, t in texts))
                for (i, _), v in zip(texts, found, strict=True):
                    vectors[i] = v
            model = yield from self._novelty_model(served, conn)
            bounds = part_bounds(len(queries), 1 if conn is not None else self.batch_parts)
            statements = tuple(
                decide_statement(
                    vectors[a:b],
                    policy,
                    seeds=seeds[a:b],
                    prompt_chars=part(chars, a, b),
                    pinned=part(pinned, a, b),
                    novelty=model,
                    novelty_clustering=served,
                    prepared=self.prepared_statements,
                )
                for a, b in bounds
            )
            if len(statements) == 1:
                rows = yield run(statements[0], conn=conn, stage="route")
                decisions = decisions_from_rows(rows, len(queries), policy)
            else:
                read = functools.partial(part_decisions, bounds, policy)
                found = yield RunParts(statements, stage="route", read=read)
                decisions = [d for part_found in found for d in part_found]
            if all(d.clustering_id == served for d in decisions) or attempt == 1:
                return decisions, vectors
            # Another clustering serves now (maybe in another space): look it up again; texts
            # are embedded and routed once more, vectors were routed right (decide computed
            # their novelty itself).
            served, space = yield from self._serving(conn, refresh=True)
            if not texts:
                return decisions, vectors
        raise AssertionError("unreachable")

    @operation
    def route(
        self,
        query: Query,
        top_n: int | None = None,
        *,
        policy: Policy | None = None,
        prompt_chars: int | None = None,
        pinned: str | None = None,
        seed: int | None = None,
        conn: Any = None,
        **changes: Any,
    ) -> Flow[RouteDecision]:
        """Route a text (embedded in the serving space) or a vector: one ``avengers.decide``
        statement under ``policy`` (default: the client's) with ``changes`` to it (any field of
        ``routing.Policy``: ``method``, ``tradeoff``, ``max_cost``, ``completions``,
        ``ood_policy``, ``require_endpoint``, ``models``, ``exploration``,
        ``production_weight``, ...). ``prompt_chars``: a vector's text length, for its expected
        cost (a text's own length is used); ``pinned``: a model asked first when it is a
        candidate; ``seed``: exploration's draws (default: from the client's generator)."""
        if isinstance(query, np.ndarray) and query.ndim == 2:
            raise InputError("route takes one query; use route_many for a matrix", location="query")
        decision, _ = yield from ClientCore.route_with_vector.fn(
            self, query, top_n, policy=policy, prompt_chars=prompt_chars, pinned=pinned,
            seed=seed, conn=conn, **changes,
        )  # fmt: skip
        return decision

    @operation
    def route_with_vector(
        self,
        query: Query,
        top_n: int | None = None,
        *,
        policy: Policy | None = None,
        prompt_chars: int | None = None,
        pinned: str | None = None,
        seed: int | None = None,
        conn: Any = None,
        **changes: Any,
    ) -> Flow[tuple[RouteDecision, Any]]:
        """``route``, and the vector it was routed with (a text's embedding); ``route``'s flow."""
        yield from self._read_roles(conn)
        chosen = self.policy_for(policy, top_n=top_n, **changes)
        decisions, vectors = yield from self._decide(
            [query], chosen, prompt_chars=[prompt_chars], pinned=[pinned],
            seeds=None if seed is None else [seed], conn=conn,
        )  # fmt: skip
        return decisions[0], vectors[0]

    @operation
    def route_many(
        self,
        queries: Sequence[Query] | np.ndarray,
        top_n: int | None = None,
        *,
        policy: Policy | None = None,
        prompt_chars: Sequence[int | None] | None = None,
        seeds: Sequence[int | None] | None = None,
        conn: Any = None,
        **changes: Any,
    ) -> Flow[list[RouteDecision]]:
        """Route many texts and/or vectors in one ``avengers.decide_many`` statement (one
        snapshot); input order kept. A 2-D numpy array is taken as one vector per row, as is.
        Without ``conn``, a batch of at least twice ``BATCH_PART`` queries is split into parts
        run at once on the pool's free connections, all in one snapshot (``store.snapshots``).
        ``policy``, ``changes``, ``prompt_chars`` (per query) and ``seeds`` as in ``route``."""
        check_route_many(queries)
        if len(queries) == 0:
            return []
        yield from self._read_roles(conn)
        chosen = self.policy_for(policy, top_n=top_n, **changes)
        decisions, _ = yield from self._decide(
            queries, chosen, prompt_chars=prompt_chars, seeds=seeds, conn=conn
        )
        return decisions

    @operation
    def embed(self, texts: Sequence[str], *, conn: Any = None) -> Flow[np.ndarray]:
        """Embed ``texts`` in the serving space (what routing embeds them with)."""
        _, space = yield from self._serving(conn)
        return (yield Embed(self._embedder(space), tuple(texts)))

    @operation
    def embedder(self, conn: Any = None) -> Flow[Embedder]:
        """The embedder of the serving space (the active clustering's), cached per client."""
        _, space = yield from self._serving(conn)
        return self._embedder(space)

    @operation
    def execute(self, statement: Statement, role: str = "read", *, conn: Any = None) -> Flow[Any]:
        """Run one statement with a pooled connection of ``role`` (or ``conn``): its rows."""
        return (yield run(statement, role=role, conn=conn))

    # -- answering -------------------------------------------------------------------------

    @operation
    def ask(
        self,
        text: str,
        samples: int = strategies.DEFAULT_SAMPLES,
        strategy: str = "self-consistency",
        task_type: str | None = None,
        top_n: int | None = None,
        *,
        policy: Policy | None = None,
        timeout: float | None = None,
        conn: Any = None,
        **changes: Any,
    ) -> Flow[strategies.Answer]:
        """Embed, route to the top models with endpoints, sample and vote, log, return the
        Answer with ``decision`` and ``route_id`` filled. ``latency_ms`` is end to end
        (embedding included). ``policy`` and ``changes`` as in ``route`` (the expected cost
        counts ``samples`` answers). An out-of-distribution question under the ``widen`` OOD
        policy is answered with Model-Switch over the top-n. ``timeout`` (seconds; default the
        client's) bounds it all, fallbacks included: past it the samples drawn are voted on, or
        AllEndpointsFailed (``timed_out``) is raised."""
        out = yield from self._ask(
            [Question(text)], samples, strategy, task_type, top_n, policy=policy,
            timeout=timeout, conn=conn, changes=changes,
        )  # fmt: skip
        raise_first(out)
        return out[0]

    @operation
    def ask_many(
        self,
        texts: Sequence[str],
        samples: int = strategies.DEFAULT_SAMPLES,
        strategy: str = "self-consistency",
        task_type: str | None = None,
        top_n: int | None = None,
        *,
        policy: Policy | None = None,
        max_concurrency: int | None = None,
        return_exceptions: bool = False,
        timeout: float | None = None,
        conn: Any = None,
        **changes: Any,
    ) -> Flow[list[strategies.Answer | AvengersError]]:
        """``ask`` for many texts: one embedding batch, one routing statement, then at most
        ``max_concurrency`` questions sampled at a time. Every question writes a route_log row
        (failed ones too, with the error). With ``return_exceptions`` a failed question yields
        its AvengersError in place of an Answer. ``timeout`` bounds each question as ``ask``
        would: the shared embedding and routing plus its own sampling (waiting for a free slot
        among ``max_concurrency`` is not counted)."""
        check_ask(texts, strategy)
        out = yield from self._ask(
            [Question(t) for t in texts], samples, strategy, task_type, top_n, policy=policy,
            timeout=timeout, conn=conn, changes=changes, max_concurrency=max_concurrency,
        )  # fmt: skip
        if not return_exceptions:
            raise_first(out)
        return out

    def _ask(
        self,
        questions: Sequence[Question],
        samples: int,
        strategy: str,
        task_type: str | None,
        top_n: int | None,
        *,
        policy: Policy | None,
        timeout: float | None,
        conn: Any,
        changes: Mapping[str, Any],
        max_concurrency: int | None = None,
    ) -> Flow[list[strategies.Answer | AvengersError]]:
        check_ask([q.text for q in questions], strategy)
        check_timeout(timeout)
        limit = timeout if timeout is not None else self.timeout
        if not questions:
            return []
        # Reading the embedding model happens once per process: not part of a question's deadline.
        _, space = yield from self._serving(conn)
        yield LoadModel(self._embedder(space))
        started = time.perf_counter()
        roles = yield from self._read_roles(conn)
        n = top_n or DEFAULT_TOP_N[strategy]
        chosen = self.policy_for(
            policy, top_n=n, require_endpoint=True,
            completions=completions_for(strategy, samples), **changes,
        )  # fmt: skip
        decisions, vectors = yield from self._decide([q.text for q in questions], chosen, conn=conn)
        routed_ms = (time.perf_counter() - started) * 1000.0
        flows = tuple(
            self._answer(q, d, samples, strategy, task_type, limit, routed_ms / 1000.0)
            for q, d in zip(questions, decisions, strict=True)
        )
        outcomes = yield Gather(flows, max(1, max_concurrency or self.max_concurrency))
        out, rows = settle(
            [q.text for q in questions],
            decisions,
            outcomes,
            routed_ms=routed_ms,
            strategy=strategy,
            vectors=vectors if self.log_vectors else None,
            keep_texts=self.log_texts,
        )
        items: list[shadow_work.ShadowItem] = []
        if roles.shadow is not None:
            for q, d, v, row, ans in zip(questions, decisions, vectors, rows, out, strict=True):
                found = shadow_work.item(
                    row["route_id"], v, d, text=q.text,
                    answer=ans if isinstance(ans, strategies.Answer) else None,
                    shadow=roles.shadow_name,
                )  # fmt: skip
                if found is not None:
                    items.append(found)
        yield Log(tuple(rows), conn, tuple(items))
        return out

    def plan(
        self,
        question: Question,
        decision: RouteDecision,
        *,
        samples: int = strategies.DEFAULT_SAMPLES,
        strategy: str = "self-consistency",
        task_type: str | None = None,
        threshold: float | None = None,
        deadline: Deadline | None = None,
        endpoints: Sequence[Endpoint] | None = None,
    ) -> strategies.Plan:
        """The sampling plan answering ``question`` with the decision's candidates (or
        ``endpoints``): Model-Switch for an out-of-distribution question under ``widen``."""
        if decision.ood and decision.ood_policy == "widen":
            strategy = "model-switch"
        return strategies.answer_plan(
            question.text,
            endpoints if endpoints is not None else endpoints_for(decision),
            samples=samples,
            strategy=strategy,
            task_type=task_type,
            threshold=threshold if threshold is not None else self.threshold,
            prompts=self.prompts,
            max_tokens=question.max_tokens or self.max_tokens,
            messages=question.messages,
            extra=question.extra,
            deadline=deadline,
            temperature=question.temperature,
        )

    def _answer(
        self,
        question: Question,
        decision: RouteDecision,
        samples: int,
        strategy: str,
        task_type: str | None,
        limit: float | None,
        spent: float,
    ) -> Flow[Outcome]:
        """One question's answer (or error) and its sampling time in ms."""
        began = time.perf_counter()
        try:
            plan = self.plan(
                question, decision, samples=samples, strategy=strategy, task_type=task_type,
                deadline=question_deadline(limit, spent),
            )  # fmt: skip
            answer = yield from drive_plan(plan)
            return answer, None, (time.perf_counter() - began) * 1000.0
        except AvengersError as exc:
            return None, exc, (time.perf_counter() - began) * 1000.0

    @operation
    def run_plan(self, plan: strategies.Plan) -> Flow[strategies.Answer]:
        """Draw a sampling plan (``plan``) with this client's models: its Answer."""
        return (yield from drive_plan(plan))

    @operation
    def log(
        self,
        rows: Sequence[dict[str, Any]],
        *,
        conn: Any = None,
        shadow: Sequence[shadow_work.ShadowItem] = (),
    ) -> Flow[None]:
        """Write route-log rows (``route_log.entry``), or queue them for a background writer;
        ``shadow``: the requests' shadow items (``shadow.work.item``), handled in the
        background when a shadow policy is set."""
        if rows or shadow:
            yield Log(tuple(rows), conn, tuple(shadow))

    # -- shadowing -------------------------------------------------------------------------

    def shadow_flow(self, items: Sequence[shadow_work.ShadowItem]) -> Flow[int]:
        """The shadow policy's decisions for a batch of served requests, stored in one
        statement, then the sampled disagreements asked of its top model one by one while the
        day's spend cap allows (each reserves its most before it is asked): run by the drivers in the background, never on a response's
        path. Returns the answers sampled."""
        if not items:
            return 0
        # One statement per shadow policy the requests were served beside (a switch while
        # they waited makes two).
        by_shadow: dict[str | None, list[shadow_work.ShadowItem]] = {}
        for i in items:
            by_shadow.setdefault(i.shadow, []).append(i)
        rows = []
        for name, group in by_shadow.items():
            statement = shadow_work.decide_statement(group, name)
            rows.extend((yield run(statement, role="write", stage="shadow")))
        by_id = {i.route_id: i for i in items}
        sampled = 0
        for route_id, model, endpoint, served_name, key_env, _expected in rows:
            found = by_id.get(str(route_id))
            if found is None or found.text is None:
                continue
            reserve = shadow_work.reserve_statement(found, model, self.prompts, self.max_tokens)
            if not (yield run(reserve, role="write"))[0][0]:
                continue  # the day's cap (or the shadow stopped): this one is not asked
            answer, error = None, None
            if endpoint is None:
                error = f"model {model} has no endpoint"
            else:
                plan = shadow_work.sample_plan(
                    found, Endpoint(model, endpoint, served_name or model, key_env),
                    prompts=self.prompts, max_tokens=self.max_tokens,
                )  # fmt: skip
                try:
                    answer = yield from drive_plan(plan)
                    sampled += 1
                except AvengersError as exc:
                    error = str(exc)
            yield run(shadow_work.sample_statement(found, model, answer, error), role="write")
        return sampled

    # -- feedback --------------------------------------------------------------------------

    @operation
    def feedback(
        self,
        route_id: uuid.UUID | str,
        score: float,
        model: str | None = None,
        source: str = feedback.DEFAULT_SOURCE,
        *,
        at: datetime | None = None,
        refresh: bool = True,
        conn: Any = None,
    ) -> Flow[feedback.Feedback]:
        """Score the answer of request ``route_id`` (``Answer.route_id``) in [0, 1]: one SQL
        call (``avengers.record_feedback``). ``model`` None scores the model whose answer was
        returned, else it must be one the request sampled; a second feedback from the same
        ``source`` replaces the first. ``refresh`` serves it to routing at once. Route-log rows
        this client still has queued are written first, so feedback on an answer it just gave
        finds its route."""
        params = feedback.feedback_params(route_id, score, model, source, at)
        if conn is None:
            yield Flush()
        statements = [feedback.record_statement(params)]
        if refresh:
            statements.append(Statement(feedback.REFRESH_SQL))
        rows = yield run(*statements, role="write", conn=conn)
        return feedback.from_row(params, rows[0])

    @operation
    def refresh_production(self, conn: Any = None) -> Flow[None]:
        """Serve the feedback recorded since the last refresh (``avengers.refresh_production``)."""
        yield run(Statement(feedback.REFRESH_SQL), role="write", conn=conn)


# -- the plan driver and what the flows share --------------------------------------------------


def drive_plan(plan: strategies.Plan) -> Flow[strategies.Answer]:
    """Draw a plan's calls as ``Sample`` steps; its own time (extraction, voting) is noted as
    ``vote``."""
    started = time.perf_counter()
    upstream = 0.0
    result: SampleBatch | EndpointError | None = None
    while True:
        try:
            call = plan.send(result)  # type: ignore[arg-type]
        except StopIteration as stop:
            yield Note("vote", max(0.0, time.perf_counter() - started - upstream))
            return stop.value
        asked = time.perf_counter()
        result = yield Sample(call)
        upstream += time.perf_counter() - asked


def serving_from_row(row: Sequence[Any] | None) -> tuple[int | None, Space]:
    """(active clustering id, serving space) from a ``SERVING_SQL`` row."""
    if row is None:
        raise StoreStateError(NO_SPACE)
    return row[0], space_from_row(row[1:])


def text_positions(queries: Sequence[Query]) -> list[tuple[int, str]]:
    """(position, text) of the texts among ``queries`` (vectors pass through); empty texts are
    refused naming their position."""
    texts = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
    for i, q in texts:
        if not q.strip():
            raise InputError("the query text is empty", location=f"query {i + 1}")
    return texts


def prompt_lengths(
    queries: Sequence[Query] | np.ndarray, given: Sequence[int | None] | None, matrix: bool
) -> list[int | None] | None:
    """Each query's length in characters for its expected cost: a text's own length, a
    vector's from ``given`` (None: unknown, the store assumes its calibration texts' mean)."""
    if given is not None and len(given) != len(queries):
        raise InputError(
            f"expected {len(queries)} prompt lengths, got {len(given)}", location="prompt_chars"
        )
    if matrix:
        return list(given) if given is not None else None
    return [
        len(q) if isinstance(q, str) else (given[i] if given is not None else None)
        for i, q in enumerate(queries)
    ]


def part_bounds(count: int, most: int) -> list[tuple[int, int]]:
    """[start, end) of each part of a batch of ``count`` queries: at most ``most`` parts of at
    least ``BATCH_PART`` queries each (one part below twice that)."""
    parts = max(1, min(most, count // BATCH_PART))
    if parts == 1:
        return [(0, count)]
    edges = [count * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


def part(values: Sequence[Any] | None, start: int, end: int) -> Sequence[Any] | None:
    return None if values is None else values[start:end]


def part_decisions(
    bounds: Sequence[tuple[int, int]], policy: Policy, i: int, rows: list[Any]
) -> list[RouteDecision]:
    """The decisions of part ``i`` of a batch from its rows."""
    start, end = bounds[i]
    return decisions_from_rows(rows, end - start, policy)


def check_route_many(queries: object) -> None:
    if isinstance(queries, str):
        raise InputError(
            "route_many takes a list of queries; use route() for one text", location="queries"
        )


def check_ask(texts: Sequence[str], strategy: str) -> None:
    if isinstance(texts, str):
        raise InputError("ask_many takes a list of texts; use ask() for one", location="texts")
    if strategy not in strategies.STRATEGIES:
        raise InputError(
            f"unknown strategy {strategy!r}; expected one of {', '.join(strategies.STRATEGIES)}",
            location="strategy",
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError("expected a non-empty question text", location=f"question {i + 1}")


def check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise InputError(f"timeout must be > 0 seconds, got {timeout}", location="timeout")


def load_embedder(embedder: Any) -> None:
    """Read the embedder's model now if it has one to read (an embedder given to a client
    needs only ``embed``)."""
    load = getattr(embedder, "load", None)
    if load is not None:
        load()


def question_deadline(timeout: float | None, spent: float) -> Deadline | None:
    """The deadline of one question's sampling: ``timeout`` seconds from the ask, of which
    ``spent`` went to the shared embedding and routing (it may have passed already)."""
    if timeout is None:
        return None
    return Deadline(time.monotonic() + timeout - spent, timeout)


def completions_for(strategy: str, samples: int) -> int:
    """Answers one request draws from its first model: what its expected cost counts."""
    return 1 if strategy == "direct" else max(1, int(samples))


def endpoints_for(decision: RouteDecision) -> list[Endpoint]:
    """The decision's candidates as endpoints, best first; a clear error when there is none."""
    if not decision.candidates:
        raise StoreStateError(
            f"no active model with an endpoint has a profile for cluster {decision.cluster} "
            f"of clustering {decision.clustering_id}: give a model an endpoint "
            "(`avengers models set NAME`, model_pool.set_model) or activate one "
            "(`avengers models activate NAME`)."
        )
    return [
        Endpoint(c.model, c.endpoint, c.served_name or c.model, c.api_key_env)
        for c in decision.candidates
    ]


def settle(
    texts: Sequence[str],
    decisions: Sequence[RouteDecision],
    outcomes: Sequence[Outcome],
    *,
    routed_ms: float,
    strategy: str,
    vectors: Sequence[Any] | None = None,
    keep_texts: bool = False,
) -> tuple[list[strategies.Answer | AvengersError], list[dict[str, Any]]]:
    """Results in input order (Answers with decision, end-to-end latency and route id filled,
    or the error) and one route-log row each. ``outcomes[i]`` is (answer, error, sampling ms).
    ``vectors`` (the queries' embeddings, when the client logs them) go into the rows, and the
    texts with them when ``keep_texts``."""
    out: list[strategies.Answer | AvengersError] = []
    rows = []
    share = routed_ms / len(texts) if texts else 0.0
    for i, (text, decision, (ans, err, ms)) in enumerate(
        zip(texts, decisions, outcomes, strict=True)
    ):
        total = share + ms
        route_id = uuid.uuid4()
        if ans is not None:
            ans = dataclasses.replace(ans, decision=decision, latency_ms=total, route_id=route_id)
        rows.append(
            log_row(
                text,
                decision,
                ans,
                route_id=route_id,
                strategy=ans.strategy if ans is not None else strategy,
                latency_ms=total,
                error=err,
                extra={"route_ms": round(share, 3)},
                vector=vectors[i] if vectors is not None else None,
                text=text if vectors is not None and keep_texts else None,
            )
        )
        out.append(ans if ans is not None else err)  # type: ignore[arg-type]
    return out, rows


def log_row(
    question: str,
    decision: RouteDecision | None,
    answer: strategies.Answer | None,
    *,
    route_id: uuid.UUID,
    strategy: str,
    latency_ms: float,
    error: BaseException | str | None = None,
    api_key_id: int | None = None,
    models: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    vector: Any = None,
    text: str | None = None,
) -> dict[str, Any]:
    """The route-log row of one request, whoever answered it (a client or the gateway): the
    decision, its policy, the answer or the error (``models``: those called, when no answer
    says)."""
    fields: dict[str, Any] = {}
    if decision is not None:
        fields["top_n"] = decision.policy.top_n if decision.policy else len(decision.candidates)
        if decision.policy is not None:
            fields["policy"] = decision.policy.to_dict()
        # Each candidate's routing score as decided, so the request's page can explain it later.
        fields["scores"] = [
            round(c.score, 4) if c.score is not None else None for c in decision.candidates
        ]
        fields.update(cost_fields(decision))
    return route_log.entry(
        question,
        decision=decision,
        answer=answer,
        strategy=strategy,
        latency_ms=latency_ms,
        error=str(error) if error is not None else None,
        extra={**fields, **(extra or {})},
        route_id=route_id,
        api_key_id=api_key_id,
        models=models,
        vector=vector if decision is not None else None,
        text=text,
    )


def cost_fields(decision: RouteDecision | None) -> dict[str, Any]:
    """What a cost-aware decision adds to its route-log row (nothing for a plain one)."""
    if decision is None or not decision.costed:
        return {}
    return {
        "tradeoff": decision.tradeoff,
        "max_cost": decision.max_cost,
        "expected_costs": [c.expected_cost for c in decision.candidates],
        "over_budget": decision.over_budget,
    }


def raise_first(results: Sequence[strategies.Answer | AvengersError]) -> None:
    for item in results:
        if isinstance(item, AvengersError):
            raise item
