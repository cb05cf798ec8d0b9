"""Bringing the served profiles up to date after a write.

A store-level call, so that whatever changes outcomes, models or the active clustering (the
importers, the model pool, model-set selection, onboarding) refreshes what routing reads without
depending on the calibration code that explains the profiles.
"""

from __future__ import annotations

import psycopg


def refresh_profiles(conn: psycopg.Connection) -> None:
    """Recompute the served profiles inside the caller's transaction (readers see the old rows
    until it commits). Call after anything that changes outcomes, models' active flags or the
    active clustering."""
    conn.execute("CALL avengers.refresh_profiles()")
