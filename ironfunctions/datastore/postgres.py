"""``postgres://user:pass@host:port/db``: apps and routes in the database many nodes share.

SQL over a ``storage.postgres.PostgresDatabase`` (pool, deadlines, reconnection,
migrations, error translation); the Postgres call store (``calls.postgres``) shares the
same database object, which this datastore opens at ``start`` and closes at ``close``.
Constraint violations become domain exceptions here, through the database's error maps.
"""

from __future__ import annotations

from typing import Any

import attrs
import psycopg2
import psycopg2.errors
from zope.interface import implementer

import ironfunctions.datastore.codec as codec
from ironfunctions.datastore.interface import AppChange, IDatastore, RouteChange
from ironfunctions.errors import (
    AppAlreadyExists,
    AppHasRoutes,
    AppNotFound,
    RouteAlreadyExists,
    RouteNotFound,
)
from ironfunctions.models import App, Route
from ironfunctions.storage.postgres import PostgresDatabase

_COLUMNS = [c.strip() for c in codec.ROUTE_COLUMNS.split(",")]
_VALUES = ", ".join("%s::jsonb" if c in ("headers", "config") else "%s" for c in _COLUMNS)
_INSERT_ROUTE = f"INSERT INTO routes ({codec.ROUTE_COLUMNS}) VALUES ({_VALUES})"
# Insert or replace in one statement; xmax is 0 only on a freshly inserted row.
_UPSERT_ROUTE = (
    _INSERT_ROUTE
    + " ON CONFLICT (app_name, path) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[2:])
    + " RETURNING (xmax = 0)"
)
_SELECT_ROUTE = f"SELECT {codec.ROUTE_COLUMNS} FROM routes WHERE app_name = %s AND path = %s"


@implementer(IDatastore)
class PostgresDatastore:
    """Apps and routes in PostgreSQL. ``database`` is opened by ``start`` (which
    raises ``DatastoreUnavailable`` if it cannot connect or migrate) and closed by
    ``close``."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database

    async def start(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        await self._db.query("SELECT 1")

    async def insert_app(self, app: App) -> App:
        await self._db.query(
            "INSERT INTO apps (name, config) VALUES (%s, %s::jsonb) RETURNING name",
            (app.name, codec.dump_json(dict(app.config))),
            {psycopg2.errors.UniqueViolation: AppAlreadyExists},
        )
        return app

    async def get_app(self, name: str) -> App:
        rows = await self._db.query("SELECT name, config FROM apps WHERE name = %s", (name,))
        if not rows:
            raise AppNotFound()
        return codec.app_from_row(rows[0])

    async def get_apps(self) -> list[App]:
        rows = await self._db.query('SELECT name, config FROM apps ORDER BY name COLLATE "C"')
        return [codec.app_from_row(r) for r in rows]

    async def update_app(self, name: str, change: AppChange) -> App:
        async def update(cur: Any) -> App:
            await cur.execute("SELECT name, config FROM apps WHERE name = %s FOR UPDATE", (name,))
            row = cur.fetchone()
            if row is None:
                raise AppNotFound()
            new = attrs.evolve(change(codec.app_from_row(row)), name=name)
            await cur.execute(
                "UPDATE apps SET config = %s::jsonb WHERE name = %s",
                (codec.dump_json(dict(new.config)), name),
            )
            return new

        new: App = await self._db.transaction(update)
        return new

    async def remove_app(self, name: str) -> None:
        # The routes' foreign key refuses to delete an app that still has routes.
        rows = await self._db.query(
            "DELETE FROM apps WHERE name = %s RETURNING name",
            (name,),
            {psycopg2.errors.ForeignKeyViolation: AppHasRoutes},
        )
        if not rows:
            raise AppNotFound()

    async def insert_route(self, route: Route) -> Route:
        await self._db.query(
            _INSERT_ROUTE + " RETURNING path",
            codec.route_params(route),
            {
                psycopg2.errors.UniqueViolation: RouteAlreadyExists,
                psycopg2.errors.ForeignKeyViolation: AppNotFound,
            },
        )
        return route

    async def put_route(self, route: Route) -> tuple[Route, bool]:
        rows = await self._db.query(
            _UPSERT_ROUTE,
            codec.route_params(route),
            {psycopg2.errors.ForeignKeyViolation: AppNotFound},
        )
        return route, bool(rows[0][0])

    async def get_route(self, app_name: str, path: str) -> Route:
        rows = await self._db.query(_SELECT_ROUTE, (app_name, path))
        if not rows:
            raise RouteNotFound()
        return codec.route_from_row(rows[0])

    async def get_routes(self, app_name: str | None = None, image: str | None = None) -> list[Route]:
        where, params = [], []
        if app_name is not None:
            where.append("app_name = %s")
            params.append(app_name)
        if image is not None:
            where.append("image = %s")
            params.append(image)
        sql = f"SELECT {codec.ROUTE_COLUMNS} FROM routes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += ' ORDER BY app_name COLLATE "C", path COLLATE "C"'
        return [codec.route_from_row(r) for r in await self._db.query(sql, params)]

    async def update_route(self, app_name: str, path: str, change: RouteChange) -> Route:
        async def update(cur: Any) -> Route:
            await cur.execute(_SELECT_ROUTE + " FOR UPDATE", (app_name, path))
            row = cur.fetchone()
            if row is None:
                raise RouteNotFound()
            new = attrs.evolve(change(codec.route_from_row(row)), app_name=app_name, path=path)
            await cur.execute(_UPSERT_ROUTE, codec.route_params(new))
            return new

        new: Route = await self._db.transaction(update)
        return new

    async def remove_route(self, app_name: str, path: str) -> None:
        rows = await self._db.query(
            "DELETE FROM routes WHERE app_name = %s AND path = %s RETURNING path", (app_name, path)
        )
        if not rows:
            raise RouteNotFound()

    async def put_extra(self, key: str, value: bytes) -> None:
        await self._db.query(
            "INSERT INTO extras (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING key",
            (key, psycopg2.Binary(bytes(value))),
        )

    async def get_extra(self, key: str) -> bytes | None:
        rows = await self._db.query("SELECT value FROM extras WHERE key = %s", (key,))
        return None if not rows else bytes(rows[0][0])
