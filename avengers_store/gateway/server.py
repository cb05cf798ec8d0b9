"""Running the gateway under uvicorn: one process, or ``workers`` processes sharing the port.

SIGTERM (or Ctrl-C) stops accepting connections and lets requests in flight finish for up to
``grace_s`` seconds; then the app's shutdown writes every queued route-log row and closes the
pools.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import uvicorn

from avengers_store.gateway.app import create_app
from avengers_store.gateway.settings import ENV, GatewaySettings


def config(settings: GatewaySettings, **overrides: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.grace_s,
        "access_log": False,
        "log_level": "info",
        **overrides,
    }
    return uvicorn.Config(create_app(settings), **options)  # type: ignore[arg-type]


def run(settings: GatewaySettings) -> None:
    """Serve until SIGTERM / SIGINT."""
    if settings.workers == 1:
        uvicorn.Server(config(settings)).run()
        return
    # Worker processes rebuild the settings from the environment and add up their metrics
    # through prometheus-client's multiprocess directory.
    metrics_dir = tempfile.mkdtemp(prefix="avengers-gateway-metrics-")
    os.environ[ENV] = settings.to_env()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "avengers_store.gateway.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            lifespan="on",
            timeout_graceful_shutdown=settings.grace_s,
            access_log=False,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
