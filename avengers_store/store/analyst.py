"""Read-only access for analysts: ``grant_analyst`` gives an existing role what docs/sql.md,
"SQL for analysts", needs and nothing else.

Granted: USAGE on the schema, SELECT on the relations listed in ``ANALYST_RELATIONS`` (the data,
the profiles, the route log), EXECUTE on the routing functions (``avengers.route*``, every
overload). Never granted: ``api_keys``, ``gateway_sessions`` and ``api_key_minutes``
(``PRIVATE_RELATIONS``), any write, DDL or procedure. A relation the store gains later is granted
to nobody until it is added to one of the two lists (a test makes that choice explicit). Grants on the ``sql/`` definitions
are kept by ``db upgrade`` (``store.dependents``); tables are never dropped by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from avengers_store.errors import InputError
from avengers_store.store import connections, schema

SCHEMA = "avengers"

# Hold key hashes, conversation pins and the keys' request counters: for the gateway's own
# user only (key_spend shows analysts each key's name and spend, never its hash).
PRIVATE_RELATIONS = ("api_keys", "gateway_sessions", "api_key_minutes")
# Tables beside the data tables ``db status`` counts (schema.TABLES).
_OTHER_TABLES = (
    "meta",
    "novelty_profiles",
    "novelty_axes",
    "policies",
    "policy_roles",
    "shadow_decisions",
    "shadow_samples",
)
VIEWS = (
    "active_clustering",
    "cluster_profiles",
    "cluster_ranks",
    "cluster_profile_stats",
    "cluster_datasets",
    "dataset_profiles",
    "model_selection_scores",
    "model_priors",
    "clustering_scale",
    "routing_state",
    "routing_centroids",
    "routing_entries",
    "routing_models",
    "cluster_costs",
    "model_costs",
    "production_profiles",
    "production_evidence",
    "traffic_drift",
    "ood_daily",
    "outcome_drift",
    "key_spend",
    # the console's pages (sql/080_console.sql), so analysts can run what a page shows
    "request_log",
    "model_spend_daily",
    "pool_health",
    # shadow routing's (sql/085_shadow.sql and the migration 0010 tables)
    "routed_clusterings",
    "shadow_comparison",
    "shadow_agreement",
)
# Every table but the private ones, and every view and materialized view.
ANALYST_RELATIONS = (
    *(t for t in (*schema.TABLES, *_OTHER_TABLES) if t not in PRIVATE_RELATIONS),
    *VIEWS,
)

_ROUTE_FUNCTIONS = """
SELECT p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace = to_regnamespace(%s) AND p.prokind = 'f' AND p.proname LIKE 'route%%'
ORDER BY 1
"""


@dataclass(frozen=True)
class AnalystGrants:
    """What ``grant_analyst`` granted: relations (SELECT) and functions (EXECUTE)."""

    role: str
    relations: tuple[str, ...]
    functions: tuple[str, ...]


def grant_analyst(role: str, *, url: str | None = None) -> AnalystGrants:
    """Grant the existing ``role`` read-only access to the store (see the module docstring);
    creates nothing but grants, and rerunning it is harmless. Raises InputError when the role
    does not exist."""
    if not role or "\x00" in role:
        raise InputError("expected a role name", location="role")
    with connections.connection(url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            raise InputError(
                f"no role {role!r} on this server: create it first "
                f"(e.g. CREATE ROLE \"{role}\" LOGIN PASSWORD '...'), then grant",
                location="role",
            )
        who = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), who))
        relations = tuple(r for r in ANALYST_RELATIONS if _exists(conn, r))
        for name in relations:
            conn.execute(
                sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(SCHEMA, name), who)
            )
        functions = tuple(row[0] for row in conn.execute(_ROUTE_FUNCTIONS, (SCHEMA,)))
        for signature in functions:
            # regprocedure text is a quoted, schema-qualified signature: safe as SQL.
            conn.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(signature), who)
            )
    return AnalystGrants(role, relations, functions)


def _exists(conn: psycopg.Connection, name: str) -> bool:
    found = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{name}",)).fetchone()
    return found is not None and found[0] is not None
