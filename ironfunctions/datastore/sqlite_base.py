"""SQLite plumbing shared by the stores that keep a SQLite file (datastore, call
records, queue): opening a connection tuned for a daemon, versioned migrations, and
``BEGIN IMMEDIATE`` transactions."""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool

from ironfunctions.datastore.migrations import pending


def stop_pool(reactor: IReactorFromThreads, pool: ThreadPool) -> Deferred[None]:
    """Stop ``pool`` from a thread of its own: ``stop()`` joins the pool's threads,
    waiting for work in flight (a connect may wait out a 10 s busy timeout), which must
    not happen on the reactor thread nor on the reactor's shared pool."""
    done: Deferred[None] = Deferred()

    def stop() -> None:
        pool.stop()
        reactor.callFromThread(done.callback, None)

    threading.Thread(target=stop, name=f"{pool.name}-stop", daemon=True).start()
    return done


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
