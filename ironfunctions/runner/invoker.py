"""Invoking a function: an HTTP request to ``/r/{app}/{path}`` in, the answer out (SPEC §4).

``Invoker`` is the whole of it, independent of the HTTP server that parsed the request:
it takes an ``Invocation`` (method, raw path, headers, body...) and gives back a
``Reply`` (status, headers, body); it never raises. Two servers feed it: the lean
channel of ``ironfunctions.http.channel`` (the hot path: well-formed HTTP/1.1 requests
to ``/r/``) and ``api/invoke.py``'s ``InvokeResource``, a plain ``twisted.web``
resource, for everything the lean channel hands to twisted.web (chunked bodies,
``Expect``, HTTP/1.0, a connection that went to the management API first...). So this
module imports nothing of twisted.web.

Per request the work is parsing the path, one cached route lookup, the agent call and
building the answer. Every reply carries ``Fn-Call-Id`` and ``Server-Timing`` (wait,
start, run in ms); error bodies are ``{"request_id":id,"error":{"message":...}}``, from
the one error map (``ironfunctions.http.errors``).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import parse_qs

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ironfunctions import errors
from ironfunctions.calls.model import CallRecord
from ironfunctions.http.bearer import parse_bearer, verify_jwt
from ironfunctions.http.errors import JSON, answer_for, error_answer, internal_error
from ironfunctions.http.hosts import valid_host
from ironfunctions.http.jsonbody import dumps
from ironfunctions.http.proxies import TrustedProxies, forwarded
from ironfunctions.names import text_from_url
from ironfunctions.models import Call, CallRequest, CallResult, CallStatus, Route
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
# Headers the daemon sets on every answer: a function's or route's own would be a
# second, conflicting value.
_OURS = frozenset({"date", "server", "fn-call-id", "server-timing"})
_NOT_PASSED_ON = _HOP_BY_HOP | _OURS

log = Logger()


class Invocation:
    """One request to ``/r/``, as parsed by either server.

    ``path`` is the raw (still percent-encoded) path, ``/r/{app}{route path}``, and
    ``uri`` the raw request target (path and query); ``headers`` maps each header name,
    in Twisted's canonical capitalisation, to its values; ``host`` is the Host header as
    sent (None without one) and ``local`` the connection's local address as
    ``host:port`` (``http.hosts.authority``): the URL's host when ``host`` is missing or
    not a plain ``host[:port]``; ``peer`` the client's IP address (None on a UNIX
    socket), which decides whether its ``X-Forwarded-*`` headers are believed
    (``http/proxies.py``).
    """

    __slots__ = ("method", "path", "uri", "headers", "body", "host", "local", "secure", "peer")

    def __init__(self, method: str, path: bytes, uri: bytes, headers: dict[str, list[str]],
                 body: bytes, host: str | None, local: str, secure: bool = False,
                 peer: str | None = None) -> None:
        self.method = method
        self.path = path
        self.uri = uri
        self.headers = headers
        self.body = body
        self.host = host
        self.local = local
        self.secure = secure
        self.peer = peer


class Reply:
    """What to answer: status, header lines (lower-case names, one value each) and body."""

    __slots__ = ("code", "headers", "body")

    def __init__(self, code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body


def _server_timing(wait_ms: int, start_ms: int, run_ms: int) -> bytes:
    return b"wait;dur=%d, start;dur=%d, run;dur=%d" % (wait_ms, start_ms, run_ms)


_NO_TIMING = _server_timing(0, 0, 0)


class Invoker:
    """Runs invocations; see the module docstring.

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
    :param ready: false until the datastore has started: invocations answer 503.
    :param trusted_proxies: the peers whose ``X-Forwarded-*`` headers are believed
        (``TRUSTED_PROXIES``); from others they are dropped (``http/proxies.py``).
    """

    def __init__(
        self,
        lookup: RouteLookup,
        app_config: AppConfigLookup,
        run_call: RunCall,
        call_ids: Callable[[], str],
        submit: Submit | None = None,
        record: Record | None = None,
        clock: IReactorTime | None = None,
        ready: Callable[[], bool] = lambda: True,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self._lookup = lookup
        self._app_config = app_config
        self._run_call = run_call
        self._call_ids = call_ids
        self._submit = submit
        self._record = record
        self._clock = clock
        self._ready = ready
        self._proxies = trusted_proxies if trusted_proxies is not None else TrustedProxies()
        self._paths: dict[bytes, str] = {}  # raw path -> normalised (pure, so cacheable)
        self._hosts: dict[str, bool] = {}  # Host header -> valid_host (pure, so cacheable)

    async def invoke(self, invocation: Invocation) -> Reply:
        """The reply to ``invocation``; errors become error replies."""
        call_id = self._call_ids()
        try:
            return await self._invoke(invocation, call_id)
        except Exception as e:
            return self._error_reply(e, call_id)

    async def _invoke(self, invocation: Invocation, call_id: str) -> Reply:
        if not self._ready():
            raise errors.NotReady()
        # The raw (still percent-encoded) path, as the management API stores routes:
        # an unquoted one would turn %2F into a "/".
        app_raw, _, raw = invocation.path[3:].partition(b"/")  # after b"/r/"
        if not app_raw:
            raise errors.AppNotFound()
        try:
            app_name = text_from_url(app_raw)
        except errors.ValidationError:  # NUL or not UTF-8: no app has such a name
            raise errors.AppNotFound() from None
        path = self._paths.get(raw)
        if path is None:
            path = normalize_path(b"/" + raw)
            if len(self._paths) >= 10_000:  # bounded: scans of random paths cannot grow it
                self._paths.clear()
            self._paths[raw] = path
        route = await self._lookup(app_name, path)
        if route.jwt_key:
            authorization = invocation.headers.get("Authorization")
            verify_jwt(parse_bearer(authorization[-1] if authorization else None), route.jwt_key)
        app_config = await self._app_config(app_name)
        scheme, host, headers = forwarded(self._proxies, invocation.peer, invocation.headers, self._valid_host)
        if scheme is None:
            scheme = "https" if invocation.secure else "http"
        if host is None:
            host = self._host(invocation)
        request = _call_request(invocation, scheme, host, headers, bool(route.jwt_key))
        call = Call(call_id, route, request, app_config)
        if route.type == "async":
            if self._submit is None:
                raise errors.QueueUnavailable("async calls are not enabled on this node")
            await self._submit(call)
            return Reply(202, [(b"fn-call-id", call_id.encode()), (b"server-timing", _NO_TIMING),
                               (b"content-type", JSON)], dumps({"call_id": call_id}))
        created_ms = self._now_ms()
        try:
            result = await self._run_call(call)
        except errors.IronFunctionsError as e:
            if self._record is not None:
                self._record(failed_record(new_record(call_id, route, created_ms), str(e), self._now_ms()), None)
            raise
        if self._record is not None:
            self._record(sync_record(call_id, route, created_ms, result, self._now_ms()), result.stderr)
        timing = _server_timing(result.wait_ms, result.start_ms, result.run_ms)
        if result.status == CallStatus.SUCCESS:
            return _success(call_id, timing, route, result)
        # 502 also for a call cancelled through the calls API: no answer came back.
        status = 504 if result.status == CallStatus.TIMEOUT else 502
        return _error(call_id, timing, status, result.error)

    def _host(self, invocation: Invocation) -> str:
        """The host of the URL the function sees: the Host header if it is a plain
        ``host[:port]``, else the local address (``http/hosts.py``)."""
        host = invocation.host
        if host is None:
            return invocation.local
        return host if self._valid_host(host) else invocation.local

    def _valid_host(self, host: str) -> bool:
        """``hosts.valid_host``, cached (a proxy sends the same few hosts)."""
        valid = self._hosts.get(host)
        if valid is None:
            valid = valid_host(host)
            if len(self._hosts) >= 1_000:  # bounded: forged hosts cannot grow it
                self._hosts.clear()
            self._hosts[host] = valid
        return valid

    def _now_ms(self) -> int:
        return 0 if self._clock is None else int(self._clock.seconds() * 1000)

    def _error_reply(self, exc: Exception, call_id: str) -> Reply:
        ours = [(b"fn-call-id", call_id.encode()), (b"server-timing", _NO_TIMING)]
        answer = answer_for(exc, call_id, ours)
        if answer is None:
            log.failure("Invocation {call_id} failed", Failure(), call_id=call_id)
            answer = internal_error(call_id, ours)
        return Reply(*answer)


def _success(call_id: str, timing: bytes, route: Route, result: CallResult) -> Reply:
    """The function's answer: its status and headers, the route's headers over them, a
    default Content-Type; never framing headers or those the daemon sets itself."""
    # The function's values are its bytes as read (latin-1 round-trips them); a route's
    # come from JSON and may hold any character: UTF-8, as twisted.web encodes them.
    chosen: dict[str, tuple[str, list[str], str]] = {}
    for name, values in result.headers.items():
        lower = name.lower()
        if lower not in _NOT_PASSED_ON:
            chosen[lower] = (name, values, "latin-1")
    for name, values in route.headers.items():
        lower = name.lower()
        if values and lower not in _NOT_PASSED_ON:
            chosen[lower] = (name, values, "utf-8")
    headers = [(b"fn-call-id", call_id.encode()), (b"server-timing", timing)]
    for name, values, encoding in chosen.values():
        raw = name.encode("latin-1")
        headers.extend((raw, v.encode(encoding)) for v in values)
    if "content-type" not in chosen:
        headers.append((b"content-type", DEFAULT_CONTENT_TYPE))
    return Reply(result.status_code or 200, headers, result.body)


def _error(call_id: str, timing: bytes, status: int, message: str) -> Reply:
    """A call that ran but gave no answer (502, 504): ``message`` says why."""
    return Reply(*error_answer(status, message, call_id, headers=[(b"fn-call-id", call_id.encode()),
                                                                (b"server-timing", timing)]))


def passed_on(headers: dict[str, list[str]], drop_authorization: bool) -> dict[str, list[str]]:
    """The request headers a function gets (SPEC §3 Auth, §4; issue 11): none whose
    name holds ``_`` (dropped, as nginx does: ``X_User`` would become the same
    ``HEADER_X_USER`` as ``X-User`` and override what a front proxy set), and no
    ``Authorization`` when the route's ``jwt_key`` consumed it (the caller's token is
    not the function's, nor stored with an async call)."""
    # One scan of the joined names, not one test per header, in the common case.
    if not drop_authorization and "_" not in "".join(headers):
        return headers
    return {name: values for name, values in headers.items()
            if "_" not in name and not (drop_authorization and name.lower() == "authorization")}


def _call_request(invocation: Invocation, scheme: str, host: str, headers: dict[str, list[str]],
                  drop_authorization: bool) -> CallRequest:
    """The parts of the request the runner needs (``headers``, already filtered of
    forwarding headers by ``http/proxies.py``, as ``passed_on``; the URL from ``scheme``,
    ``host`` and the request's own target); a GET without body passes the ``payload``
    query parameter as the body."""
    body = invocation.body
    method = invocation.method
    if not body and method == "GET":
        query = invocation.uri.partition(b"?")[2]
        if query:
            payload = parse_qs(query, keep_blank_values=True).get(b"payload")
            if payload:
                body = payload[0]
    url = f"{scheme}://{host}{invocation.uri.decode('latin-1')}"
    return CallRequest(method=method, url=url, headers=passed_on(headers, drop_authorization), body=body)
