"""Parsing a hot function's answers (the ``http`` format, SPEC §4).

Responses are parsed by ``ResponseParser``: llhttp (Node.js's HTTP parser, in C, through
``httptools``), one parser per container reused from call to call. llhttp checks the
syntax strictly (header names are tokens, no control characters in values, no obs-fold
continuation lines, a single ``Content-Length``) but takes bare ``"\\n"`` line ends, as
the Twisted parser this replaced did. On top of it the parser insists on what a hot
function owes: a ``Content-Length`` (without one, or with ``Transfer-Encoding``, llhttp
would read the body to end of stream: a hang), a body of at most ``max_size`` bytes,
``HTTP/1.0`` or ``HTTP/1.1``. Interim 1xx responses are skipped (101, which would switch
the stream to another protocol, is an error); 204 and 304 answers have no body, as for
any HTTP client. Anything that is not exactly one response with a ``Content-Length``
per request is a ``ProtocolError``: the container is out of step and must not serve
another call.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Final, Mapping

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from ironfunctions.http.headers import canonical_name


class ProtocolError(Exception):
    """The function's output is not a well-formed response to the call it was given."""


class OversizedResponse(ProtocolError):
    """The function announced a body larger than ``MAX_RESPONSE_SIZE``."""


Done = Callable[[int, Mapping[str, list[str]], bytes, bytes], None]

# The status line and headers of one answer, interim responses included, are bounded
# as well as its body: llhttp itself would buffer a header of any length.
MAX_HEAD_SIZE = 65536

# What every answer starts with: a function that writes anything else fails at once.
_START: Final = b"HTTP/1."

# Framing and hop-by-hop headers (Twisted's ``HTTPParser.CONNECTION_CONTROL_HEADERS``):
# they describe the container's stdout, not the answer, and are not passed on.
_FRAMING: Final = frozenset({"Content-Length", "Connection", "Keep-Alive", "TE", "Trailers",
                             "Transfer-Encoding", "Upgrade", "Proxy-Connection"})

_NAMES_CACHED = 256


def _llhttp(callbacks: object) -> HttpResponseParser:
    """A response parser calling ``callbacks``' ``on_*`` methods (those it has).

    Two leniencies: bare ``"\\n"`` line ends, which the Twisted parser before it took
    (a shell function's ``printf "...\\n"``); and an ``HTTP/1.0`` or ``Connection:
    close`` answer does not end the stream, since the container serves the next call
    all the same. (llhttp's "dangerous" leniencies guard against request smuggling
    between a proxy and a server that frame a message differently; here llhttp is
    the only reader of the container's output.)"""
    parser = HttpResponseParser(callbacks)
    parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True, lenient_keep_alive=True)
    return parser


def _newline_run(data: bytes) -> int:
    """How many CR and LF bytes end ``data``."""
    tail = data[-16:]
    run = len(tail) - len(tail.rstrip(b"\r\n"))
    if run == len(tail) < len(data):
        run = len(data) - len(data.rstrip(b"\r\n"))
    return run


def _messages_in(stream: bytes) -> int:
    """How many complete messages llhttp finds in ``stream`` (before any error)."""
    done: list[None] = []
    try:
        _llhttp(SimpleNamespace(on_message_complete=lambda: done.append(None))).feed_data(stream)
    except (HttpParserError, HttpParserUpgrade):
        pass
    return len(done)


