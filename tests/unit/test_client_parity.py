"""The sync and async clients expose the same methods with the same parameters: both run the flows
of client_core.ClientCore, so a method added to one is a method of the other."""

from __future__ import annotations

import inspect

from avengers_store.async_client import AsyncAvengersClient
from avengers_store.client import AvengersClient
from avengers_store.client_core import ClientCore

# What only one of them has, and why: closing is sync on one and a coroutine on the other; the
# async client lends pooled connections to the gateway and runs a background route-log writer
# (which the gateway hands rows to without a task: log_nowait).
SYNC_ONLY = {"close"}
ASYNC_ONLY = {"aclose", "connection", "log_writer", "log_nowait"}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_the_same_methods_with_the_same_parameters():
    assert public(AvengersClient) - public(AsyncAvengersClient) == SYNC_ONLY
    assert public(AsyncAvengersClient) - public(AvengersClient) == ASYNC_ONLY
    shared = sorted(public(AvengersClient) & public(AsyncAvengersClient))
    methods = [n for n in shared if callable(getattr(AvengersClient, n))]
    assert {"route", "route_many", "ask", "ask_many", "feedback", "embed"} <= set(methods)
    for name in methods:
        sync, async_ = getattr(AvengersClient, name), getattr(AsyncAvengersClient, name)
        assert inspect.signature(sync) == inspect.signature(async_), name
        # Written once: the flows are ClientCore's own functions.
        if name in vars(ClientCore):
            assert sync is async_ is getattr(ClientCore, name), name


def test_routing_options_are_keyword_policy_changes():
    route = inspect.signature(AvengersClient.route).parameters
    assert list(route)[:3] == ["self", "query", "top_n"]
    assert route["policy"].kind is inspect.Parameter.KEYWORD_ONLY
    assert route["changes"].kind is inspect.Parameter.VAR_KEYWORD
    for name in ("ask", "ask_many", "route_many"):
        params = inspect.signature(getattr(AvengersClient, name)).parameters
        assert params["policy"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["conn"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["changes"].kind is inspect.Parameter.VAR_KEYWORD
