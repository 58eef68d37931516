"""Call records in the Postgres database the datastore keeps its apps and routes in,
on the same pool (``storage.postgres.PostgresDatabase``, opened by the datastore)."""

from __future__ import annotations

import json
from typing import Any, Mapping

from zope.interface import implementer

from ironfunctions.calls import sql
from ironfunctions.calls.interface import CallChange, ICallStore
from ironfunctions.calls.model import CallRecord, CallPage, CallQuery, encode_cursor
from ironfunctions.errors import CallNotFound
from ironfunctions.storage.postgres import PostgresDatabase

_COLUMNS = [c.strip() for c in sql.CALL_COLUMNS.split(",")]
_UPDATE = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[1:])
_ROW = "(" + ", ".join(["%s"] * sql.N_COLUMNS) + ")"
_SELECT = f"SELECT {sql.CALL_COLUMNS} FROM calls WHERE id = %s AND app_name = %s"


def _upsert(n_rows: int) -> str:
    """Insert or replace ``n_rows`` calls (by id) in one statement."""
    rows = ", ".join([_ROW] * n_rows)
    return f"INSERT INTO calls ({sql.CALL_COLUMNS}) VALUES {rows} ON CONFLICT (id) DO UPDATE SET {_UPDATE}"


@implementer(ICallStore)
class PostgresCallStore:
    """Shares the datastore's database: its pool, deadlines and error mapping."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    async def put_calls(self, calls: list[CallRecord]) -> None:
        # One statement cannot touch a row twice: keep the last record of each id.
        latest = list({call.id: call for call in calls}.values())
        if latest:
            params = [p for call in latest for p in sql.call_params(call)]
            await self._db.query(_upsert(len(latest)) + " RETURNING id", params)

    async def get_call(self, app_name: str, call_id: str) -> CallRecord:
        rows = await self._db.query(_SELECT, (call_id, app_name))
        if not rows:
            raise CallNotFound()
        return sql.call_from_row(rows[0])

    async def list_calls(self, query: CallQuery) -> CallPage:
        statement, params = sql.list_sql(query, "%s")
        calls = [sql.call_from_row(r) for r in await self._db.query(statement, params)]
        more = len(calls) > query.per_page
        calls = calls[: query.per_page]
        return CallPage(calls, encode_cursor(calls[-1]) if more and calls else None)

    async def update_call(self, app_name: str, call_id: str, change: CallChange) -> CallRecord:
        async def update(cur: Any) -> CallRecord:
            await cur.execute(_SELECT + " FOR UPDATE", (call_id, app_name))
            row = cur.fetchone()
            if row is None:
                raise CallNotFound()
            new = change(sql.call_from_row(row))
            await cur.execute(_upsert(1), sql.call_params(new))
            if new.terminal:
                await cur.execute("DELETE FROM call_requests WHERE id = %s", (call_id,))
            return new

        new: CallRecord = await self._db.transaction(update)
        return new

    async def put_async(self, record: CallRecord, request: Mapping[str, Any]) -> None:
        text = json.dumps(dict(request))

        async def put(cur: Any) -> None:
            await cur.execute(_upsert(1), sql.call_params(record))
            await cur.execute(
                "INSERT INTO call_requests (id, app_name, request) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET app_name = EXCLUDED.app_name, request = EXCLUDED.request",
                (record.id, record.app_name, text),
            )

        await self._db.transaction(put)

    async def get_request(self, app_name: str, call_id: str) -> dict[str, Any]:
        rows = await self._db.query(
            "SELECT request FROM call_requests WHERE id = %s AND app_name = %s", (call_id, app_name)
        )
        if not rows:
            raise CallNotFound()
        request: dict[str, Any] = json.loads(rows[0][0])
        return request

    async def list_unfinished(
        self, before_ms: int, after: tuple[int, str] | None = None, limit: int = 100,
    ) -> list[CallRecord]:
        statement, params = sql.unfinished_sql(before_ms, after, limit, "%s")
        return [sql.call_from_row(r) for r in await self._db.query(statement, params)]

    async def try_lead(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take or keep the lease ``name`` for ``owner`` for ``ttl_ms`` (the server's
        clock); False while another owner's lease lasts. See ``runner/reconciler.py``."""
        rows = await self._db.query(
            "INSERT INTO leader_leases (name, owner, expires_at) VALUES (%s, %s, "
            " (extract(epoch from clock_timestamp()) * 1000)::bigint + %s) "
            "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at "
            " WHERE leader_leases.owner = EXCLUDED.owner"
            "  OR leader_leases.expires_at < (extract(epoch from clock_timestamp()) * 1000)::bigint "
            "RETURNING owner",
            (name, owner, int(ttl_ms)),
        )
        return bool(rows)

    async def put_log(self, app_name: str, call_id: str, log: bytes) -> None:
        await self._db.query(
            "INSERT INTO call_logs (id, app_name, log) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET app_name = EXCLUDED.app_name, log = EXCLUDED.log "
            "RETURNING id",
            (call_id, app_name, bytes(log)),
        )

    async def get_log(self, app_name: str, call_id: str) -> bytes:
        rows = await self._db.query(
            "SELECT l.log FROM calls c LEFT JOIN call_logs l ON l.id = c.id"
            " WHERE c.id = %s AND c.app_name = %s",
            (call_id, app_name),
        )
        if not rows:
            raise CallNotFound()
        return b"" if rows[0][0] is None else bytes(rows[0][0])

    async def delete_call(self, app_name: str, call_id: str) -> bool:
        async def delete(cur: Any) -> bool:
            await cur.execute("DELETE FROM calls WHERE id = %s AND app_name = %s RETURNING id", (call_id, app_name))
            if cur.fetchone() is None:
                return False
            await cur.execute("DELETE FROM call_logs WHERE id = %s", (call_id,))
            await cur.execute("DELETE FROM call_requests WHERE id = %s", (call_id,))
            return True

        found: bool = await self._db.transaction(delete)
        return found
