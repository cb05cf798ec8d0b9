"""Running the gateway under uvicorn: one process, or ``workers`` processes sharing the port.

SIGTERM (or Ctrl-C) stops accepting connections and lets requests in flight finish for up to
``grace_s`` seconds; then the app's shutdown writes every queued route-log row and closes the
pools. The gateway's own access log (``access``: one JSON line per request) goes to stdout,
uvicorn's and the gateway's other messages to stderr.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from avengers_store.gateway.app import create_app
from avengers_store.gateway.settings import ENV, GatewaySettings


def log_config(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn's logging, with the gateway's loggers: its access lines as they are on stdout
    (unless ``access_log`` is off), its other messages beside uvicorn's."""
    out = copy.deepcopy(LOGGING_CONFIG)
    out["formatters"]["avengers_access"] = {"format": "%(message)s"}
    out["handlers"]["avengers_access"] = {
        "formatter": "avengers_access",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    out["loggers"]["avengers"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    out["loggers"]["avengers.gateway.access"] = {
        "handlers": ["avengers_access"] if settings.access_log else [],
        "level": "INFO" if settings.access_log else "WARNING",
        "propagate": False,
    }
    return out


def config(settings: GatewaySettings, **overrides: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.grace_s,
        "access_log": False,
        "log_level": "info",
        "log_config": log_config(settings),
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
            log_config=log_config(settings),
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
