"""Settings read from the environment. Read on use, never cached at import time."""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_ENV = "AVENGERS_DATABASE_URL"
HOME_ENV = "AVENGERS_HOME"
REPLICA_URL_ENV = "AVENGERS_READ_DATABASE_URL"
EMBEDDER_ENV = "AVENGERS_EMBEDDER"
EMBEDDING_BACKEND_ENV = "AVENGERS_EMBEDDING_BACKEND"

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDED_DATABASE = "avengers"


def home() -> Path:
    """Where the embedded server and caches live: ``$AVENGERS_HOME`` or a per-user data dir."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return (base / "avengers-store").resolve()


def database_url() -> str | None:
    """The configured Postgres URL, or None to use the embedded server.

    libpq's own ``PG*`` variables count as configuration when ``PGHOST`` or ``PGDATABASE`` is set.
    """
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    if os.environ.get("PGHOST") or os.environ.get("PGDATABASE"):
        return ""  # empty conninfo: libpq reads the PG* variables itself
    return None


def read_database_url() -> str | None:
    """Optional read replica for routing reads (profiles, nearest centroid)."""
    return os.environ.get(REPLICA_URL_ENV) or None


def embedder_name() -> str:
    return os.environ.get(EMBEDDER_ENV) or DEFAULT_EMBEDDER


def embedding_backend() -> str:
    """How a local sentence-transformers model runs: ``auto`` (ONNX Runtime, else torch),
    ``onnx`` or ``torch``."""
    return (os.environ.get(EMBEDDING_BACKEND_ENV) or "auto").strip().lower()
