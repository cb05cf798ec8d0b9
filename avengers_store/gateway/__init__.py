"""The gateway: ``avengers serve``, an OpenAI-compatible HTTP API in front of the store and the
model pool. ``model: "avengers"`` routes and votes (``AsyncAvengersClient``); a pool model's name
passes through to its endpoint. Modules: protocol (the wire format), errors (OpenAI-style error
bodies), keys (API keys), metrics (Prometheus), sessions (conversation affinity), streaming (SSE),
settings, state (one gateway's state and shared steps), inputs (what a request asks for), headers
(the ``x-avengers-*`` headers), recipe (a ``model: "avengers"`` completion), passthrough (a pool
model named directly), handlers (the endpoints), guard (error answers, the in-flight limit),
app (the Starlette app and its route table), server (uvicorn).
"""
