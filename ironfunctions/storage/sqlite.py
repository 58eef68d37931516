"""One SQLite file on one dedicated thread: what the SQLite datastore, the SQLite call
store and the SQLite queue stand on.

``SqliteDatabase`` holds one connection, used only from one thread of its own (a
``ThreadPool`` of size 1), so the reactor never blocks on disk and transactions never
interleave. Stores that share a file (the datastore and its call store) share one
``SqliteDatabase``; the queue keeps its own, even on the same file, with its own
migrations table. The connection is tuned for a daemon (WAL, ``synchronous=FULL``,
foreign keys, a busy timeout); ``transaction`` is ``BEGIN IMMEDIATE`` ... ``COMMIT``.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable, TypeVar

from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ironfunctions.errors import IronFunctionsError, ValidationError
from ironfunctions.storage.migrations import pending
from ironfunctions.threads import stop_pools

T = TypeVar("T")


class SqliteDatabase:
    """A SQLite file, opened (and migrated to the newest ``dialect`` schema) on its own
    thread by ``open``; ``run`` runs blocking work on that thread.

    Failures are domain errors of the store using it: ``unavailable`` (e.g.
    ``DatastoreUnavailable``) with a message naming ``what`` (e.g. ``"datastore"``),
    for a call before ``open``, after ``close``, or any ``sqlite3`` error (locked, full
    disk, a damaged file: the store's trouble, not the client's). Errors a caller can
    cause (integrity errors) are translated inside the work it runs.
    """

    def __init__(
        self,
        path: str,
        reactor: IReactorFromThreads,
        *,
        what: str,
        unavailable: type[IronFunctionsError],
        dialect: str,
        migrations_table: str = "schema_migrations",
    ) -> None:
        self._path = path
        self._reactor = reactor
        self._what = what
        self._unavailable = unavailable
        self._dialect = dialect
        self._migrations_table = migrations_table
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"sqlite-{what}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @property
    def stopped(self) -> bool:
        """Whether ``close`` has stopped the thread (it is never restarted)."""
        return bool(self._pool.joined)

    async def open(self) -> None:
        """Connect and migrate, unless already open. A failure leaves the thread up, so
        ``open`` can be tried again (as ``BackendService`` does)."""
        if self._closed:
            raise self._unavailable(f"{self._what} closed")
        if self._conn is not None:
            return
        if not self._pool.started:
            self._pool.start()  # once: a stopped ThreadPool cannot start again

        def connect() -> sqlite3.Connection:
            conn = open_sqlite(self._path)
            try:
                migrate(conn, self._dialect, self._migrations_table)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await deferToThreadPool(self._reactor, self._pool, connect)
        except (sqlite3.Error, OSError) as e:
            raise self._unavailable(f"{self._what} unavailable: {e}") from e
        if self._closed:  # close() was called while we connected
            await deferToThreadPool(self._reactor, self._pool, conn.close)
            raise self._unavailable(f"{self._what} closed")
        self._conn = conn

    def check_open(self) -> sqlite3.Connection:
        """The connection; raise ``unavailable`` if not opened yet, or closed."""
        if self._conn is None:
            raise self._unavailable(f"{self._what} closed" if self._closed else f"{self._what} not started")
        return self._conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the database thread and return its result."""
        conn = self.check_open()
        try:
            return await deferToThreadPool(self._reactor, self._pool, fn, conn, *args)
        except UnicodeEncodeError:
            # A lone surrogate (JSON's "\udc80") cannot be bound as text: the client's
            # input, not an outage (names.py).
            raise ValidationError("Invalid value: text cannot hold invalid UTF-8") from None
        except sqlite3.Error as e:
            raise self._unavailable(f"{self._what} unavailable: {e}") from e

    async def close(self) -> None:
        """Close the connection and stop the thread (its thread is not a daemon thread:
        a pool left running blocks the process's exit). For good: ``open`` then fails."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await deferToThreadPool(self._reactor, self._pool, conn.close)
        if self._pool.started:
            await stop_pools(self._reactor, self._pool)


def open_sqlite(path: str) -> sqlite3.Connection:
    """Open (creating its folder) a SQLite database tuned for a long-running daemon."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before it returns, so an async call answered 202 survives
    # a power cut too, not just a crash of the daemon (WAL keeps the cost to one fsync).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def migrate(conn: sqlite3.Connection, dialect: str, table: str = "schema_migrations") -> int:
    """Apply pending migrations of ``dialect`` in one transaction; return the version.

    ``table`` records the versions applied; schemas that may share one file (the
    datastore's and the queue's) each keep their own.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, name TEXT)")
        row = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {table}").fetchone()
        version = int(row[0])
        for migration in pending(dialect, version):
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {table} (version, name) VALUES (?, ?)",
                (migration.version, migration.name),
            )
            version = migration.version
        conn.execute("COMMIT")
        return version
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(sql: str) -> list[str]:
    """Split a migration file into statements (our files keep ';' out of literals)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class transaction:
    """``with transaction(conn):`` BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn = self._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()  # the original exception propagates

    def _rollback(self) -> None:
        # SQLite may already have rolled back (I/O error, full disk); a ROLLBACK then
        # would raise and hide the real error. Never leave the shared connection inside
        # a transaction: every later BEGIN would fail.
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
