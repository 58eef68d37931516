"""The ``http`` format of hot functions (SPEC §4): HTTP/1.1 over stdin/stdout.

The daemon writes one request per call to the container's stdin; the function writes
back one response with a ``Content-Length``. As IronFunctions did, the request's
headers carry the call's environment in Go's canonical header form (``METHOD`` →
``Method``, ``REQUEST_URL`` → ``Request_url``, ``HEADER_CONTENT_TYPE`` →
``Header_content_type``, config keys likewise), plus ``Fn-Call-Id``, ``Task-Id`` and
``Content-Length``. What is the same for every call of a route (app and route config,
``APP_NAME``, ``ROUTE``...) is also the container's environment and is encoded once
per container (``RequestEncoder``); per call only the call's own values are added.

Responses are parsed by ``ResponseParser``, an incremental parser on Twisted's
``HTTPParser`` (the line receiver under Twisted's HTTP client): status line, header
lines with continuations, ``Content-Length`` checked as Twisted's client checks it
(duplicates must agree). Anything that is not exactly one response with a
``Content-Length`` per request is a ``ProtocolError``: the container is out of step and
must not serve another call.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

from twisted.web._newclient import HTTPParser, _contentLength

from ironfunctions.models import LABEL_APP, LABEL_KIND, LABEL_NODE, LABEL_PATH, Call, ContainerSpec, Route
from ironfunctions.runner.plan import route_env

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class ProtocolError(Exception):
    """The function's output is not a well-formed response to the call it was given."""


class OversizedResponse(ProtocolError):
    """The function announced a body larger than ``MAX_RESPONSE_SIZE``."""


def canonical(name: str) -> str:
    """Go's canonical form of an environment-style header name: ``Request_url``."""
    return name[:1].upper() + name[1:].lower()


def _header_line(name: str, value: str) -> bytes:
    """``Name: value\\r\\n``; empty for a name that cannot be a header; CR/LF in a
    value (config is verbatim) become spaces so no value can inject a header."""
    raw_name = canonical(name).encode("latin-1", "replace")
    if not _TOKEN.match(raw_name):
        return b""
    raw_value = value.encode("utf-8").replace(b"\r", b" ").replace(b"\n", b" ")
    return raw_name + b": " + raw_value + b"\r\n"


def hot_container_spec(
    route: Route,
    app_config: Mapping[str, str],
    node_id: str,
    network_mode: str = "bridge",
) -> ContainerSpec:
    """The long-lived container of ``route``: its image, memory and route-level
    environment, labelled with the node, app, path and kind ``hot``."""
    return ContainerSpec(
        image=route.image,
        env=route_env(route, app_config),
        memory_mb=route.memory,
        labels={LABEL_NODE: node_id, LABEL_APP: route.app_name, LABEL_PATH: route.path, LABEL_KIND: "hot"},
        timeout_s=float(route.timeout),
        network_mode=network_mode,
    )


class RequestEncoder:
    """Encodes calls of one route (and app config) as HTTP/1.1 requests."""

    def __init__(self, route: Route, app_config: Mapping[str, str]) -> None:
        self._fixed = b"".join(_header_line(k, v) for k, v in route_env(route, app_config).items())

    def encode(self, call: Call) -> bytes:
        """The request for ``call``: its method and URL path in the request line (a
        HEAD is sent as GET: the function's answer must carry the body), then the
        headers, then the body."""
        request = call.request
        method = request.method
        url = request.url
        # The URL is built by the invoke resource as scheme://host/path?query.
        slash = url.find("/", url.find("//") + 2)
        target = url[slash:] if slash >= 0 else "/"
        parts = [
            b"%s %s HTTP/1.1\r\n" % ((b"GET" if method == "HEAD" else method.encode("latin-1")),
                                     target.encode("latin-1", "replace")),
            self._fixed,
            b"Method: %s\r\nRequest_url: %s\r\nCall_id: %s\r\nFn-Call-Id: %s\r\nTask-Id: %s\r\n"
            % (method.encode("latin-1"), url.encode("latin-1", "replace"),
               call.id.encode(), call.id.encode(), call.id.encode()),
        ]
        for name, values in request.headers.items():
            parts.append(_header_line("HEADER_" + name.replace("-", "_"), ", ".join(values)))
        for name, value in request.params.items():
            parts.append(_header_line("PARAM_" + name.replace("-", "_"), value))
        body = request.body
        parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
        parts.append(body)
        return b"".join(parts)