class ResponseParser:
    """Parses the responses of one container, one per ``expect()``.

    ``on_response(code, headers, body, rest)`` is called once a response is complete
    (``headers`` without the framing ones: Content-Length, Connection, ..., names in
    Twisted's canonical case: ``Fn-Call-Id``); ``rest`` holds bytes that followed it in
    the same read (a well-behaved function writes none). Parse errors raise
    ``ProtocolError`` out of ``feed``, as does any output while no call is in flight.
    ``max_size`` bounds the announced body length (``OversizedResponse``).

    One llhttp parser serves every call: between two answers it rests at a message
    boundary. After an error it is replaced at the next ``expect()``, though its
    container is killed anyway.
    """

    def __init__(self, max_size: int, on_response: Done) -> None:
        self._max_size = max_size
        self._on_response = on_response
        self._callbacks = SimpleNamespace(
            on_message_begin=self._message_begin,
            on_header=self._header,
            on_headers_complete=self._headers_complete,
            on_body=self._body_part,
            on_message_complete=self._message_complete,
        )
        self._llhttp = _llhttp(self._callbacks)
        self._names: dict[bytes, str] = {}
        self._broken = False
        self._waiting = False
        self._start = b""  # what the answer must still start with
        self._messages = 0  # complete since expect(): interim ones, then the answer
        self._answer = False  # the answer's headers are in (not an interim response's)
        self._complete = False  # ... and so is its body
        self._extra = False  # output followed the answer in the same read
        self._head_size = 0
        self._reads: list[bytes] = []  # since expect(), until the answer's headers are in
        self._remaining = 0  # body bytes still to come, once the head has been read
        self._code = 0
        self._length: int | None = None
        self._chunked = False
        self._headers: dict[str, list[str]] = {}
        self._body: list[bytes] = []

    def expect(self) -> None:
        """Ready the parser for the next response."""
        if self._broken or self._waiting:  # after an error, or a response left unfinished
            self._llhttp = _llhttp(self._callbacks)
            self._broken = False
        self._waiting = True
        self._start = _START
        self._messages = 0
        self._answer = self._complete = self._extra = False
        self._head_size = 0
        self._reads = []
        self._remaining = 0
        self._body = []

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raise ``ProtocolError`` if it cannot be (part of) the
        expected response."""
        if not self._waiting:
            raise ProtocolError("output while no call is in flight")
        expected = self._start
        if expected:
            # Fail at once on output that cannot start a response, rather than
            # waiting for a line end that may never come.
            head = data[: len(expected)]
            if not expected.startswith(head):
                raise ProtocolError("output is not an HTTP response")
            self._start = expected[len(head):]
        remaining = self._remaining
        if remaining:
            # In the answer's body: what lies past its end is cut off here, so llhttp
            # sees only this answer and waits at a message boundary for the next.
            rest = b""
            if len(data) > remaining:
                data, rest = data[:remaining], data[remaining:]
            self._remaining = remaining - len(data)
            self._execute(data)
            if self._complete:
                self._finish(self._take_body(), rest)
            return
        self._reads.append(data)
        self._execute(data)
        if self._complete:
            body = self._take_body()
            self._finish(body, self._rest(data, body))
        elif self._answer:
            length = self._length
            assert length is not None
            self._remaining = length - sum(map(len, self._body))
            self._reads = []
        else:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD_SIZE:
                self._broken = True
                raise ProtocolError("response head too large")

    def _execute(self, data: bytes) -> None:
        """Run llhttp over ``data``, its errors as ``ProtocolError``; output after a
        complete answer only sets ``_extra``."""
        try:
            self._llhttp.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as e:
            self._broken = True
            if self._complete:
                self._extra = True
                return
            cause = e.__context__  # what a callback raised (httptools chains it)
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(f"malformed response ({e})") from None

    def _take_body(self) -> bytes:
        parts = self._body
        self._body = []
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _rest(self, data: bytes, body: bytes) -> bytes:
        """The bytes of ``data``, the read that completed the answer (its head
        included), that followed the answer.

        llhttp does not tell where in a read a message ended. Output after the answer
        other than CR and LF begins another message, which ``_message_begin``
        refuses. CR and LF bytes llhttp skips silently: they are counted from the end
        of ``data``, which is ``...<head>\\r\\n\\r\\n<body><CR/LF>``."""
        if self._extra:
            return data[self._answer_end():]
        last = data[-1:]
        if last != b"\n" and last != b"\r":
            return b""
        run = _newline_run(data)
        body_run = _newline_run(body)
        if body_run < len(body):
            end = len(data) - (run - body_run)
        elif run < len(data):
            # The body is CR/LF or empty, so the run begins with the head's last two
            # line ends: "\r\n" or (lenient) "\n" each.
            end = len(data) - run
            for _ in range(2):
                end += 2 if data[end] == 0x0D else 1
            end += len(body)
        else:  # nothing but line ends: the head's last ones began in an earlier read
            end = self._answer_end()
        return data[end:]

    def _answer_end(self) -> int:
        """Where the answer ends in the last read: a binary search with fresh llhttp
        parsers over the reads since ``expect()``. Only for the reads that held bytes
        after a complete answer (which kill the container)."""
        *earlier, last = self._reads
        before = b"".join(earlier)
        low, high = 0, len(last)
        while low < high:
            middle = (low + high) // 2
            if _messages_in(before + last[:middle]) >= self._messages:
                high = middle
            else:
                low = middle + 1
        return low

    def _finish(self, body: bytes, rest: bytes) -> None:
        self._waiting = False
        self._reads = []
        headers = self._headers
        self._headers = {}
        self._on_response(self._code, headers, body, rest)

    # -- llhttp callbacks

    def _message_begin(self) -> None:
        if self._complete:
            raise ProtocolError("more than one response to a request")
        self._headers = {}
        self._length = None
        self._chunked = False

    def _header(self, name: bytes, value: bytes) -> None:
        key = self._names.get(name)
        if key is None:
            canonical = canonical_name(name)  # llhttp has checked it is a token
            key = (canonical or name).decode("latin-1")
            if len(self._names) < _NAMES_CACHED:
                self._names[name] = key
        if key in _FRAMING:
            if key == "Content-Length":  # llhttp checked it: digits, and only one
                self._length = int(value)
            elif key == "Transfer-Encoding":
                self._chunked = True
            return
        text = value.rstrip(b" \t").decode("latin-1")  # llhttp strips leading whitespace only
        values = self._headers.get(key)
        if values is None:
            self._headers[key] = [text]
        else:
            values.append(text)

    def _headers_complete(self) -> None:
        llhttp = self._llhttp
        code = llhttp.get_status_code()
        # The first message's version is checked by feed(); one after an interim here.
        if self._messages and llhttp.get_http_version() not in ("1.0", "1.1"):
            raise ProtocolError("output is not an HTTP response")
        if self._chunked:
            raise ProtocolError("response with Transfer-Encoding (Content-Length required)")
        length = self._length
        if code < 200:
            if code < 100:
                raise ProtocolError("malformed status code")
            if code == 101:  # llhttp would read what follows as another protocol
                raise ProtocolError("101 Switching Protocols in answer to a call")
            if length:
                raise ProtocolError("interim response with a body")
            return  # an interim response: the answer follows
        if length is None:
            raise ProtocolError("response without Content-Length")
        if length > self._max_size:
            raise OversizedResponse("Function response too large")
        self._code = code
        self._answer = True

    def _body_part(self, data: bytes) -> None:
        self._body.append(data)

    def _message_complete(self) -> None:
        self._messages += 1
        self._complete = self._answer
