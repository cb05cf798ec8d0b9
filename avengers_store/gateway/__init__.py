"""The gateway: ``avengers serve``, an OpenAI-compatible HTTP API in front of the store and the
model pool. ``model: "avengers"`` routes and votes (``AsyncAvengersClient``); a pool model's name
passes through to its endpoint. Modules: protocol (the wire format), responses (the Responses
API: its wire format and translation), errors (OpenAI-style error bodies), keys (API keys and
their policies), metrics (Prometheus), access (the access log), sessions (conversation
affinity), streaming (SSE, and upstream streams up to their first token), answers (a voted
answer as a completion or chunks), settings, state (one gateway's state and shared steps),
inputs (what a request asks for, under its key's policy), headers (the ``x-avengers-*``
headers), recipe (a ``model: "avengers"`` completion), passthrough (a pool model named
directly), handlers (the endpoints), guard (error answers, the in-flight limit, the access log),
app (the Starlette app and its route table), server (uvicorn).
"""
