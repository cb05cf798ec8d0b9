"""``avengers serve`` in-process for tests: the app under uvicorn on a free loopback port."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from avengers_store.gateway.app import create_app
from avengers_store.gateway.settings import GatewaySettings
from avengers_store.testing.model_servers import free_port


@dataclass
class RunningGateway:
    base_url: str  # http://127.0.0.1:PORT
    app: Any

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway


@contextlib.contextmanager
def gateway_server(settings: Any = None, **overrides: Any) -> Iterator[RunningGateway]:
    """``avengers serve`` in-process: the app under uvicorn on a free loopback port, in a
    thread, for the block. ``overrides`` replace fields of ``settings`` (GatewaySettings)."""
    settings = dataclasses.replace(
        settings or GatewaySettings(), host="127.0.0.1", port=free_port(), **overrides
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", log_level="warning",
        access_log=False, timeout_graceful_shutdown=settings.grace_s,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="avengers-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield RunningGateway(f"http://{settings.host}:{settings.port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