Done = Callable[[int, Mapping[str, list[str]], bytes, bytes], None]


class ResponseParser(HTTPParser):
    """Parses the responses of one container, one per ``expect()``.

    ``on_response(code, headers, body, rest)`` is called once a response is complete
    (``headers`` without the framing ones: Content-Length, Connection, ...);
    ``rest`` holds bytes that followed it in the same read (a well-behaved function
    writes none). Parse errors raise ``ProtocolError`` out of ``feed``.
    ``max_size`` bounds the announced body length (``OversizedResponse``).
    """

    # Twisted's parser accepts bare "\n" line ends as well as "\r\n".
    MAX_LENGTH = 65536

    def __init__(self, max_size: int, on_response: Done) -> None:
        self._max_size = max_size
        self._on_response = on_response
        self._waiting = False
        self._prefix_seen = 5
        self._code = 0
        self._remaining = 0
        self._body: list[bytes] = []

    def expect(self) -> None:
        """Ready the parser for the next response."""
        self.connectionMade()  # type: ignore[no-untyped-call]  # fresh header stores, state STATUS
        self.setLineMode()
        self._body = []
        self._waiting = True
        self._prefix_seen = 0  # bytes of b"HTTP/" seen so far

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raise ``ProtocolError`` if it cannot be (part of) the
        expected response."""
        if not self._waiting:
            raise ProtocolError("output while no call is in flight")
        seen = self._prefix_seen
        if seen < 5:
            # Fail at once on output that cannot start a response, rather than
            # waiting for a line end that may never come.
            head = data[: 5 - seen]
            if head != b"HTTP/"[seen: seen + len(head)]:
                raise ProtocolError("output is not an HTTP response")
            self._prefix_seen = seen + len(head)
        try:
            self.dataReceived(data)  # type: ignore[no-untyped-call]
        except ProtocolError:
            raise
        except Exception:  # Twisted's line parsing (e.g. a header line without ":")
            raise ProtocolError("malformed response") from None

    # -- HTTPParser

    def statusReceived(self, status: bytes) -> None:
        parts = status.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError("malformed status line")
        try:
            code = int(parts[1])
        except ValueError:
            raise ProtocolError("malformed status line") from None
        if not 100 <= code <= 999:
            raise ProtocolError("malformed status code")
        self._code = code

    def headerReceived(self, name: bytes, value: bytes) -> None:
        if not _TOKEN.match(name):
            raise ProtocolError("malformed header")
        super().headerReceived(name, value)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        if 100 <= self._code < 200:  # an interim response: the real one follows
            self.connectionMade()  # type: ignore[no-untyped-call]
            return
        if self.connHeaders.hasHeader(b"transfer-encoding"):
            raise ProtocolError("response with Transfer-Encoding (Content-Length required)")
        try:
            length = _contentLength(self.connHeaders)
        except ValueError:
            raise ProtocolError("malformed Content-Length") from None
        if length is None:
            raise ProtocolError("response without Content-Length")
        if length > self._max_size:
            raise OversizedResponse("Function response too large")
        self.state = "BODY"
        self.setRawMode()  # type: ignore[no-untyped-call]
        self._remaining = length
        if length == 0:
            self._finish(self.clearLineBuffer())  # type: ignore[no-untyped-call]

    def rawDataReceived(self, data: bytes) -> None:
        remaining = self._remaining
        if len(data) < remaining:
            self._body.append(data)
            self._remaining = remaining - len(data)
            return
        self._body.append(data[:remaining] if len(data) > remaining else data)
        self._remaining = 0
        self._finish(data[remaining:])

    def lineLengthExceeded(self, line: bytes) -> None:
        raise ProtocolError("response header line too long")

    def _finish(self, rest: bytes) -> None:
        self._waiting = False
        self.paused = True  # anything after the response stays unparsed
        headers = {
            name.decode("latin-1"): [v.decode("latin-1") for v in values]
            for name, values in self.headers.getAllRawHeaders()
        }
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body = []
        self.clearLineBuffer()  # type: ignore[no-untyped-call]
        self._on_response(self._code, headers, body, rest)

    def setLineMode(self, extra: bytes = b"") -> None:
        self.paused = False
        self.line_mode = 1
