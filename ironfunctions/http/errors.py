"""The one map from domain exceptions to HTTP answers: (status, headers, JSON body).

Every error the daemon answers goes through it: the management API's error handler
(``api/errors.py``), the site's 413 for an oversized body (``http/site.py``) and the
``Invoker``'s replies on ``/r/`` (``runner/invoker.py``), whichever channel framed the
request, so the lean channel and twisted.web cannot drift apart. Bodies are
``{"error":{"message":"..."}}`` as the Go server returns them; an invocation's also
name its call (``{"request_id":id,"error":...}``, SPEC §4). A 503 says when to retry
(``Retry-After``).

An exception not in the map is a bug of ours: callers log it with its traceback and
answer ``internal_error()``, never showing the traceback to the client. Pure: no
Twisted, so the runner can use it.
"""

from __future__ import annotations

from ironfunctions import errors
from ironfunctions.http.jsonbody import dumps

Headers = list[tuple[bytes, bytes]]  # (lower-case name, value), in order
ErrorAnswer = tuple[int, Headers, bytes]  # status, headers, body

JSON = b"application/json"
ROUTE_NOT_FOUND = "Route not found on that application"  # /r/'s RouteNotFound (the Go server's words)
INTERNAL_ERROR = "Internal Server Error"
_RETRY_LATER = (429, 503)  # answers that say when to try again (Retry-After)

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
    (errors.QueueFull, 429),
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


def error_body(message: str, request_id: str | None = None) -> bytes:
    """``{"error":{"message":...}}``, after ``"request_id"`` when there is one."""
    if request_id is None:
        return dumps({"error": {"message": message}})
    return dumps({"request_id": request_id, "error": {"message": message}})


def error_answer(status: int, message: str, request_id: str | None = None, retry_after: int = 1,
                 headers: Headers | None = None) -> ErrorAnswer:
    """An error answer: JSON content type, and for a 503 or 429 ``Retry-After`` (seconds).
    Its headers follow ``headers`` (the caller's own, e.g. an invocation's call id),
    in that list."""
    if headers is None:
        headers = []
    headers.append((b"content-type", JSON))
    if status in _RETRY_LATER:
        headers.append((b"retry-after", b"%d" % retry_after))
    return status, headers, error_body(message, request_id)


def internal_error(request_id: str | None = None, headers: Headers | None = None) -> ErrorAnswer:
    """The answer to a bug of ours (after logging it): 500 with a generic message."""
    return error_answer(500, INTERNAL_ERROR, request_id, headers=headers)


def answer_for(exc: BaseException, call_id: str | None = None, headers: Headers | None = None) -> ErrorAnswer | None:
    """The answer to the domain exception ``exc``; None if it is not a client-facing
    one (a bug: log it and answer ``internal_error()``). Its headers follow
    ``headers``, as in ``error_answer``.

    With ``call_id``, the answer to an invocation (``/r/``, SPEC §4): its body names
    the call; an invalid route path is a 404 like a missing route (it cannot name
    one), and both read ``Route not found on that application``; a 401 asks for a
    Bearer token (``WWW-Authenticate``), as the route's ``jwt_key`` wants one.
    """
    status = status_for(exc)
    if status is None:
        return None
    if call_id is not None and isinstance(exc, (errors.RouteNotFound, errors.ValidationError)):
        return error_answer(404, ROUTE_NOT_FOUND, call_id, headers=headers)
    retry_after = getattr(exc, "retry_after", 1) if status in _RETRY_LATER else 1
    answer = error_answer(status, str(exc), call_id, retry_after, headers)
    if status == 401 and call_id is not None:
        answer[1].append((b"www-authenticate", b"Bearer"))
    return answer
