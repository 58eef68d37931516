"""Call records from invocations and results (pure), and the async payload codec.

An async call's request travels in its queue item's payload, so any node's worker can
run it: ``request_payload`` / ``request_from_payload`` round-trip a ``CallRequest``.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import attrs

from ironfunctions.calls.model import CallRecord
from ironfunctions.models import CallRequest, CallResult, CallStatus, Route

# Machine-usable reasons of the statuses a call ends in, as IronFunctions' Task model
# named them.
_REASON = {
    CallStatus.SUCCESS: "", CallStatus.TIMEOUT: "timeout", CallStatus.CANCELLED: "client_request",
    CallStatus.ERROR: "bad_exit",
}


def _ended(result: CallResult) -> CallStatus:
    """The status a result ends its call in (one that does not end a call is an error)."""
    return result.status if result.status in _REASON else CallStatus.ERROR


def new_record(
    call_id: str, route: Route, created_ms: int, status: CallStatus = CallStatus.QUEUED
) -> CallRecord:
    """The record of a call that was just accepted."""
    return CallRecord(
        id=call_id, app_name=route.app_name, path=route.path, image=route.image,
        type=route.type, format=route.format, status=status, created_at=created_ms,
    )


def finished_record(record: CallRecord, result: CallResult, now_ms: int, keep_body: bool) -> CallRecord:
    """``record`` updated with how its call ended. ``keep_body``: store the output
    (async calls; sync callers already got it)."""
    status = _ended(result)
    return attrs.evolve(
        record,
        status=status,
        reason=_REASON[status],
        started_at=now_ms - result.run_ms,
        completed_at=now_ms,
        exit_code=result.exit_code,
        error=result.error,
        wait_ms=result.wait_ms,
        start_ms=result.start_ms,
        run_ms=result.run_ms,
        body=result.body if keep_body and status == CallStatus.SUCCESS else record.body,
    )


def sync_record(call_id: str, route: Route, created_ms: int, result: CallResult, now_ms: int) -> CallRecord:
    """The record of a finished sync call, built in one go (it is on the request path:
    ``finished_record(new_record(...))`` gives the same value for twice the work).
    CallRecord's fields by position: a third cheaper than by keyword."""
    status = _ended(result)
    run_ms = result.run_ms
    return CallRecord(
        call_id, route.app_name, route.path, route.image, route.type, route.format, status, _REASON[status],
        created_ms, now_ms - run_ms, now_ms, 1, result.exit_code, result.error, result.wait_ms, result.start_ms,
        run_ms,
    )


def running_sync_record(call_id: str, route: Route, created_ms: int) -> CallRecord:
    """The record of a sync call still running (written for calls that run long, so
    they can be listed and cancelled; the finished record replaces it)."""
    return CallRecord(
        id=call_id, app_name=route.app_name, path=route.path, image=route.image,
        type=route.type, format=route.format, status=CallStatus.RUNNING, created_at=created_ms,
    )


def failed_record(record: CallRecord, error: str, now_ms: int, reason: str = "killed") -> CallRecord:
    """``record`` of a call that could not run at all (image missing, engine down...)."""
    return attrs.evolve(record, status=CallStatus.ERROR, reason=reason, error=error, completed_at=now_ms)


def route_deleted_record(record: CallRecord, error: str, now_ms: int) -> CallRecord:
    """``record`` of a call whose app or route was deleted before it ran (SPEC §10)."""
    return attrs.evolve(record, status=CallStatus.CANCELLED, reason="route_deleted", error=error,
                        completed_at=now_ms)


def running_record(record: CallRecord, attempt: int, now_ms: int) -> CallRecord:
    return attrs.evolve(record, status=CallStatus.RUNNING, attempt=attempt, started_at=now_ms,
                        wait_ms=max(0, now_ms - record.created_at))


def request_payload(request: CallRequest) -> dict[str, Any]:
    """A JSON-able form of ``request`` for a queue item."""
    return {
        "method": request.method,
        "url": request.url,
        "headers": {k: list(v) for k, v in request.headers.items()},
        "body": base64.b64encode(request.body).decode("ascii"),
        "params": dict(request.params),
    }


def request_from_payload(payload: Mapping[str, Any]) -> CallRequest:
    """Inverse of ``request_payload``. Raise ValueError/KeyError for a foreign payload."""
    return CallRequest(
        method=str(payload["method"]),
        url=str(payload["url"]),
        headers={str(k): [str(x) for x in v] for k, v in dict(payload.get("headers") or {}).items()},
        body=base64.b64decode(payload.get("body") or ""),
        params=dict(payload.get("params") or {}),
    )
