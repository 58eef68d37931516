"""HTTP header names as Twisted spells them (``content-type`` -> ``Content-Type``,
``etag`` -> ``ETag``): the form the API's replies and a hot function's parsed headers
use, whichever parser read them."""

from __future__ import annotations

import re

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a header name
# Twisted's exceptions to Word-Word (``twisted.web.http_headers._NameEncoder``).
_CASE = {
    b"Content-Md5": b"Content-MD5", b"Dnt": b"DNT", b"Etag": b"ETag", b"P3p": b"P3P", b"Te": b"TE",
    b"Www-Authenticate": b"WWW-Authenticate", b"X-Xss-Protection": b"X-XSS-Protection",
}
_MAX_NAMES = 10_000

_names: dict[bytes, bytes | None] = {}  # header name as sent -> canonical (None: invalid)


def canonical_name(name: bytes) -> bytes | None:
    """``content-type`` -> ``Content-Type`` as Twisted writes it; None if ``name`` is
    not a token (cannot be a header name)."""
    try:
        return _names[name]
    except KeyError:
        pass
    result: bytes | None = None
    if TOKEN.fullmatch(name):
        result = b"-".join([word.capitalize() for word in name.split(b"-")])
        result = _CASE.get(result, result)
    if len(_names) < _MAX_NAMES:  # an attacker's random names cannot grow it
        _names[name] = result
    return result
