"""``ANY /r/{app}/{path}``: invoke a function (SPEC §4).

A plain ``twisted.web`` resource, not Klein: this is the hot path, so per-request work
is kept to parsing the path, one cached route lookup, the agent call and writing the
answer. Every response carries ``Fn-Call-Id`` and ``Server-Timing`` (wait, start, run
in ms); error bodies are ``{"request_id":id,"error":{"message":...}}``.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ironfunctions import errors
from ironfunctions.api.auth import bearer_token, verify_jwt
from ironfunctions.api.errors import status_for
from ironfunctions.api.schema import dumps
from ironfunctions.calls.model import CallRecord
from ironfunctions.models import CALL_SUCCESS, CALL_TIMEOUT, Call, CallRequest, CallResult, Route
from ironfunctions.paths import normalize_path
from ironfunctions.runner.records import failed_record, new_record, sync_record

RouteLookup = Callable[[str, str], Awaitable[Route]]
AppConfigLookup = Callable[[str], Awaitable[Mapping[str, str]]]
RunCall = Callable[[Call], Awaitable[CallResult]]
Submit = Callable[[Call], Awaitable[Any]]
Record = Callable[[CallRecord, "bytes | None"], None]

DEFAULT_CONTENT_TYPE = b"text/plain; charset=utf-8"
# Headers about one connection's framing (RFC 9110 §7.6.1) from a hot function's
# response: passing them on would corrupt ours (e.g. "Connection: close").
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "content-length",
})
ROUTE_NOT_FOUND = "Route not found on that application"

log = Logger()

def _status_for(exc: BaseException) -> int | None:
    """The one error map (``api/errors.py``), except that on ``/r/`` an invalid path
    is a 404: it cannot name a route."""
    if isinstance(exc, errors.ValidationError):
        return 404
    return status_for(exc)


def _server_timing(wait_ms: int, start_ms: int, run_ms: int) -> bytes:
    return b"wait;dur=%d, start;dur=%d, run;dur=%d" % (wait_ms, start_ms, run_ms)


class InvokeResource(Resource):
    """The ``/r`` resource (mounted as the ``r`` child of the root).

    :param lookup: ``await lookup(app, path)`` -> Route; raises ``AppNotFound`` /
        ``RouteNotFound`` (the cached ``RouteCache.lookup``).
    :param app_config: ``await app_config(app)`` -> the app's config.
    :param run_call: ``await run_call(call)`` -> CallResult (``Agent.run_call``).
    :param call_ids: makes a new call id (``runner.ids.CallIds``).
    :param submit: ``await submit(call)`` makes an async call durable
        (``AsyncSubmitter.submit``); without it async routes answer 503.
    :param record: ``record(call_record, stderr)`` keeps a sync call's record, written
        later off the request path (``CallRecorder.record``); None keeps none.
    :param clock: for the records' timestamps.
    """

    isLeaf = True

    def __init__(
        self,
        lookup: RouteLookup,
        app_config: AppConfigLookup,
        run_call: RunCall,
        call_ids: Callable[[], str],
        submit: Submit | None = None,
        record: Record | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._lookup = lookup
        self._app_config = app_config
        self._run_call = run_call
        self._call_ids = call_ids
        self._submit = submit
        self._record = record
        self._clock = clock
        self._paths: dict[bytes, str] = {}  # raw path -> normalised (pure, so cacheable)

    def render(self, request: IRequest) -> Any:
        call_id = self._call_ids()
        request.setHeader(b"fn-call-id", call_id.encode())
        d = Deferred.fromCoroutine(self._invoke(request, call_id))
        d.addErrback(self._failed, request, call_id)
        return NOT_DONE_YET

    async def _invoke(self, request: Any, call_id: str) -> None:
        # The raw (still percent-encoded) path, as the management API stores routes:
        # Twisted's postpath is already unquoted, which would turn %2F into a "/".
        app_raw, _, raw = request.path[3:].partition(b"/")  # after b"/r/"
        if not app_raw:
            raise errors.AppNotFound()
        app_name = unquote_to_bytes(app_raw).decode("utf-8", "replace")
        path = self._paths.get(raw)
        if path is None:
            path = normalize_path(b"/" + raw)
            if len(self._paths) >= 10_000:  # bounded: scans of random paths cannot grow it
                self._paths.clear()
            self._paths[raw] = path
        route = await self._lookup(app_name, path)
        if route.jwt_key:
            verify_jwt(bearer_token(request), route.jwt_key)
        app_config = await self._app_config(app_name)
        call = Call(call_id, route, _call_request(request), app_config)
        if route.type == "async":
            if self._submit is None:
                raise errors.QueueUnavailable("async calls are not enabled on this node")
            await self._submit(call)
            self._write_accepted(request, call_id)
            return
        created_ms = self._now_ms()
        try:
            result = await self._run_call(call)
        except errors.IronFunctionsError as e:
            if self._record is not None:
                self._record(failed_record(new_record(call_id, route, created_ms), str(e), self._now_ms()), None)
            raise
        if self._record is not None:
            self._record(sync_record(call_id, route, created_ms, result, self._now_ms()), result.stderr)
        if request._disconnected:
            return
        request.setHeader(b"server-timing", _server_timing(result.wait_ms, result.start_ms, result.run_ms))
        if result.status == CALL_SUCCESS:
            self._write_success(request, route, result)
        else:
            # 502 also for a call cancelled through the calls API: no answer came back.
            status = 504 if result.status == CALL_TIMEOUT else 502
            self._write_error(request, call_id, status, result.error)

    def _now_ms(self) -> int:
        return 0 if self._clock is None else int(self._clock.seconds() * 1000)

    def _write_accepted(self, request: Any, call_id: str) -> None:
        body = dumps({"call_id": call_id})
        request.setResponseCode(202)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.setHeader(b"server-timing", _server_timing(0, 0, 0))
        request.write(body)
        request.finish()

    def _write_success(self, request: Any, route: Route, result: CallResult) -> None:
        request.setResponseCode(result.status_code or 200)
        headers = request.responseHeaders
        for name, values in result.headers.items():
            if name.lower() not in _HOP_BY_HOP:  # framing is ours to set, not the function's
                headers.setRawHeaders(name, values)
        for name, values in route.headers.items():
            if values:
                headers.setRawHeaders(name, values)
        if not headers.hasHeader(b"content-type"):
            headers.setRawHeaders(b"content-type", [DEFAULT_CONTENT_TYPE])
        request.setHeader(b"content-length", b"%d" % len(result.body))
        request.write(result.body)
        request.finish()

    def _write_error(self, request: Any, call_id: str, status: int, message: str, **headers: str) -> None:
        body = dumps({"request_id": call_id, "error": {"message": message}})
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-").encode(), value.encode())
        request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: Any, call_id: str) -> None:
        if request._disconnected or request.finished:
            return
        exc = failure.value
        assert exc is not None
        status = _status_for(exc)
        extra: dict[str, str] = {}
        if status is None:
            log.failure("Invocation {call_id} failed", failure, call_id=call_id)
            status, message = 500, "Internal Server Error"
        else:
            message = str(exc)
            if isinstance(exc, errors.RouteNotFound):
                message = ROUTE_NOT_FOUND
            elif isinstance(exc, errors.ValidationError):
                message = ROUTE_NOT_FOUND
            elif isinstance(exc, errors.Unauthorized):
                extra["WWW_Authenticate"] = "Bearer"
            elif status == 503:
                extra["Retry_After"] = str(getattr(exc, "retry_after", 1))
        if not request.responseHeaders.hasHeader(b"server-timing"):
            request.setHeader(b"server-timing", _server_timing(0, 0, 0))
        self._write_error(request, call_id, status, message, **extra)


def _call_request(request: Any) -> CallRequest:
    """The parts of a twisted.web request the runner needs."""
    body = request.content.read() if request.content is not None else b""
    method = request.method.decode("ascii", "replace")
    if not body and method == "GET":
        payload = request.args.get(b"payload")
        if payload:
            body = payload[0]
    host = request.getHeader(b"host")
    if host is None:
        address = request.getHost()
        host = f"{address.host}:{address.port}".encode()
    scheme = "https" if request.isSecure() else "http"
    url = f"{scheme}://{host.decode('latin-1')}{request.uri.decode('latin-1')}"
    headers = {
        name.decode("latin-1"): [v.decode("latin-1") for v in values]
        for name, values in request.requestHeaders.getAllRawHeaders()
    }
    return CallRequest(method=method, url=url, headers=headers, body=body)
