"""``postgres://user:pass@host:port/db[?sslmode=...]``: the datastore many nodes share.

Queries run on a small txpostgres pool (``pgpool.PostgresPool``): no threads, never
blocking the reactor, a deadline on every call, dead connections re-opened in the
background. The URL goes to libpq unchanged, so every libpq parameter (``sslmode``,
``sslrootcert``, ``connect_timeout``, ``application_name``, ...) works as a query
parameter. psycopg2 errors become domain exceptions here and nowhere else.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, TypeVar

import attrs
import psycopg2
import psycopg2.errors
import psycopg2.extensions
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ironfunctions.calls.postgres import PostgresCallStore
from ironfunctions.datastore import codec
from ironfunctions.datastore.interface import AppChange, IDatastore, RouteChange
from ironfunctions.datastore.migrations import migrations, pending
from ironfunctions.datastore.pgpool import PostgresPool, describe
from ironfunctions.errors import (
    AppAlreadyExists,
    AppHasRoutes,
    AppNotFound,
    ConfigError,
    DatastoreUnavailable,
    IronFunctionsError,
    RouteAlreadyExists,
    RouteNotFound,
    ValidationError,
)
from ironfunctions.models import App, Route

log = Logger()

T = TypeVar("T")
Row = Sequence[Any]
ErrorMap = Mapping[type[psycopg2.Error], type[IronFunctionsError]]

# Key of the advisory lock that serialises schema migrations across every node that
# starts against the same database ("ironfunc" in ASCII).
MIGRATION_LOCK = 0x69726F6E66756E63

# libpq parameters we default when the URL does not set them: notice a silently dead
# peer (NAT, failover) within about a minute instead of two hours, and name ourselves
# in pg_stat_activity.
_CONNECT_DEFAULTS = {
    "application_name": "ironfunctions",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}

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


def connect_kwargs(url: str) -> dict[str, str]:
    """libpq parameters to add to ``url``: our defaults for what it leaves unset.
    Raise ``ConfigError`` if libpq cannot parse the URL."""
    try:
        given = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as e:
        raise ConfigError(f"DB_URL: invalid postgres URL ({str(e).strip()})") from None
    return {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}


@implementer(IDatastore)
class PostgresDatastore:
    """Apps and routes in PostgreSQL.

    ``pool_size`` connections (each node needs few: calls are short and the invocation
    path reads routes from a cache); ``timeout`` bounds every call, ``connect_timeout``
    every connection attempt, ``migrate_timeout`` the schema migration at start.
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        pool_size: int = 4,
        timeout: float = 5.0,
        connect_timeout: float = 5.0,
        migrate_timeout: float = 60.0,
        max_reconnect_delay: float = 5.0,
    ) -> None:
        self._url = url
        self._connect_kwargs = connect_kwargs(url)
        self._reactor = reactor
        self._pool_size = pool_size
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._migrate_timeout = migrate_timeout
        self._max_reconnect_delay = max_reconnect_delay
        self._pool: PostgresPool | None = None
        self.calls = PostgresCallStore(self)

    async def start(self) -> None:
        if self._pool is not None:
            return
        pool = PostgresPool(
            self._url,
            self._reactor,
            size=self._pool_size,
            timeout=self._timeout,
            connect_timeout=self._connect_timeout,
            max_reconnect_delay=self._max_reconnect_delay,
            connect_kwargs=self._connect_kwargs,
        )
        try:
            await pool.open()
            version = await pool.run(
                lambda conn: conn.runInteraction(_interaction(_migrate)), self._migrate_timeout
            )
        except defer.CancelledError:
            pool.close()  # the service is stopping while we start
            raise
        except Exception as e:
            pool.close()
            log.error("Cannot start the Postgres datastore: {error}", error=describe(e))
            raise DatastoreUnavailable() from None
        log.info("Postgres datastore ready, schema version {version}", version=version)
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def _run(self, work: Callable[[Any], defer.Deferred[T]], errors: ErrorMap | None = None) -> T:
        """Run ``work(connection)`` on the pool, translating psycopg2 errors."""
        if self._pool is None:
            raise DatastoreUnavailable()
        try:
            return await self._pool.run(work)
        except psycopg2.Error as e:
            for pg_error, domain_error in (errors or {}).items():
                if isinstance(e, pg_error):
                    raise domain_error() from None
            if isinstance(e, psycopg2.DataError):
                # e.g. "\u0000" in a JSONB value: the input cannot be stored as given.
                raise ValidationError(f"Invalid value: {e.diag.message_primary}") from None
            log.failure("Unexpected Postgres error")
            raise DatastoreUnavailable() from None

    async def query(
        self, sql: str, params: Sequence[Any] = (), errors: ErrorMap | None = None
    ) -> list[Row]:
        """Run one statement (``%s`` placeholders) and return its rows. Public, like
        ``transaction``, for stores that share this database (``calls``)."""
        rows: list[Row] = await self._run(lambda conn: conn.runQuery(sql, tuple(params)), errors)
        return rows

    async def transaction(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``async fn(cursor)`` in one transaction; any exception rolls it back."""
        return await self._run(lambda conn: conn.runInteraction(_interaction(fn)))

    async def ping(self) -> None:
        await self.query("SELECT 1")

    async def insert_app(self, app: App) -> App:
        await self.query(
            "INSERT INTO apps (name, config) VALUES (%s, %s::jsonb) RETURNING name",
            (app.name, codec.dump_json(dict(app.config))),
            {psycopg2.errors.UniqueViolation: AppAlreadyExists},
        )
        return app

    async def get_app(self, name: str) -> App:
        rows = await self.query("SELECT name, config FROM apps WHERE name = %s", (name,))
        if not rows:
            raise AppNotFound()
        return codec.app_from_row(rows[0])

    async def get_apps(self) -> list[App]:
        rows = await self.query('SELECT name, config FROM apps ORDER BY name COLLATE "C"')
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

        new: App = await self.transaction(update)
        return new

    async def remove_app(self, name: str) -> None:
        # The routes' foreign key refuses to delete an app that still has routes.
        rows = await self.query(
            "DELETE FROM apps WHERE name = %s RETURNING name",
            (name,),
            {psycopg2.errors.ForeignKeyViolation: AppHasRoutes},
        )
        if not rows:
            raise AppNotFound()

    async def insert_route(self, route: Route) -> Route:
        await self.query(
            _INSERT_ROUTE + " RETURNING path",
            codec.route_params(route),
            {
                psycopg2.errors.UniqueViolation: RouteAlreadyExists,
                psycopg2.errors.ForeignKeyViolation: AppNotFound,
            },
        )
        return route

    async def put_route(self, route: Route) -> tuple[Route, bool]:
        rows = await self.query(
            _UPSERT_ROUTE,
            codec.route_params(route),
            {psycopg2.errors.ForeignKeyViolation: AppNotFound},
        )
        return route, bool(rows[0][0])

    async def get_route(self, app_name: str, path: str) -> Route:
        rows = await self.query(_SELECT_ROUTE, (app_name, path))
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
        return [codec.route_from_row(r) for r in await self.query(sql, params)]

    async def update_route(self, app_name: str, path: str, change: RouteChange) -> Route:
        async def update(cur: Any) -> Route:
            await cur.execute(_SELECT_ROUTE + " FOR UPDATE", (app_name, path))
            row = cur.fetchone()
            if row is None:
                raise RouteNotFound()
            new = attrs.evolve(change(codec.route_from_row(row)), app_name=app_name, path=path)
            await cur.execute(_UPSERT_ROUTE, codec.route_params(new))
            return new

        new: Route = await self.transaction(update)
        return new

    async def remove_route(self, app_name: str, path: str) -> None:
        rows = await self.query(
            "DELETE FROM routes WHERE app_name = %s AND path = %s RETURNING path", (app_name, path)
        )
        if not rows:
            raise RouteNotFound()

    async def put_extra(self, key: str, value: bytes) -> None:
        await self.query(
            "INSERT INTO extras (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING key",
            (key, psycopg2.Binary(bytes(value))),
        )

    async def get_extra(self, key: str) -> bytes | None:
        rows = await self.query("SELECT value FROM extras WHERE key = %s", (key,))
        return None if not rows else bytes(rows[0][0])


def _interaction(fn: Callable[[Any], Any]) -> Callable[[Any], defer.Deferred[Any]]:
    """Adapt ``async fn(cursor)`` to txpostgres' ``runInteraction``, which wants a
    callable returning a Deferred."""
    return lambda cur: defer.Deferred.fromCoroutine(fn(cur))


async def _migrate(cur: Any) -> int:
    """Bring the schema up to date inside the caller's transaction; return its version.

    The transaction-scoped advisory lock makes nodes that start together take turns:
    the second one waits, then sees the first one's committed version and does nothing.
    """
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    await cur.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    await cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    version = int(cur.fetchone()[0])
    for migration in pending("postgres", version):
        log.info("Applying Postgres migration {version} {name}", version=migration.version, name=migration.name)
        await cur.execute(migration.sql)
        await cur.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
            (migration.version, migration.name),
        )
        version = migration.version
    latest = max((m.version for m in migrations("postgres")), default=0)
    if version > latest:
        log.warn(
            "Postgres schema version {version} is newer than this release knows ({latest})",
            version=version,
            latest=latest,
        )
    return version
