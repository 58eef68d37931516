"""Unit tests of the ``http`` format of hot functions (``runner/protocol.py``): the
request a call becomes, and ``ResponseParser`` over every way a function's answer can
arrive or go wrong."""

from __future__ import annotations

from typing import Mapping

import pytest

from ironfunctions.models import Call, CallRequest, Route
from ironfunctions.runner.protocol import RequestEncoder
from ironfunctions.runner.response import MAX_HEAD_SIZE, OversizedResponse, ProtocolError, ResponseParser

Got = tuple[int, Mapping[str, list[str]], bytes, bytes]

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def parse(*reads: bytes, max_size: int = 100) -> list[Got]:
    """The responses one parser reports for one ``expect()`` fed ``reads``."""
    got: list[Got] = []
    parser = ResponseParser(max_size, lambda *a: got.append(a))
    parser.expect()
    for read in reads:
        parser.feed(read)
    return got


def splits(raw: bytes) -> list[tuple[bytes, ...]]:
    """``raw`` whole, cut in two at every offset, and one byte per read."""
    return [(raw,)] + [(raw[:cut], raw[cut:]) for cut in range(1, len(raw))] + [
        tuple(raw[i:i + 1] for i in range(len(raw)))]


def test_request_carries_the_environment_as_canonical_headers() -> None:
    route = Route("a", "/p", "img", format="http", config={"db-url": "x\r\nEvil: 1"})
    call = Call("CID", route, CallRequest("PUT", "http://h:1/r/a/p?q=1", {"X-Thing": ["1", "2"]}, b"body"),
                {"app key": "skipped"})
    raw = RequestEncoder(route, call.app_config).encode(call)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"PUT /r/a/p?q=1 HTTP/1.1" and body == b"body"
    for line in [b"Method: PUT", b"Request_url: http://h:1/r/a/p?q=1", b"Route: /p", b"App_name: a",
                 b"Db_url: x  Evil: 1", b"Header_x_thing: 1, 2", b"Fn-Call-Id: CID", b"Task-Id: CID",
                 b"Content-Length: 4"]:
        assert line in lines, line
    assert not any(line.startswith(b"App key") for line in lines)


def test_a_header_named_with_an_underscore_is_not_encoded() -> None:
    """Defence in depth behind the invoker (e.g. a call queued before it dropped them):
    ``X_User`` would be sent as ``Header_x_user`` as ``X-User`` is."""
    route = Route("a", "/p", "img", format="http")
    call = Call("CID", route, CallRequest("GET", "http://h/r/a/p", {"X-User": ["alice"], "X_User": ["mallory"]}))
    lines = RequestEncoder(route, {}).encode(call).split(b"\r\n\r\n")[0].split(b"\r\n")
    assert [line for line in lines if line.lower().startswith(b"header_x_user")] == [b"Header_x_user: alice"]


def test_a_jwt_routes_authorization_is_not_encoded() -> None:
    """Defence in depth behind the invoker (a call queued before it dropped it)."""
    headers = {"Authorization": ["Bearer t"], "X-A": ["1"]}
    for route, sent in [(Route("a", "/p", "img", format="http", jwt_key="k" * 32), False),
                        (Route("a", "/p", "img", format="http"), True)]:
        raw = RequestEncoder(route, {}).encode(Call("CID", route, CallRequest("GET", "http://h/r/a/p", headers)))
        assert (b"Header_authorization: Bearer t" in raw) is sent and b"Header_x_a: 1" in raw


# -- well-formed answers


@pytest.mark.parametrize("raw, expected", [
    (b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
     (201, {"X-A": ["1", "2"]}, b"hello")),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", (204, {}, b"")),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\r\n\r\n", (200, {}, b"\r\n\r\n")),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", (200, {}, b"abc")),
    (b"HTTP/1.0 200 OK\nX-Bare: lf\nContent-Length: 3\n\nabc", (200, {"X-Bare": ["lf"]}, b"abc")),
], ids=["headers-repeated", "empty-body", "body-of-crlfs", "interim-100", "http10-bare-lf"])
def test_an_answer_split_at_any_offset_parses_the_same(raw: bytes, expected: tuple[object, ...]) -> None:
    for reads in splits(raw):
        assert parse(*reads) == [(*expected, b"")], reads


