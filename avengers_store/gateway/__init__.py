"""The gateway: ``avengers serve``, an OpenAI-compatible HTTP API in front of the store and the
model pool. ``model: "avengers"`` routes and votes (``AsyncAvengersClient``); a pool model's name
passes through to its endpoint. Modules: protocol (the wire format), errors (OpenAI-style error
bodies), keys (API keys), metrics (Prometheus), sessions (conversation affinity), streaming (SSE),
settings, app (the Starlette app), server (uvicorn).
"""
