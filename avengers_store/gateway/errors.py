"""Errors the OpenAI way: ``{"error": {"message", "type", "param", "code"}}`` with the status an
OpenAI SDK maps to its exception classes, and the library's errors mapped onto them once."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from starlette.responses import JSONResponse

from avengers_store.errors import (
    AvengersError,
    ConnectionFailed,
    EndpointError,
    InputError,
    NotFound,
    SchemaOutOfDate,
    StoreStateError,
)
from avengers_store.gateway.protocol import ErrorDetail, ErrorResponse

# Seconds a 503 for a store that is down or restarting asks the caller to wait.
RETRY_AFTER_S = "1"


class GatewayError(Exception):
    """An error answered to the caller with ``status`` and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers={**self.headers, **(headers or {})})


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def from_validation(exc: ValidationError) -> GatewayError:
    """The first problem of a request body, naming the field."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return bad_request(f"{param}: {first.get('msg')}" if param else first["msg"], param=param)


def from_library(exc: AvengersError) -> GatewayError:
    """The status and body for an error the library raised."""
    if isinstance(exc, EndpointError):
        # Every candidate of a routed request, or the one model a passthrough names: a model
        # that timed out is a 504 either way.
        return GatewayError(
            504 if exc.timed_out else 502,
            str(exc),
            type="upstream_error",
            code="upstream_timeout" if exc.timed_out else "upstream_failed",
        )
    if isinstance(exc, InputError):
        return bad_request(str(exc), param=exc.location)
    if isinstance(exc, NotFound):
        return GatewayError(404, str(exc), code="not_found")
    if isinstance(exc, ConnectionFailed):
        # The store is down or restarting: worth asking again shortly (StoreUnavailable says
        # the clients reconnect by themselves).
        return GatewayError(
            503,
            str(exc),
            type="service_unavailable",
            code="not_ready",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    if isinstance(exc, StoreStateError | SchemaOutOfDate):
        return GatewayError(503, str(exc), type="service_unavailable", code="not_ready")
    return GatewayError(500, str(exc), type="server_error", code="internal_error")
