"""avengers-store: a Postgres + pgvector capability-profile store and thin routing client for
a pool of models served by vLLM (the Avengers recipe: embed, cluster, profile, route, vote)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avengers_store.errors import AvengersError

if TYPE_CHECKING:
    from avengers_store.async_client import AsyncAvengersClient
    from avengers_store.client import AvengersClient
    from avengers_store.evaluation.replay import evaluate

__version__ = "0.1.0"

__all__ = ["AsyncAvengersClient", "AvengersClient", "AvengersError", "__version__", "evaluate"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the client pulls in the HTTP and embedding stacks, which plain
    # store commands (db upgrade, load-table) do not need.
    if name == "AvengersClient":
        from avengers_store.client import AvengersClient

        return AvengersClient
    if name == "AsyncAvengersClient":
        from avengers_store.async_client import AsyncAvengersClient

        return AsyncAvengersClient
    if name == "evaluate":
        # The replay harness (numpy, scikit-learn through re-clustering).
        from avengers_store.evaluation.replay import evaluate

        return evaluate
    raise AttributeError(f"module 'avengers_store' has no attribute {name!r}")
