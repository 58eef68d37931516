"""Errors of the Klein handlers as HTTP answers, on a twisted.web request.

The map itself (domain exception -> status, headers, JSON body) is
``ironfunctions.http.errors``, shared with ``/r/``; this adds what only Klein raises
(werkzeug's routing errors: 404, 405 with ``Allow``...). Anything else is a bug of
ours: 500 with a generic message, logged with its traceback, never shown to the client.
"""

from __future__ import annotations

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ironfunctions.http.errors import ErrorAnswer, answer_for, error_answer, internal_error

log = Logger()


def write_answer(request: IRequest, answer: ErrorAnswer) -> bytes:
    """Set ``answer``'s status and headers on ``request``; return its body."""
    status, headers, body = answer
    request.setResponseCode(status)
    for name, value in headers:
        request.setHeader(name, value)
    return body


def render_failure(request: IRequest, failure: Failure) -> bytes:
    """Turn any failure into the right status and JSON error body."""
    exc = failure.value
    answer = answer_for(exc) if exc is not None else None
    if answer is not None:
        return write_answer(request, answer)
    if isinstance(exc, NotFound):
        return write_answer(request, error_answer(404, "Not Found"))
    if isinstance(exc, MethodNotAllowed):
        request.setHeader(b"allow", ", ".join(exc.valid_methods or []).encode())
        return write_answer(request, error_answer(405, "Method Not Allowed"))
    if isinstance(exc, HTTPException):
        return write_answer(request, error_answer(exc.code or 400, exc.name))
    log.failure("Unhandled error in {method} {uri}", failure,
                method=request.method.decode("latin-1"), uri=request.uri.decode("latin-1"))
    return write_answer(request, internal_error())


def install_error_handler(app: Klein) -> None:
    """Route every exception raised by ``app``'s handlers through ``render_failure``."""

    @app.handle_errors(Exception)
    def _handle(self: object, request: IRequest, failure: Failure) -> bytes:  # names as in KleinErrorMethod
        return render_failure(request, failure)
