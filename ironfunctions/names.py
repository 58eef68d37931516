"""Names every datastore can hold (SPEC §8 "Bad names", issue 11 item 8).

App names, route paths and call ids arrive percent-encoded in URLs (``/r/{app}/...``,
``/v1/apps/{app}/...``) or as JSON strings (``DELETE /tasks``). A NUL byte or bytes
that are not UTF-8 cannot be a name anywhere: Postgres refuses NUL in text
(psycopg2: "A string literal cannot contain NUL (0x00) characters") and every
database refuses a lone surrogate, which is what JSON's ``"\\udc80"`` gives. Such input
is the client's mistake, so it is rejected where it comes in, with one rule for all
(``text_from_url``, ``check_storable``): ``ValidationError``, a 400. The databases
translate it too (``storage/``), in case a caller forgets.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from ironfunctions.errors import ValidationError

INVALID_NAME = "Invalid characters: names cannot hold NUL or invalid UTF-8"


def storable(text: str) -> bool:
    """Whether every datastore can hold ``text``: no NUL, and valid Unicode (no lone
    surrogates, so it encodes as UTF-8)."""
    if "\0" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_storable(text: str, message: str = INVALID_NAME) -> str:
    """``text`` if ``storable``; else raise ``ValidationError(message)``."""
    if not storable(text):
        raise ValidationError(message)
    return text


def text_from_url(raw: bytes, message: str = INVALID_NAME) -> str:
    """A percent-encoded URL part (a path segment, or a whole path) as text. Raise
    ``ValidationError(message)`` if, decoded, it holds NUL or is not UTF-8."""
    decoded = unquote_to_bytes(raw) if b"%" in raw else raw
    if b"\0" in decoded:
        raise ValidationError(message)
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(message) from None
