"""``sqlite:///path``: the embedded default datastore.

One connection, used only from one dedicated thread (a ThreadPool of size 1), so the
reactor never blocks on disk and transactions never interleave. WAL mode lets readers
in other processes (backups, the sqlite3 shell) work while the daemon writes.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, TypeVar

import attrs
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ironfunctions.calls.sqlite import SqliteCallStore
from ironfunctions.datastore import codec
from ironfunctions.datastore.interface import AppChange, IDatastore, RouteChange
from ironfunctions.datastore.sqlite_base import migrate, open_sqlite, stop_pool, transaction
from ironfunctions.errors import (
    AppAlreadyExists,
    AppHasRoutes,
    AppNotFound,
    DatastoreUnavailable,
    RouteAlreadyExists,
    RouteNotFound,
)
from ironfunctions.models import App, Route

T = TypeVar("T")


@implementer(IDatastore)
class SqliteDatastore:
    """Apps and routes in a SQLite file, on a thread of its own."""

    def __init__(self, path: str, reactor: IReactorFromThreads) -> None:
        self._path = path
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="sqlite-datastore")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self.calls = SqliteCallStore(self)

    async def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the database thread (for stores that share
        this file, such as ``calls``)."""
        if self._conn is None:
            raise DatastoreUnavailable()
        try:
            return await deferToThreadPool(self._reactor, self._pool, fn, self._conn, *args)
        except sqlite3.DatabaseError as e:
            # Locked, full disk, a damaged file...: the store's trouble, not the client's.
            # (Integrity errors a caller can cause are translated inside ``fn``.)
            raise DatastoreUnavailable(f"datastore unavailable: {e}") from e

    async def start(self) -> None:
        if self._conn is not None:
            return
        if not self._pool.started:
            self._pool.start()  # once: a stopped ThreadPool cannot start again

        def connect() -> sqlite3.Connection:
            conn = open_sqlite(self._path)
            migrate(conn, "sqlite")
            return conn

        try:
            conn = await deferToThreadPool(self._reactor, self._pool, connect)
        except (sqlite3.Error, OSError) as e:
            # The pool stays up: BackendService retries start() until it works.
            raise DatastoreUnavailable(f"datastore unavailable: {e}") from e
        if self._closed:  # close() was called while we connected
            await deferToThreadPool(self._reactor, self._pool, conn.close)
            raise DatastoreUnavailable("datastore closed")
        self._conn = conn

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await deferToThreadPool(self._reactor, self._pool, conn.close)
        if self._pool.started:
            # Its thread is not a daemon thread: a pool left running blocks exit.
            await stop_pool(self._reactor, self._pool)

    async def ping(self) -> None:
        await self.run_in_thread(lambda c: c.execute("SELECT 1").fetchone())

    async def insert_app(self, app: App) -> App:
        def insert(c: sqlite3.Connection) -> None:
            try:
                c.execute(
                    "INSERT INTO apps (name, config) VALUES (?, ?)",
                    (app.name, codec.dump_json(dict(app.config))),
                )
            except sqlite3.IntegrityError:
                raise AppAlreadyExists() from None

        await self.run_in_thread(insert)
        return app

    async def get_app(self, name: str) -> App:
        return await self.run_in_thread(_get_app, name)

    async def get_apps(self) -> list[App]:
        def select(c: sqlite3.Connection) -> list[App]:
            rows = c.execute("SELECT name, config FROM apps ORDER BY name").fetchall()
            return [codec.app_from_row(r) for r in rows]

        return await self.run_in_thread(select)

    async def update_app(self, name: str, change: AppChange) -> App:
        def update(c: sqlite3.Connection) -> App:
            with transaction(c):
                new = attrs.evolve(change(_get_app(c, name)), name=name)
                c.execute(
                    "UPDATE apps SET config = ? WHERE name = ?",
                    (codec.dump_json(dict(new.config)), name),
                )
                return new

        return await self.run_in_thread(update)

    async def remove_app(self, name: str) -> None:
        def remove(c: sqlite3.Connection) -> None:
            with transaction(c):
                _get_app(c, name)
                if c.execute("SELECT 1 FROM routes WHERE app_name = ? LIMIT 1", (name,)).fetchone():
                    raise AppHasRoutes()
                c.execute("DELETE FROM apps WHERE name = ?", (name,))

        await self.run_in_thread(remove)

    async def insert_route(self, route: Route) -> Route:
        def insert(c: sqlite3.Connection) -> None:
            with transaction(c):
                _get_app(c, route.app_name)
                try:
                    c.execute(_INSERT_ROUTE, codec.route_params(route))
                except sqlite3.IntegrityError:
                    raise RouteAlreadyExists() from None

        await self.run_in_thread(insert)
        return route

    async def put_route(self, route: Route) -> tuple[Route, bool]:
        def put(c: sqlite3.Connection) -> bool:
            with transaction(c):
                _get_app(c, route.app_name)
                existed = c.execute(
                    "SELECT 1 FROM routes WHERE app_name = ? AND path = ?", route.key
                ).fetchone()
                c.execute(_INSERT_ROUTE.replace("INSERT", "INSERT OR REPLACE"), codec.route_params(route))
                return existed is None

        return route, await self.run_in_thread(put)

    async def get_route(self, app_name: str, path: str) -> Route:
        return await self.run_in_thread(_get_route, app_name, path)

    async def get_routes(self, app_name: str | None = None, image: str | None = None) -> list[Route]:
        def select(c: sqlite3.Connection) -> list[Route]:
            where, params = [], []
            if app_name is not None:
                where.append("app_name = ?")
                params.append(app_name)
            if image is not None:
                where.append("image = ?")
                params.append(image)
            sql = f"SELECT {codec.ROUTE_COLUMNS} FROM routes"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY app_name, path"
            return [codec.route_from_row(r) for r in c.execute(sql, params).fetchall()]

        return await self.run_in_thread(select)

    async def update_route(self, app_name: str, path: str, change: RouteChange) -> Route:
        def update(c: sqlite3.Connection) -> Route:
            with transaction(c):
                new = attrs.evolve(change(_get_route(c, app_name, path)), app_name=app_name, path=path)
                c.execute("DELETE FROM routes WHERE app_name = ? AND path = ?", (app_name, path))
                c.execute(_INSERT_ROUTE, codec.route_params(new))
                return new

        return await self.run_in_thread(update)

    async def remove_route(self, app_name: str, path: str) -> None:
        def remove(c: sqlite3.Connection) -> None:
            cur = c.execute("DELETE FROM routes WHERE app_name = ? AND path = ?", (app_name, path))
            if cur.rowcount == 0:
                raise RouteNotFound()

        await self.run_in_thread(remove)

    async def put_extra(self, key: str, value: bytes) -> None:
        await self.run_in_thread(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO extras (key, value) VALUES (?, ?)", (key, bytes(value))
            )
        )

    async def get_extra(self, key: str) -> bytes | None:
        def select(c: sqlite3.Connection) -> bytes | None:
            row = c.execute("SELECT value FROM extras WHERE key = ?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self.run_in_thread(select)


_INSERT_ROUTE = f"INSERT INTO routes ({codec.ROUTE_COLUMNS}) VALUES ({', '.join('?' * 12)})"



def _get_app(c: sqlite3.Connection, name: str) -> App:
    row = c.execute("SELECT name, config FROM apps WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise AppNotFound()
    return codec.app_from_row(row)


def _get_route(c: sqlite3.Connection, app_name: str, path: str) -> Route:
    row = c.execute(
        f"SELECT {codec.ROUTE_COLUMNS} FROM routes WHERE app_name = ? AND path = ?",
        (app_name, path),
    ).fetchone()
    if row is None:
        raise RouteNotFound()
    return codec.route_from_row(row)
