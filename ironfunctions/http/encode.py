"""The lean channel's answers as bytes: ``encode_reply`` and the Date header's value
(``HttpDate``), byte for byte as twisted.web writes them (``http/channel.py``)."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import NO_BODY_CODES, RESPONSES, datetimeToString
from twisted.web.server import version as SERVER_VERSION

from ironfunctions.http.headers import canonical_name
from ironfunctions.runner.invoker import Reply

_FRAMING = frozenset({b"Content-Length", b"Transfer-Encoding", b"Connection", b"Date", b"Server"})


class HttpDate:
    """The Date header's value at ``clock``'s time, formatted once a second."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(self._clock.seconds())
        if now != self._second:
            self._second, self._value = now, datetimeToString(now)
        return self._value


def encode_reply(reply: Reply, date: bytes, head_only: bool, close: bool) -> bytes:
    """The HTTP/1.1 response for ``reply``: header names capitalised as Twisted does,
    values with CR/LF replaced (no header can be injected), ``Content-Length``, and
    no body for a HEAD request or a 204/304 (as twisted.web does)."""
    body = reply.body
    lines = [b"HTTP/1.1 %d %s\r\n" % (reply.code, RESPONSES.get(reply.code, b"Unknown Status"))]
    for name, value in reply.headers:
        canonical = canonical_name(name)
        if canonical is None or canonical in _FRAMING:  # framing is ours alone
            continue
        if b"\r" in value or b"\n" in value:
            value = value.replace(b"\r", b" ").replace(b"\n", b" ")
        lines.append(b"%s: %s\r\n" % (canonical, value))
    lines.append(b"Content-Length: %d\r\nServer: %s\r\nDate: %s\r\n%s\r\n" % (
        len(body), SERVER_VERSION, date, b"Connection: close\r\n" if close else b""))
    if not head_only and reply.code not in NO_BODY_CODES:
        lines.append(body)
    return b"".join(lines)
