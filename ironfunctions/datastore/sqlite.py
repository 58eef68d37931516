"""``sqlite:///path``: the embedded default datastore.

Apps and routes in a ``storage.sqlite.SqliteDatabase``: one connection on one dedicated
thread, so the reactor never blocks on disk and transactions never interleave. WAL mode
lets readers in other processes (backups, the sqlite3 shell) work while the daemon
writes. The call store (``calls.sqlite``) shares the same database object; this
datastore opens it at ``start`` and closes it at ``close``.
"""

from __future__ import annotations

import sqlite3

import attrs
from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer

import ironfunctions.datastore.codec as codec
from ironfunctions.datastore.interface import AppChange, IDatastore, RouteChange
from ironfunctions.errors import (
    AppAlreadyExists,
    AppHasRoutes,
    AppNotFound,
    DatastoreUnavailable,
    RouteAlreadyExists,
    RouteNotFound,
)
from ironfunctions.models import App, Route
from ironfunctions.storage.sqlite import SqliteDatabase, transaction


def sqlite_database(path: str, reactor: IReactorFromThreads) -> SqliteDatabase:
    """The database a SQLite datastore and its call store share (not opened yet)."""
    return SqliteDatabase(path, reactor, what="datastore", unavailable=DatastoreUnavailable, dialect="sqlite")


@implementer(IDatastore)
class SqliteDatastore:
    """Apps and routes in a SQLite file, on the database's thread. ``database`` comes
    from ``sqlite_database`` (the ``sqlite`` schema, ``DatastoreUnavailable`` errors)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database

    async def start(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        await self._db.run(lambda c: c.execute("SELECT 1").fetchone())

    async def insert_app(self, app: App) -> App:
        def insert(c: sqlite3.Connection) -> None:
            try:
                c.execute(
                    "INSERT INTO apps (name, config) VALUES (?, ?)",
                    (app.name, codec.dump_json(dict(app.config))),
                )
            except sqlite3.IntegrityError:
                raise AppAlreadyExists() from None

        await self._db.run(insert)
        return app

    async def get_app(self, name: str) -> App:
        return await self._db.run(_get_app, name)

    async def get_apps(self) -> list[App]:
        def select(c: sqlite3.Connection) -> list[App]:
            rows = c.execute("SELECT name, config FROM apps ORDER BY name").fetchall()
            return [codec.app_from_row(r) for r in rows]

        return await self._db.run(select)

    async def update_app(self, name: str, change: AppChange) -> App:
        def update(c: sqlite3.Connection) -> App:
            with transaction(c):
                new = attrs.evolve(change(_get_app(c, name)), name=name)
                c.execute(
                    "UPDATE apps SET config = ? WHERE name = ?",
                    (codec.dump_json(dict(new.config)), name),
                )
                return new

        return await self._db.run(update)

    async def remove_app(self, name: str) -> None:
        def remove(c: sqlite3.Connection) -> None:
            with transaction(c):
                _get_app(c, name)
                if c.execute("SELECT 1 FROM routes WHERE app_name = ? LIMIT 1", (name,)).fetchone():
                    raise AppHasRoutes()
                c.execute("DELETE FROM apps WHERE name = ?", (name,))

        await self._db.run(remove)

    async def insert_route(self, route: Route) -> Route:
        def insert(c: sqlite3.Connection) -> None:
            with transaction(c):
                _get_app(c, route.app_name)
                try:
                    c.execute(_INSERT_ROUTE, codec.route_params(route))
                except sqlite3.IntegrityError:
                    raise RouteAlreadyExists() from None

        await self._db.run(insert)
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

        return route, await self._db.run(put)

    async def get_route(self, app_name: str, path: str) -> Route:
        return await self._db.run(_get_route, app_name, path)

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

        return await self._db.run(select)

    async def update_route(self, app_name: str, path: str, change: RouteChange) -> Route:
        def update(c: sqlite3.Connection) -> Route:
            with transaction(c):
                new = attrs.evolve(change(_get_route(c, app_name, path)), app_name=app_name, path=path)
                c.execute("DELETE FROM routes WHERE app_name = ? AND path = ?", (app_name, path))
                c.execute(_INSERT_ROUTE, codec.route_params(new))
                return new

        return await self._db.run(update)

    async def remove_route(self, app_name: str, path: str) -> None:
        def remove(c: sqlite3.Connection) -> None:
            cur = c.execute("DELETE FROM routes WHERE app_name = ? AND path = ?", (app_name, path))
            if cur.rowcount == 0:
                raise RouteNotFound()

        await self._db.run(remove)

    async def put_extra(self, key: str, value: bytes) -> None:
        await self._db.run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO extras (key, value) VALUES (?, ?)", (key, bytes(value))
            )
        )

    async def get_extra(self, key: str) -> bytes | None:
        def select(c: sqlite3.Connection) -> bytes | None:
            row = c.execute("SELECT value FROM extras WHERE key = ?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._db.run(select)


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
