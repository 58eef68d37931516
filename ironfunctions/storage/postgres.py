"""``postgres://user:pass@host:port/db[?sslmode=...]``: the database many nodes share.

``PostgresDatabase`` is what the Postgres datastore and the Postgres call store stand
on: queries run on a small txpostgres pool (``pgpool.PostgresPool``): no threads for
queries, never blocking the reactor, a deadline on every call, dead connections
re-opened in the background, host names resolved on a thread of the pool's own before
every (re)connection (``pghosts``). The URL goes to libpq unchanged (plus ``hostaddr``),
so every libpq parameter (``sslmode``, ``sslrootcert``, ``connect_timeout``,
``application_name``, ...) works as a query parameter. psycopg2 errors become domain
exceptions here (or in the stores' error maps) and nowhere above.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Mapping, Sequence, TypeVar

import psycopg2
import psycopg2.extensions
from twisted.internet import defer
from twisted.logger import Logger

from ironfunctions.errors import ConfigError, DatastoreUnavailable, IronFunctionsError, ValidationError
from ironfunctions.storage.migrations import migrations, pending
from ironfunctions.storage.pghosts import GetAddrInfo, Resolver
from ironfunctions.storage.pgpool import PostgresPool, describe

log = Logger()

T = TypeVar("T")
Row = Sequence[Any]
ErrorMap = Mapping[type[psycopg2.Error], type[IronFunctionsError]]

UNSTORABLE = "Invalid value: text cannot hold NUL characters or invalid UTF-8"

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


def connect_kwargs(url: str) -> dict[str, str]:
    """libpq parameters to add to ``url``: our defaults for what it leaves unset.
    Raise ``ConfigError`` if libpq cannot parse the URL."""
    try:
        given = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as e:
        raise ConfigError(f"DB_URL: invalid postgres URL ({str(e).strip()})") from None
    return {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}


class PostgresDatabase:
    """One PostgreSQL database, shared by the stores that keep their tables in it.

    ``pool_size`` connections (each node needs few: calls are short and the invocation
    path reads routes from a cache); ``timeout`` bounds every call, ``connect_timeout``
    every connection attempt, ``migrate_timeout`` the schema migration at start.
    ``getaddrinfo`` looks host names up (on the pool's resolver thread; a test may
    pass a fake). Raise ``ConfigError`` if libpq cannot parse ``url``.
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
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
    ) -> None:
        self._url = url
        self._connect_kwargs = connect_kwargs(url)
        self._reactor = reactor
        self._pool_size = pool_size
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._migrate_timeout = migrate_timeout
        self._max_reconnect_delay = max_reconnect_delay
        self._getaddrinfo = getaddrinfo
        self._pool: PostgresPool | None = None

    async def open(self) -> None:
        """Connect the pool and bring the schema up to date. Raise ``DatastoreUnavailable``."""
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
            resolver=Resolver(self._reactor, self._getaddrinfo),
        )
        try:
            await pool.open()
            version = await pool.run(
                lambda conn: conn.runInteraction(_interaction(_migrate)), self._migrate_timeout
            )
        except defer.CancelledError:
            await pool.close()  # the service is stopping while we start
            raise
        except Exception as e:
            await pool.close()
            log.error("Cannot start the Postgres datastore: {error}", error=describe(e))
            raise DatastoreUnavailable() from None
        log.info("Postgres datastore ready, schema version {version}", version=version)
        self._pool = pool

    async def close(self) -> None:
        """Close every connection; the database is unusable afterwards."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _run(self, work: Callable[[Any], defer.Deferred[T]], errors: ErrorMap | None = None) -> T:
        """Run ``work(connection)`` on the pool, translating psycopg2 errors."""
        if self._pool is None:
            raise DatastoreUnavailable()
        try:
            return await self._pool.run(work)
        except ValueError as e:
            # Text Postgres cannot hold, refused by psycopg2 before it is sent: NUL ("A
            # string literal cannot contain NUL (0x00) characters"), a lone surrogate
            # (UnicodeEncodeError). The client's input, not an outage (names.py).
            if isinstance(e, UnicodeEncodeError) or "NUL" in str(e):
                raise ValidationError(UNSTORABLE) from None
            raise
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
        """Run one statement (``%s`` placeholders) and return its rows. A psycopg2 error
        that is an instance of a key of ``errors`` raises the mapped domain error; a
        ``DataError`` raises ``ValidationError``; anything else ``DatastoreUnavailable``."""
        rows: list[Row] = await self._run(lambda conn: conn.runQuery(sql, tuple(params)), errors)
        return rows

    async def transaction(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``async fn(cursor)`` in one transaction; any exception rolls it back and
        propagates (psycopg2 errors translated as in ``query``)."""
        return await self._run(lambda conn: conn.runInteraction(_interaction(fn)))


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
