"""``sqlite:///path``: the embedded default queue, persistent across restarts.

One connection, used only from one dedicated thread (a ThreadPool of size 1), as the
SQLite datastore does: the reactor never blocks on disk and transactions never
interleave. WAL mode; the schema is ``datastore/schema/sqlite_mq/``, versioned in its
own ``mq_schema_migrations`` table so queue and datastore may share one file.

A waiting ``reserve`` is woken in-process by pushes and releases on this queue object;
``poll_interval`` bounds the wait for items another process writes to the same file.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any, Callable, TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ironfunctions.datastore.sqlite_base import migrate, open_sqlite, stop_pool, transaction
from ironfunctions.errors import LeaseLost, QueueUnavailable
from ironfunctions.mq._waiting import Waiters, reserve_loop
from ironfunctions.mq.interface import IMessageQueue, Lease, QueueItem, Reservation, lease_of

T = TypeVar("T")


@implementer(IMessageQueue)
class SqliteQueue:
    """Queue items in a SQLite file, on a thread of its own."""

    def __init__(self, path: str, reactor: Any, poll_interval: float = 5.0) -> None:
        """``reactor`` provides IReactorTime (leases, delays: its ``seconds()`` is
        stored, so it must be wall-clock time) and IReactorFromThreads."""
        self._path = path
        self._reactor = reactor
        self._poll_interval = poll_interval
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="sqlite-queue")
        self._conn: sqlite3.Connection | None = None
        self._waiters = Waiters(reactor)
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise QueueUnavailable("queue not started" if not self._closed else "queue closed")
        try:
            return await deferToThreadPool(self._reactor, self._pool, fn, self._conn, *args)
        except sqlite3.Error as e:
            raise QueueUnavailable(f"queue unavailable: {e}") from e

    async def start(self) -> None:
        if self._closed:
            raise QueueUnavailable("queue closed")
        if self._conn is not None:
            return
        if not self._pool.started:
            self._pool.start()

        def connect() -> sqlite3.Connection:
            conn = open_sqlite(self._path)
            try:
                migrate(conn, "sqlite_mq", table="mq_schema_migrations")
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await deferToThreadPool(self._reactor, self._pool, connect)
        except (sqlite3.Error, OSError) as e:
            raise QueueUnavailable(f"queue unavailable: {e}") from e
        if self._closed:  # close() was called while we connected
            await deferToThreadPool(self._reactor, self._pool, conn.close)
            raise QueueUnavailable("queue closed")
        self._conn = conn

    async def close(self) -> None:
        self._closed = True
        self._waiters.wake_all()
        conn, self._conn = self._conn, None
        if conn is not None:
            await deferToThreadPool(self._reactor, self._pool, conn.close)
        if self._pool.started:
            await stop_pool(self._reactor, self._pool)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def push(self, item: QueueItem, delay: float = 0) -> bool:
        visible_at = self._reactor.seconds() + max(0.0, delay)

        def insert(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO mq_items (call_id, priority, item, visible_at) VALUES (?, ?, ?, ?)",
                (item.call_id, item.priority, item.to_json(), visible_at),
            )
            return cur.rowcount == 1

        added = await self._run(insert)
        if added:
            self._waiters.wake_all()
        return added

    async def _try_reserve(self, lease_seconds: float) -> tuple[Reservation | None, float | None]:
        now = self._reactor.seconds()
        token = uuid.uuid4().hex

        def take(c: sqlite3.Connection) -> tuple[Reservation | None, float | None]:
            with transaction(c):
                row = c.execute(
                    "SELECT seq, item, attempts FROM mq_items WHERE visible_at <= ?"
                    " ORDER BY priority DESC, seq LIMIT 1",
                    (now,),
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

        return await self._run(take)

    async def reserve(self, lease_seconds: float, timeout: float = 0) -> Reservation | None:
        if self._conn is None:
            raise QueueUnavailable("queue not started" if not self._closed else "queue closed")
        return await reserve_loop(
            lambda: self._try_reserve(lease_seconds),
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

        if await self._run(update) != 1:
            raise LeaseLost()

    async def ack(self, held: Reservation | Lease) -> None:
        await self._update_held(held, "DELETE FROM mq_items")

    async def renew(self, held: Reservation | Lease, lease_seconds: float) -> None:
        visible_at = self._reactor.seconds() + lease_seconds
        await self._update_held(held, "UPDATE mq_items SET visible_at = ?", visible_at)

    async def release(self, held: Reservation | Lease, delay: float = 0) -> None:
        visible_at = self._reactor.seconds() + max(0.0, delay)
        await self._update_held(held, "UPDATE mq_items SET token = NULL, visible_at = ?", visible_at)
        self._waiters.wake_all()

    async def remove(self, call_id: str) -> bool:
        def delete(c: sqlite3.Connection) -> bool:
            return c.execute("DELETE FROM mq_items WHERE call_id = ?", (call_id,)).rowcount == 1

        return await self._run(delete)

    async def depth(self) -> int:
        now = self._reactor.seconds()

        def count(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT COUNT(*) FROM mq_items WHERE token IS NULL OR visible_at <= ?", (now,)
            ).fetchone()
            return int(row[0])

        return await self._run(count)