def test_header_names_come_in_twisteds_canonical_case_with_values_trimmed() -> None:
    raw = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nfn-call-id: C1\r\nETAG: \"x\"\r\n"
           b"x-a:   spaced  \r\nX-A:b\r\nx-latin: caf\xe9\r\nContent-Length: 0\r\n\r\n")
    [(code, headers, body, rest)] = parse(raw)
    assert headers == {"Content-Type": ["text/plain"], "Fn-Call-Id": ["C1"], "ETag": ['"x"'],
                       "X-A": ["spaced", "b"], "X-Latin": ["caf\xe9"]}


def test_framing_and_hop_by_hop_headers_are_not_passed_on() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTrailers: x\r\n"
           b"Upgrade: h2c\r\nProxy-Connection: close\r\nTE: trailers\r\nContent-Length: 2\r\nX-Kept: 1\r\n\r\nhi")
    assert parse(raw) == [(200, {"X-Kept": ["1"]}, b"hi", b"")]


def test_interim_responses_are_skipped_with_their_headers() -> None:
    raw = (b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
           b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok")
    for reads in splits(raw):
        assert parse(*reads) == [(200, {"X-Final": ["1"]}, b"ok", b"")], reads


def test_a_body_as_large_as_max_size_is_fine() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    assert parse(raw[:50], raw[50:], max_size=100) == [(200, {}, b"x" * 100, b"")]


def test_one_parser_serves_call_after_call_whatever_the_answers_connection_says() -> None:
    got: list[Got] = []
    parser = ResponseParser(100, lambda *a: got.append(a))
    answers = [OK, b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na",
               b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nb",
               b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"] * 50
    for i, answer in enumerate(answers):
        parser.expect()
        cut = i % len(answer)
        for read in (answer[:cut], answer[cut:]):
            if read:
                parser.feed(read)
    assert [(code, body, rest) for code, _, body, rest in got] == [
        (200, b"hello", b""), (200, b"a", b""), (200, b"b", b""), (202, b"", b"")] * 50


def test_the_next_call_can_be_sent_from_within_on_response() -> None:
    """The pool hands a container on (``expect()``) while its answer is reported."""
    got: list[bytes] = []

    def on_response(code: int, headers: Mapping[str, list[str]], body: bytes, rest: bytes) -> None:
        got.append(body)
        parser.expect()

    parser = ResponseParser(100, on_response)
    parser.expect()
    parser.feed(OK)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert got == [b"hello", b"hi"]


# -- bytes after the answer


ANSWERS = [  # (answer, its body)
    (OK, b"hello"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nline\r\n", b"line\r\n"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\n\n", b"\n\n"),
    (b"HTTP/1.1 200 OK\nContent-Length: 1\n\n\r", b"\r"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n", b""),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"\n" * 20, b"\n" * 20),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes", b"yes"),
]
EXTRAS = [b"x", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"more\r\n", OK, b"HTTP/1.1 200 OK\r\n"]


@pytest.mark.parametrize("answer, body", ANSWERS)
@pytest.mark.parametrize("extra", EXTRAS)
def test_bytes_after_the_answer_in_the_same_read_are_reported_exactly_as_rest(
        answer: bytes, body: bytes, extra: bytes) -> None:
    """A stray newline too: a function writes exactly one answer per request."""
    for cut in range(len(answer)):  # the answer's last read also holds the extra bytes
        reads = (answer[:cut], answer[cut:] + extra) if cut else (answer + extra,)
        got = parse(*reads)
        assert [(b, r) for _, _, b, r in got] == [(body, extra)], reads


def test_output_while_no_call_is_in_flight_is_an_error() -> None:
    parser = ResponseParser(100, lambda *a: None)
    with pytest.raises(ProtocolError, match="no call is in flight"):
        parser.feed(OK)
    parser.expect()
    parser.feed(OK)
    for late in [b"\n", b"x", OK]:
        with pytest.raises(ProtocolError, match="no call is in flight"):
            parser.feed(late)


# -- broken answers


@pytest.mark.parametrize("reads", [(b"x",), (b"{",), (b"\r",), (b"\n",), (b" ",), (b"h",), (b"HT", b"TPS/1.1")])
def test_output_that_cannot_start_an_answer_fails_at_once(reads: tuple[bytes, ...]) -> None:
    """No waiting for a line end that may never come."""
    with pytest.raises(ProtocolError, match="not an HTTP response"):
        parse(*reads)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\n\r\n",
])
def test_an_answer_without_content_length_fails_once_its_head_is_in(raw: bytes) -> None:
    """It would otherwise be read until the container exits: a hang."""
    with pytest.raises(ProtocolError, match="without Content-Length"):
        parse(raw)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_an_answer_with_transfer_encoding_fails_once_its_head_is_in(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
])
def test_a_bad_or_conflicting_content_length_is_an_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


