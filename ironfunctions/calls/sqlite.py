"""Call records in a SQLite file, on its database's thread.

The ``SqliteDatabase`` is the one the SQLite datastore opens and closes
(``datastore.sqlite.sqlite_database``): one connection, one thread, so call writes and
route writes never interleave.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Mapping

from zope.interface import implementer

from ironfunctions.calls import sql
from ironfunctions.calls.interface import CallChange, ICallStore
from ironfunctions.calls.model import CallRecord, CallPage, CallQuery, encode_cursor
from ironfunctions.errors import CallNotFound
from ironfunctions.storage.sqlite import SqliteDatabase, transaction

_ROW = f"({', '.join('?' * sql.N_COLUMNS)})"
# Many rows per statement, not ``executemany``: the sqlite3 module gives up and takes
# back the GIL around every step, and each take-back waits on the busy reactor thread
# (up to the 5 ms switch interval) and then stalls it; with one row a step, a batch of
# records cost the daemon about a sixth of its hot-call throughput. A few fixed sizes
# keep the connection's statement cache small.
_CHUNKS = (256, 64, 16, 4, 1)
_UPSERTS = {
    rows: f"INSERT OR REPLACE INTO calls ({sql.CALL_COLUMNS}) VALUES {', '.join([_ROW] * rows)}"
    for rows in _CHUNKS
}
_UPSERT = _UPSERTS[1]


def _get(c: sqlite3.Connection, app_name: str, call_id: str) -> CallRecord:
    row = c.execute(
        f"SELECT {sql.CALL_COLUMNS} FROM calls WHERE id = ? AND app_name = ?", (call_id, app_name)
    ).fetchone()
    if row is None:
        raise CallNotFound()
    return sql.call_from_row(row)


@implementer(ICallStore)
class SqliteCallStore:
    """Shares the datastore's database (connection and thread), so its transactions
    never interleave with the datastore's. Errors are ``DatastoreUnavailable``."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def put_calls(self, calls: list[CallRecord]) -> None:
        def put(c: sqlite3.Connection) -> None:
            with transaction(c):
                start = 0
                most = c.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // sql.N_COLUMNS  # 999 before 3.32
                for rows in _CHUNKS:
                    if rows > most:
                        continue
                    while len(calls) - start >= rows:
                        chunk = calls[start:start + rows]
                        c.execute(_UPSERTS[rows], [p for call in chunk for p in sql.call_params(call)])
                        start += rows

        if calls:
            await self._db.run(put)

    async def get_call(self, app_name: str, call_id: str) -> CallRecord:
        return await self._db.run(_get, app_name, call_id)

    async def list_calls(self, query: CallQuery) -> CallPage:
        def select(c: sqlite3.Connection) -> CallPage:
            statement, params = sql.list_sql(query, "?")
            calls = [sql.call_from_row(r) for r in c.execute(statement, params).fetchall()]
            more = len(calls) > query.per_page
            calls = calls[: query.per_page]
            return CallPage(calls, encode_cursor(calls[-1]) if more and calls else None)

        return await self._db.run(select)

    async def update_call(self, app_name: str, call_id: str, change: CallChange) -> CallRecord:
        def update(c: sqlite3.Connection) -> CallRecord:
            with transaction(c):
                new = change(_get(c, app_name, call_id))
                c.execute(_UPSERT, sql.call_params(new))
                if new.terminal:
                    c.execute("DELETE FROM call_requests WHERE id = ?", (call_id,))
            return new

        return await self._db.run(update)

    async def put_async(self, record: CallRecord, request: Mapping[str, Any]) -> None:
        text = json.dumps(dict(request))

        def put(c: sqlite3.Connection) -> None:
            with transaction(c):
                c.execute(_UPSERT, sql.call_params(record))
                c.execute(
                    "INSERT OR REPLACE INTO call_requests (id, app_name, request) VALUES (?, ?, ?)",
                    (record.id, record.app_name, text),
                )

        await self._db.run(put)

    async def get_request(self, app_name: str, call_id: str) -> dict[str, Any]:
        def select(c: sqlite3.Connection) -> Any:
            return c.execute(
                "SELECT request FROM call_requests WHERE id = ? AND app_name = ?", (call_id, app_name)
            ).fetchone()

        row = await self._db.run(select)
        if row is None:
            raise CallNotFound()
        request: dict[str, Any] = json.loads(row[0])
        return request

    async def list_unfinished(
        self, before_ms: int, after: tuple[int, str] | None = None, limit: int = 100,
    ) -> list[CallRecord]:
        statement, params = sql.unfinished_sql(before_ms, after, limit, "?")

        def select(c: sqlite3.Connection) -> list[CallRecord]:
            return [sql.call_from_row(r) for r in c.execute(statement, params).fetchall()]

        return await self._db.run(select)

    async def put_log(self, app_name: str, call_id: str, log: bytes) -> None:
        await self._db.run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO call_logs (id, app_name, log) VALUES (?, ?, ?)",
                (call_id, app_name, bytes(log)),
            )
        )

    async def get_log(self, app_name: str, call_id: str) -> bytes:
        def select(c: sqlite3.Connection) -> bytes:
            _get(c, app_name, call_id)
            row = c.execute("SELECT log FROM call_logs WHERE id = ?", (call_id,)).fetchone()
            return b"" if row is None else bytes(row[0])

        return await self._db.run(select)

    async def delete_call(self, app_name: str, call_id: str) -> bool:
        def delete(c: sqlite3.Connection) -> bool:
            with transaction(c):
                found = c.execute("DELETE FROM calls WHERE id = ? AND app_name = ?", (call_id, app_name)).rowcount
                if found:
                    c.execute("DELETE FROM call_logs WHERE id = ?", (call_id,))
                    c.execute("DELETE FROM call_requests WHERE id = ?", (call_id,))
            return bool(found)

        return await self._db.run(delete)
