"""The call record (SPEC §3 Calls) and list queries over it (pure values)."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any, Callable

import attrs

from ironfunctions.errors import CallCompleted
from ironfunctions.models import TERMINAL_STATUSES, CallStatus

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 50
LOG_CAP = 1024 * 1024
LOG_TRUNCATED_MARKER = b"\n[ironfunctions: log truncated at 1 MiB]\n"


@attrs.frozen
class CallRecord:
    """One invocation. Times are integer milliseconds since the epoch (UTC), or None."""

    id: str
    app_name: str
    path: str
    image: str = ""
    type: str = "sync"
    format: str = "default"
    status: CallStatus = CallStatus.QUEUED
    reason: str = ""
    created_at: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    attempt: int = 1
    exit_code: int | None = None
    error: str = ""
    wait_ms: int | None = None
    start_ms: int | None = None
    run_ms: int | None = None
    body: bytes | None = None
    priority: int = 0
    # Deliveries of an async call whose node died mid-call (SPEC §10: 3 end it, node_lost).
    lost: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@attrs.frozen
class CallQuery:
    """``GET /v1/apps/{app}/calls`` filters. ``from_ms``/``to_ms`` bound ``created_at``
    (inclusive); ``after`` is the decoded cursor: (created_at, id) of the last call of
    the previous page, newest first."""

    app_name: str
    path: str | None = None
    status: CallStatus | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    after: tuple[int, str] | None = None
    per_page: int = DEFAULT_PER_PAGE


@attrs.frozen
class CallPage:
    calls: list[CallRecord]
    next_cursor: str | None


def encode_cursor(call: CallRecord) -> str:
    """An opaque, URL-safe cursor pointing after ``call``."""
    raw = f"{call.created_at}:{call.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (created_at, id) inside a cursor. Raise ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, call_id = raw.partition(":")
        if not call_id:
            raise ValueError("bad cursor")
        return int(created), call_id
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ValueError("bad cursor") from e


def sort_key(call: CallRecord) -> tuple[int, str]:
    """Newest first is descending order of this key."""
    return (call.created_at, call.id)


def page_of(calls: list[CallRecord], query: CallQuery) -> CallPage:
    """Filter, order (newest first) and cut one page from ``calls`` (pure; used by the
    memory store, and the rule the SQL stores follow)."""
    selected = sorted(
        (c for c in calls if matches(c, query)), key=sort_key, reverse=True
    )
    page = selected[: query.per_page]
    more = len(selected) > query.per_page
    return CallPage(page, encode_cursor(page[-1]) if more and page else None)


def matches(call: CallRecord, query: CallQuery) -> bool:
    return (
        call.app_name == query.app_name
        and (query.path is None or call.path == query.path)
        and (query.status is None or call.status == query.status)
        and (query.from_ms is None or call.created_at >= query.from_ms)
        and (query.to_ms is None or call.created_at <= query.to_ms)
        and (query.after is None or sort_key(call) < query.after)
    )


def cap_log(log: bytes, cap: int = LOG_CAP) -> bytes:
    """A call's log, cut at ``cap`` bytes with an explicit marker."""
    if len(log) <= cap:
        return log
    return log[:cap] + LOG_TRUNCATED_MARKER


def rfc3339(ms: int | None) -> str | None:
    """Milliseconds since the epoch as RFC 3339 UTC with milliseconds."""
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def call_json(call: CallRecord) -> dict[str, Any]:
    """A call on the wire (SPEC §3 field order); ``body`` only for async calls."""
    out: dict[str, Any] = {
        "id": call.id,
        "app_name": call.app_name,
        "path": call.path,
        "image": call.image,
        "type": call.type,
        "format": call.format,
        "status": call.status,
        "reason": call.reason,
        "created_at": rfc3339(call.created_at),
        "started_at": rfc3339(call.started_at),
        "completed_at": rfc3339(call.completed_at),
        "attempt": call.attempt,
        "exit_code": call.exit_code,
        "error": call.error,
        "wait_ms": call.wait_ms,
        "start_ms": call.start_ms,
        "run_ms": call.run_ms,
    }
    if call.type == "async":
        out["body"] = None if call.body is None else call.body.decode("utf-8", "replace")
    return out


def cancelled(now_ms: int) -> Callable[[CallRecord], CallRecord]:
    """The change that cancels a queued or running call (pure); a finished call refuses."""

    def change(call: CallRecord) -> CallRecord:
        if call.terminal:
            raise CallCompleted(f"Call already completed (status {call.status})")
        return attrs.evolve(call, status=CallStatus.CANCELLED, reason="client_request", completed_at=now_ms)

    return change
