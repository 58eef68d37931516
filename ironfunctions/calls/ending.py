"""Where call records end (SPEC §8 "Data has an end"): what the call stores' methods
``delete_finished`` and ``cancel_unfinished`` select, as pure rules and SQL shared by
every provider.

A finished call (success, error, timeout, cancelled) ends at its ``completed_at``, or
its ``created_at`` for a record without one; it may be deleted, with its log, once that
is older than ``CALL_RETENTION`` (``calls/retention.py``), or when its app is deleted.
Queued and running calls are never deleted: they are cancelled first
(``cancel_unfinished``, when their app is deleted), and deleted once that is old.
"""

from __future__ import annotations

import attrs

from ironfunctions.calls.model import CallRecord
from ironfunctions.models import TERMINAL_STATUSES, CallStatus

FINISHED = tuple(sorted(TERMINAL_STATUSES))
UNFINISHED = (CallStatus.QUEUED, CallStatus.RUNNING)
ENDED_AT = "COALESCE(completed_at, created_at)"  # the expression the 0004 index covers


def ended_at(call: CallRecord) -> int:
    return call.created_at if call.completed_at is None else call.completed_at


def expired(call: CallRecord, before_ms: int, app_name: str | None) -> bool:
    """Whether ``delete_finished(before_ms, ..., app_name)`` deletes ``call`` (pure)."""
    return (
        call.status in TERMINAL_STATUSES
        and ended_at(call) < before_ms
        and (app_name is None or call.app_name == app_name)
    )


def cancelled_for(call: CallRecord, now_ms: int, reason: str) -> CallRecord:
    """``call`` (queued or running) cancelled for ``reason`` at ``now_ms`` (pure)."""
    return attrs.evolve(call, status=CallStatus.CANCELLED, reason=reason, completed_at=now_ms)


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"  # our own constants, never input


def expired_ids_sql(limit: int, placeholder: str, by_app: bool) -> str:
    """SELECT the ids of at most ``limit`` deletable calls; parameters: ``before_ms``,
    then ``app_name`` if ``by_app``."""
    app = f" AND app_name = {placeholder}" if by_app else ""
    return (
        f"SELECT id FROM calls WHERE {ENDED_AT} < {placeholder} AND status IN {_in(FINISHED)}{app}"
        f" LIMIT {int(limit)}"
    )


def unfinished_sql(placeholder: str) -> str:
    """SELECT id, status of an app's queued and running calls; parameter: ``app_name``."""
    return f"SELECT id, status FROM calls WHERE app_name = {placeholder} AND status IN {_in(UNFINISHED)}"


def cancel_unfinished_sql(placeholder: str) -> str:
    """Cancel an app's queued and running calls; parameters: reason, now_ms, app_name."""
    return (
        f"UPDATE calls SET status = '{CallStatus.CANCELLED}', reason = {placeholder},"
        f" completed_at = {placeholder} WHERE app_name = {placeholder} AND status IN {_in(UNFINISHED)}"
    )
