"""Row <-> CallRecord conversion and query building shared by the SQL call stores (pure).

``placeholder`` is ``?`` for SQLite and ``%s`` for psycopg2.
"""

from __future__ import annotations

from typing import Any, Sequence

from ironfunctions.calls.model import CallRecord, CallQuery
from ironfunctions.models import CallStatus

CALL_COLUMNS = (
    "id, app_name, path, image, type, format, status, reason, created_at, started_at, "
    "completed_at, attempt, exit_code, error, wait_ms, start_ms, run_ms, body, priority, lost"
)
N_COLUMNS = 20


def call_params(call: CallRecord) -> tuple[Any, ...]:
    return (
        call.id, call.app_name, call.path, call.image, call.type, call.format, call.status,
        call.reason, call.created_at, call.started_at, call.completed_at, call.attempt,
        call.exit_code, call.error, call.wait_ms, call.start_ms, call.run_ms, call.body,
        call.priority, call.lost,
    )


def call_from_row(row: Sequence[Any]) -> CallRecord:
    body = row[17]
    return CallRecord(
        id=row[0], app_name=row[1], path=row[2], image=row[3], type=row[4], format=row[5],
        status=CallStatus(row[6]), reason=row[7], created_at=int(row[8]), started_at=row[9],
        completed_at=row[10], attempt=int(row[11]), exit_code=row[12], error=row[13],
        wait_ms=row[14], start_ms=row[15], run_ms=row[16],
        body=None if body is None else bytes(body), priority=int(row[18]), lost=int(row[19]),
    )


def list_sql(query: CallQuery, placeholder: str) -> tuple[str, list[Any]]:
    """SELECT for one page plus one row (to know whether there is a next page)."""
    where = [f"app_name = {placeholder}"]
    params: list[Any] = [query.app_name]
    if query.path is not None:
        where.append(f"path = {placeholder}")
        params.append(query.path)
    if query.status is not None:
        where.append(f"status = {placeholder}")
        params.append(query.status)
    if query.from_ms is not None:
        where.append(f"created_at >= {placeholder}")
        params.append(query.from_ms)
    if query.to_ms is not None:
        where.append(f"created_at <= {placeholder}")
        params.append(query.to_ms)
    if query.after is not None:
        where.append(
            f"(created_at < {placeholder} OR (created_at = {placeholder} AND id < {placeholder}))"
        )
        params.extend([query.after[0], query.after[0], query.after[1]])
    sql = (
        f"SELECT {CALL_COLUMNS} FROM calls WHERE {' AND '.join(where)} "
        f"ORDER BY created_at DESC, id DESC LIMIT {int(query.per_page) + 1}"
    )
    return sql, params


UNFINISHED = "status IN ('queued', 'running')"  # as the partial index calls_unfinished says


def unfinished_sql(before_ms: int, after: tuple[int, str] | None, limit: int,
                   placeholder: str) -> tuple[str, list[Any]]:
    """SELECT queued or running calls of every app created before ``before_ms``, oldest
    first by (created_at, id), after the key ``after``."""
    where = [UNFINISHED, f"created_at < {placeholder}"]
    params: list[Any] = [before_ms]
    if after is not None:
        where.append(
            f"(created_at > {placeholder} OR (created_at = {placeholder} AND id > {placeholder}))"
        )
        params.extend([after[0], after[0], after[1]])
    sql = (
        f"SELECT {CALL_COLUMNS} FROM calls WHERE {' AND '.join(where)} "
        f"ORDER BY created_at, id LIMIT {int(limit)}"
    )
    return sql, params
