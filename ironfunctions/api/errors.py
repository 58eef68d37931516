"""The one map from domain exceptions to HTTP status and JSON error body.

Bodies are ``{"error":{"message":"..."}}`` as the Go server returns them. Anything not
in the map is a bug of ours: 500 with a generic message, logged with its traceback,
never shown to the client.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ironfunctions import errors
from ironfunctions.api.schema import dumps

log = Logger()

STATUS: list[tuple[type[Exception], int]] = [
    (errors.AppNotFound, 404),
    (errors.RouteNotFound, 404),
    (errors.AppAlreadyExists, 409),
    (errors.RouteAlreadyExists, 409),
    (errors.CallNotFound, 404),
    (errors.CallCompleted, 409),
    (errors.LeaseLost, 409),
    (errors.AppHasRoutes, 400),
    (errors.ValidationError, 400),  # includes InvalidJSON
    (errors.PayloadTooLarge, 413),
    (errors.Unauthorized, 401),
    (errors.ImageNotFound, 502),  # the function's image, not the client's request
    (errors.DatastoreUnavailable, 503),
    (errors.QueueUnavailable, 503),
    (errors.NotReady, 503),
    (errors.Overloaded, 503),
    (errors.DockerUnavailable, 503),
]


def status_for(exc: BaseException) -> int | None:
    """The status for a domain exception, or None if it is not a client-facing one."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return None


def error_body(message: str, **extra: Any) -> bytes:
    return dumps({**extra, "error": {"message": message}})


def write_error(request: IRequest, status: int, message: str, retry_after: int = 1, **extra: Any) -> bytes:
    """Set status and JSON content type on ``request``; return the error body. A 503
    says when to try again (``retry_after`` seconds)."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    if status == 503:
        request.setHeader(b"retry-after", b"%d" % retry_after)
    return error_body(message, **extra)


def render_failure(request: IRequest, failure: Failure) -> bytes:
    """Turn any failure into the right status and JSON error body."""
    exc = failure.value
    status = status_for(exc) if exc is not None else None
    if status is not None:
        return write_error(request, status, str(exc), getattr(exc, "retry_after", 1))
    if isinstance(exc, NotFound):
        return write_error(request, 404, "Not Found")
    if isinstance(exc, MethodNotAllowed):
        request.setHeader(b"allow", ", ".join(exc.valid_methods or []).encode())
        return write_error(request, 405, "Method Not Allowed")
    if isinstance(exc, HTTPException):
        return write_error(request, exc.code or 400, exc.name)
    log.failure("Unhandled error in {method} {uri}", failure,
                method=request.method.decode("latin-1"), uri=request.uri.decode("latin-1"))
    return write_error(request, 500, "Internal Server Error")


def install_error_handler(app: Klein) -> None:
    """Route every exception raised by ``app``'s handlers through ``render_failure``."""

    @app.handle_errors(Exception)
    def _handle(self: object, request: IRequest, failure: Failure) -> bytes:  # names as in KleinErrorMethod
        return render_failure(request, failure)
