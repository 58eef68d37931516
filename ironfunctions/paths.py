"""Route paths in one normalised form, used both to store routes and to look them up.

A path is treated as the percent-encoded path of a URL. Normalising it:
- requires a leading ``/``; collapses repeated ``/``; drops a trailing ``/``;
- decodes every ``%XX`` (it must be valid percent-encoding of UTF-8) and re-encodes the
  segment canonically, so ``/hello%20world``, ``/hello world`` and ``/hello%2520``'s
  decoded forms compare as a URL would (``%2F`` stays a ``/`` inside its segment);
- rejects ``.`` and ``..`` segments, ``:`` (IronFunctions' old ``:param`` syntax is not
  supported), control characters, and a path with no segment at all (``/``, ``//``).
Every rejection is ``ValidationError("Invalid Path format")``.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from ironfunctions.errors import ValidationError

INVALID_PATH = "Invalid Path format"

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# What stays literal in a canonical segment: RFC 3986 pchar minus ':' (rejected anyway).
_SAFE = "!$&'()*+,;=@-._~"


def _decode_segment(raw: bytes) -> str:
    if b"%" in _ESCAPE.sub(b"", raw):
        raise ValidationError(INVALID_PATH)
    decoded = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(INVALID_PATH) from None
    if text in (".", "..") or ":" in text or not text.isprintable():
        raise ValidationError(INVALID_PATH)
    return text


def normalize_path(path: str | bytes) -> str:
    """The normalised form of a route path. Raise ``ValidationError`` if invalid."""
    if isinstance(path, str):
        try:
            raw = path.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(INVALID_PATH) from None
    else:
        raw = path
    if not raw.startswith(b"/"):
        raise ValidationError(INVALID_PATH)
    segments = [_decode_segment(s) for s in raw.split(b"/") if s]
    if not segments:
        raise ValidationError(INVALID_PATH)
    return "/" + "/".join(quote(s, safe=_SAFE) for s in segments)
