"""``sqlite:///path``: the embedded default queue, persistent across restarts.

One connection on one dedicated thread (``storage.sqlite.SqliteDatabase``), as the
SQLite datastore has: the reactor never blocks on disk and transactions never
interleave. WAL mode; the schema is ``storage/schema/sqlite_mq/``, versioned in its
own ``mq_schema_migrations`` table so queue and datastore may share one file.

A waiting ``reserve`` is woken in-process by pushes and releases on this queue object;
``poll_interval`` bounds the wait for items another process writes to the same file.

Per-app bounds (issue 13): ``mq_app_totals`` counts every item of an app, queued or
leased, updated in the transaction of each insert and delete. A lease here is only
``visible_at`` in the future (it expires by itself, with no write), so what an app has
waiting is its totals minus its items under a live lease: a lookup and a count over the
app's leased rows (a partial index), never over its waiting ones.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import AbstractSet, Any, Collection

from zope.interface import implementer

from ironfunctions.errors import LeaseLost, QueueFull, QueueUnavailable
from ironfunctions.mq._waiting import Waiters, reserve_loop
from ironfunctions.mq.interface import AppUsage, IMessageQueue, Lease, QueueItem, QueueLimits, Reservation, lease_of
from ironfunctions.storage.sqlite import SqliteDatabase, transaction


@implementer(IMessageQueue)
class SqliteQueue:
    """Queue items in a SQLite file, on a thread of its own."""

    def __init__(self, path: str, reactor: Any, poll_interval: float = 5.0) -> None:
        """``reactor`` provides IReactorTime (leases, delays: its ``seconds()`` is
        stored, so it must be wall-clock time) and IReactorFromThreads."""
        self._reactor = reactor
        self._poll_interval = poll_interval
        self._db = SqliteDatabase(
            path, reactor, what="queue", unavailable=QueueUnavailable,
            dialect="sqlite_mq", migrations_table="mq_schema_migrations",
        )
        self._waiters = Waiters(reactor)
        self._closed = False

    async def start(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        self._closed = True
        self._waiters.wake_all()
        await self._db.close()

    async def ping(self) -> None:
        await self._db.run(lambda c: c.execute("SELECT 1").fetchone())

    async def push(self, item: QueueItem, delay: float = 0, limits: QueueLimits | None = None) -> bool:
        now = self._reactor.seconds()
        visible_at = now + max(0.0, delay)
        text = item.to_json()
        size = len(text)

        # A refusal comes back as a value, raised here: raised in the thread, it would
        # travel in a Failure whose traceback cycles through the awaiting frames and
        # keeps this item's megabytes alive until the garbage collector runs.
        def insert(c: sqlite3.Connection) -> bool | tuple[str, int]:
            with transaction(c):
                if c.execute("SELECT 1 FROM mq_items WHERE call_id = ?", (item.call_id,)).fetchone():
                    return False
                if limits is not None:
                    refused = limits.refusal(item.app_name, _usage(c, item.app_name, now), size)
                    if refused is not None:
                        return refused
                c.execute(
                    "INSERT INTO mq_items (call_id, priority, item, visible_at, app_name, size)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (item.call_id, item.priority, text, visible_at, item.app_name, size),
                )
                c.execute(
                    "INSERT INTO mq_app_totals (app_name, calls, bytes) VALUES (?, 1, ?)"
                    " ON CONFLICT (app_name) DO UPDATE SET calls = calls + 1, bytes = bytes + excluded.bytes",
                    (item.app_name, size),
                )
            return True

        added = await self._db.run(insert)
        if isinstance(added, tuple):
            raise QueueFull(item.app_name, *added)
        if added:
            self._waiters.wake_all()
        return added

    async def _try_reserve(
        self, lease_seconds: float, apps: AbstractSet[str] | None,
    ) -> tuple[Reservation | None, float | None]:
        now = self._reactor.seconds()
        token = uuid.uuid4().hex
        # Only items of ``apps`` when given: their app is read from the stored item
        # (JSON1, built into SQLite since 3.38), so nothing else is touched.
        only, wanted = "", tuple(sorted(apps or ()))
        if apps is not None:
            only = " AND json_extract(item, '$.app_name') IN (%s)" % ", ".join("?" * len(wanted))

        def take(c: sqlite3.Connection) -> tuple[Reservation | None, float | None]:
            with transaction(c):
                row = c.execute(
                    "SELECT seq, item, attempts FROM mq_items WHERE visible_at <= ?" + only +
                    " ORDER BY priority DESC, seq LIMIT 1",
                    (now, *wanted),
                ).fetchone()
                if row is None:
                    due = c.execute(
                        "SELECT MIN(visible_at) FROM mq_items WHERE visible_at > ?", (now,)
                    ).fetchone()[0]
                    return None, None if due is None else due - now
                seq, text, attempts = row
                c.execute(
                    "UPDATE mq_items SET token = ?, attempts = ?, visible_at = ? WHERE seq = ?",
                    (token, attempts + 1, now + lease_seconds, seq),
                )
            item = QueueItem.from_json(text)
            return Reservation(item, Lease(item.call_id, token), attempts + 1), None

        return await self._db.run(take)

    async def reserve(
        self, lease_seconds: float, timeout: float = 0, apps: AbstractSet[str] | None = None,
    ) -> Reservation | None:
        self._db.check_open()
        return await reserve_loop(
            lambda: self._try_reserve(lease_seconds, apps),
            self._waiters,
            self._reactor,
            timeout,
            lambda: self._closed,
            self._poll_interval,
        )

    async def _update_held(self, held: Reservation | Lease, sql: str, *params: Any) -> None:
        """Run ``sql`` (whose last two placeholders are call_id and token) on the item
        if the lease is still held; raise ``LeaseLost`` otherwise."""
        lease = lease_of(held)
        now = self._reactor.seconds()

        def update(c: sqlite3.Connection) -> int:
            return c.execute(
                f"{sql} WHERE call_id = ? AND token = ? AND visible_at > ?",
                (*params, lease.call_id, lease.token, now),
            ).rowcount

        if await self._db.run(update) != 1:
            raise LeaseLost()

    async def ack(self, held: Reservation | Lease) -> None:
        lease = lease_of(held)
        now = self._reactor.seconds()

        def delete(c: sqlite3.Connection) -> bool:
            return _delete(c, "call_id = ? AND token = ? AND visible_at > ?", lease.call_id, lease.token, now)

        if not await self._db.run(delete):
            raise LeaseLost()

    async def renew(self, held: Reservation | Lease, lease_seconds: float) -> None:
        visible_at = self._reactor.seconds() + lease_seconds
        await self._update_held(held, "UPDATE mq_items SET visible_at = ?", visible_at)

    async def release(self, held: Reservation | Lease, delay: float = 0) -> None:
        visible_at = self._reactor.seconds() + max(0.0, delay)
        await self._update_held(held, "UPDATE mq_items SET token = NULL, visible_at = ?", visible_at)
        self._waiters.wake_all()

    async def remove(self, call_id: str) -> bool:
        def delete(c: sqlite3.Connection) -> bool:
            return _delete(c, "call_id = ?", call_id)

        return await self._db.run(delete)

    async def holds(self, call_ids: Collection[str]) -> set[str]:
        wanted = sorted(set(call_ids))

        def select(c: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), 500):  # within SQLite's variable limit
                chunk = wanted[start:start + 500]
                rows = c.execute(
                    "SELECT call_id FROM mq_items WHERE call_id IN (%s)" % ", ".join("?" * len(chunk)), chunk
                ).fetchall()
                found.update(row[0] for row in rows)
            return found

        return await self._db.run(select) if wanted else set()

    async def depth(self) -> int:
        now = self._reactor.seconds()

        def count(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT COUNT(*) FROM mq_items WHERE token IS NULL OR visible_at <= ?", (now,)
            ).fetchone()
            return int(row[0])

        return await self._db.run(count)

    async def app_usage(self, app_name: str) -> AppUsage:
        now = self._reactor.seconds()
        return await self._db.run(_usage, app_name, now)

    async def rebuild_counts(self) -> None:
        def rebuild(c: sqlite3.Connection) -> None:
            with transaction(c):
                c.execute("DELETE FROM mq_app_totals")
                c.execute(
                    "INSERT INTO mq_app_totals (app_name, calls, bytes)"
                    " SELECT app_name, COUNT(*), SUM(size) FROM mq_items GROUP BY app_name"
                )

        await self._db.run(rebuild)


def _usage(c: sqlite3.Connection, app_name: str, now: float) -> AppUsage:
    """What ``app_name`` has waiting: its totals minus its items under a live lease."""
    totals = c.execute("SELECT calls, bytes FROM mq_app_totals WHERE app_name = ?", (app_name,)).fetchone()
    if totals is None:
        return AppUsage()
    leased = c.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM mq_items"
        " WHERE app_name = ? AND token IS NOT NULL AND visible_at > ?",
        (app_name, now),
    ).fetchone()
    return AppUsage(int(totals[0]) - int(leased[0]), int(totals[1]) - int(leased[1]))


def _delete(c: sqlite3.Connection, where: str, *params: Any) -> bool:
    """Delete the item matching ``where`` and take it off its app's totals, in one
    transaction; return whether there was one."""
    with transaction(c):
        row = c.execute(f"DELETE FROM mq_items WHERE {where} RETURNING app_name, size", params).fetchone()
        if row is None:
            return False
        app_name, size = row
        c.execute("UPDATE mq_app_totals SET calls = calls - 1, bytes = bytes - ? WHERE app_name = ?",
                  (size, app_name))
        c.execute("DELETE FROM mq_app_totals WHERE app_name = ? AND calls <= 0", (app_name,))
    return True