def test_an_announced_body_over_max_size_fails_before_it_is_read() -> None:
    with pytest.raises(OversizedResponse):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", max_size=100)
    with pytest.raises(OversizedResponse):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999\r\n\r\n", max_size=100)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 abc OK\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n: empty name\r\nContent-Length: 0\r\n\r\n",
])
def test_a_malformed_head_is_an_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


# -- what llhttp refuses, or reads differently, from the Twisted parser before it


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi",
])
def test_a_repeated_content_length_is_an_error_even_when_the_values_agree(raw: bytes) -> None:
    """llhttp takes one Content-Length only (RFC 9110 §8.6 lets a recipient reject
    duplicates or merge them; Twisted merged agreeing ones)."""
    with pytest.raises(ProtocolError):
        parse(raw)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",  # obs-fold
    b"HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Cr: a\rb\r\nContent-Length: 0\r\n\r\n",
])
def test_folded_header_lines_and_control_characters_are_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(raw)


@pytest.mark.parametrize("reads", [
    (b"HTTP/2",), (b"HTTP/0.9 200 OK\r\n",), (b"HTTP/1.2 200 OK\r\n",),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",),
])
def test_only_http_1_0_and_1_1_answers_are_taken(reads: tuple[bytes, ...]) -> None:
    with pytest.raises(ProtocolError):
        parse(*reads)


@pytest.mark.parametrize("raw, message", [
    (b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", "malformed status code"),
    (b"HTTP/1.1 1000 OK\r\nContent-Length: 0\r\n\r\n", "malformed response"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", "101 Switching"),
    (b"HTTP/1.1 150 Odd\r\nContent-Length: 3\r\n\r\nabc", "interim response with a body"),
])
def test_status_codes_that_cannot_answer_a_call_are_errors(raw: bytes, message: str) -> None:
    """101 would switch the rest of the stream to another protocol: the daemon never
    asks for that. An interim response carries no body."""
    with pytest.raises(ProtocolError, match=message):
        parse(raw)


def test_204_and_304_answers_have_no_body_whatever_their_content_length() -> None:
    """As any HTTP client reads them (RFC 9112 §6.3): bytes after the head are extra."""
    assert parse(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n") == [(304, {}, b"", b"")]
    assert parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello") == [(204, {}, b"", b"hello")]


def test_a_head_over_max_head_size_is_an_error_however_it_is_cut() -> None:
    """llhttp would buffer a header of any length."""
    fine = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_SIZE - 100) + b"\r\nContent-Length: 0\r\n\r\n"
    assert parse(fine[:1000], fine[1000:])[0][1]["X-Big"] == ["a" * (MAX_HEAD_SIZE - 100)]
    endless = [b"HTTP/1.1 200 OK\r\n"] + [b"X-H: %s\r\n" % (b"v" * 1000)] * 100
    with pytest.raises(ProtocolError, match="head too large"):
        parse(*endless)
    with pytest.raises(ProtocolError, match="head too large"):
        parse(b"HTTP/1.1 200 OK\r\nX-Long: ", *[b"w" * 4096] * 20)


def test_after_a_protocol_error_the_next_expect_starts_afresh() -> None:
    """The container is killed on the error; the parser would recover regardless."""
    got: list[Got] = []
    parser = ResponseParser(100, lambda *a: got.append(a))
    for bad in [b"HTTP/1.1 200 OK\r\nno colon\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naEXTRA"]:
        parser.expect()
        try:
            parser.feed(bad)
        except ProtocolError:
            pass
        parser.expect()
        parser.feed(OK)
    assert [(body, rest) for _, _, body, rest in got] == [(b"hello", b""), (b"hello", b""), (b"a", b"EXTRA"),
                                                          (b"hello", b"")]
