"""avengers-store: a Postgres + pgvector capability-profile store and thin routing client for
a pool of models served by vLLM (the Avengers recipe: embed, cluster, profile, route, vote)."""

from .errors import AvengersError

__version__ = "0.1.0"

__all__ = ["AvengersError", "__version__"]
