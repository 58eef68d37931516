"""The bytes between a node's worker processes and its parent (``WORKERS``, SPEC §2).

A frame is a 4-byte big-endian length and a ``marshal``-ed tuple whose first item is
the message kind. ``marshal`` handles only built-in types, is the fastest codec in
the standard library, and both ends run the same interpreter (the parent starts its
workers from its own executable), so its version-specific format is no concern.

Requests carry a sequence number the answer repeats: ``(kind, seq, *args)`` and
``(ANSWER, seq, value)`` or ``(FAILED, seq, error name, message, retry_after)``.
Pure: encoding and decoding only; ``workers/link.py`` moves the frames.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any, Iterator, Mapping

from ironfunctions import errors
from ironfunctions.models import CallRequest, CallResult, CallStatus, Route

_LENGTH = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # above MAX_REQUEST_SIZE/MAX_RESPONSE_SIZE's largest sensible values

ANSWER = "a"
FAILED = "f"
NOTICE_SEQ = 0  # a message that wants no answer

# Errors a call may end with that travel as themselves (anything else arrives as
# ``WorkerLinkError`` with its text: a bug on the other side, not a client's mistake).
_ERRORS: dict[str, type[errors.IronFunctionsError]] = {
    cls.__name__: cls
    for cls in (errors.NotReady, errors.Overloaded, errors.RouteMoved, errors.DockerUnavailable,
                errors.ImageNotFound, errors.ResponseTooLarge, errors.ContainerNotFound, errors.ValidationError)
}


class WorkerLinkError(Exception):
    """The other end failed in a way that has no domain error (or the link is gone)."""


class FrameTooLarge(Exception):
    """A frame announced more than ``MAX_FRAME`` bytes: the link is corrupt."""


def frame(message: tuple[Any, ...]) -> bytes:
    payload = marshal.dumps(message)
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into messages (tuples)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[Any, ...]]:
        buffer = self._buffer + data if self._buffer else data
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= 4:
                (length,) = _LENGTH.unpack_from(buffer, offset)
                if length > MAX_FRAME:
                    raise FrameTooLarge(length)
                if end - offset - 4 < length:
                    break
                start = offset + 4
                offset = start + length
                yield marshal.loads(buffer[start:offset])
        finally:
            self._buffer = buffer[offset:]


# -- errors


def error_fields(error: BaseException) -> tuple[str, str, int]:
    """(name, message, retry_after) of an error raised on one side."""
    name = type(error).__name__
    if name not in _ERRORS:
        return ("", f"{name}: {error}", 0)
    return (name, str(error), int(getattr(error, "retry_after", 0) or 0))


def rebuild_error(name: str, message: str, retry_after: int) -> Exception:
    """The exception ``error_fields`` described, as the other side's own class."""
    cls = _ERRORS.get(name)
    if cls is None:
        return WorkerLinkError(message)
    if issubclass(cls, errors.Overloaded):
        return cls(message, retry_after=retry_after or 1)
    error = cls.__new__(cls)
    errors.IronFunctionsError.__init__(error, message)
    if cls is errors.ImageNotFound:
        error.image = message.removeprefix("Image not found: ")  # type: ignore[attr-defined]
    return error


# -- calls and results

_ROUTE_FIELDS = ("app_name", "path", "image", "memory", "headers", "type", "format", "max_concurrency",
                 "timeout", "idle_timeout", "config", "jwt_key")


def _plain(value: Any) -> Any:
    """A frozen mapping of the models as a dict marshal takes (lists stay lists)."""
    if isinstance(value, Mapping):
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in value.items()}
    return value


def route_tuple(route: Route, app_config: Mapping[str, str]) -> tuple[Any, ...]:
    return (tuple(_plain(getattr(route, name)) for name in _ROUTE_FIELDS), dict(app_config))


def route_from_tuple(fields: tuple[Any, ...]) -> tuple[Route, Mapping[str, str]]:
    values, app_config = fields
    return Route(**dict(zip(_ROUTE_FIELDS, values))), app_config


def request_tuple(request: CallRequest) -> tuple[Any, ...]:
    return (request.method, request.url, _plain(request.headers), request.body, dict(request.params))


def request_from_tuple(fields: tuple[Any, ...]) -> CallRequest:
    method, url, headers, body, params = fields
    return CallRequest(method, url, headers, body, params)


def result_tuple(result: CallResult) -> tuple[Any, ...]:
    return (result.call_id, str(result.status), result.body, result.stderr, result.error, result.exit_code,
            result.status_code, _plain(result.headers), result.wait_ms, result.start_ms, result.run_ms,
            result.stderr_lost_bytes, result.stderr_lost_lines)


def result_from_tuple(fields: tuple[Any, ...]) -> CallResult:
    (call_id, status, body, stderr, error, exit_code, status_code, headers, wait_ms, start_ms, run_ms,
     lost_bytes, lost_lines) = fields
    return CallResult(call_id, CallStatus(status), body=body, stderr=stderr, error=error, exit_code=exit_code,
                      status_code=status_code, headers=headers, wait_ms=wait_ms, start_ms=start_ms,
                      run_ms=run_ms, stderr_lost_bytes=lost_bytes, stderr_lost_lines=lost_lines)

