"""Capability profiles: the ``cluster_profiles`` materialized view and what reads it."""

from __future__ import annotations

import psycopg


def refresh_profiles(conn: psycopg.Connection) -> None:
    """Recompute the served profiles inside the caller's transaction (readers see the old rows
    until it commits). Call after anything that changes outcomes, models' active flags or the
    active clustering."""
    conn.execute("CALL avengers.refresh_profiles()")
