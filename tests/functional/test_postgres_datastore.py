"""What only the Postgres datastore has to get right: migrations when several nodes start
at once, errors mapped at the edge, and outages (fail fast, recover by itself).

The contract suite (tests/contracts/test_datastore.py) already runs on Postgres; these
tests use a real throwaway server too. Outage tests stop and start a cluster of their
own, so a failure there cannot take the session's shared cluster down with it.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Coroutine, Iterator, TypeVar

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.task import deferLater

from ironfunctions.calls.postgres import PostgresCallStore
from ironfunctions.datastore import stores_from_url
from ironfunctions.datastore.postgres import PostgresDatastore
from ironfunctions.storage.migrations import migrations
from ironfunctions.storage.postgres import PostgresDatabase
from ironfunctions.errors import (
    AppAlreadyExists,
    AppHasRoutes,
    AppNotFound,
    ConfigError,
    DatastoreUnavailable,
    RouteAlreadyExists,
    ValidationError,
)
from ironfunctions.models import App, Route
from tests.servers import PostgresCluster, start_postgres_cluster, stop_postgres_cluster

_T = TypeVar("_T")


def _block(coro: Coroutine[Any, Any, _T]) -> _T:
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(coro))


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def make_datastore() -> Iterator[Callable[..., PostgresDatastore]]:
    """Build PostgresDatastores (not started); every one is closed after the test."""
    made: list[PostgresDatastore] = []

    def make(url: str, **kwargs: Any) -> PostgresDatastore:
        ds = PostgresDatastore(PostgresDatabase(url, _reactor(), **kwargs))
        made.append(ds)
        return ds

    yield make
    for ds in made:
        _block(ds.close())


@pytest.fixture(scope="module")
def outage_cluster() -> Iterator[PostgresCluster]:
    """A Postgres cluster of this module's own, which tests may stop and start."""
    cluster = start_postgres_cluster()
    yield cluster
    stop_postgres_cluster(cluster)


@pytest.fixture
def outage_db(outage_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database on the outage cluster, and the cluster running when the test ends."""
    url = outage_cluster.create_database()
    yield url
    if not _accepts_connections(outage_cluster.url()):
        outage_cluster.start()
    outage_cluster.drop_database(url)


def _accepts_connections(url: str) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


async def _sleep(seconds: float) -> None:
    await deferLater(_reactor(), seconds, lambda: None)


async def _timed(coro: Awaitable[object]) -> tuple[Exception | None, float]:
    """Await ``coro``; return (exception raised or None, seconds taken)."""
    started = time.monotonic()
    try:
        await coro
    except Exception as e:
        return e, time.monotonic() - started
    return None, time.monotonic() - started


def test_postgres_url_is_routed_to_PostgresDatastore(postgres_url: str) -> None:
    for url in (postgres_url, "postgresql://u@h/db?sslmode=require"):
        stores = stores_from_url(url, _reactor())
        assert isinstance(stores.datastore, PostgresDatastore)
        assert isinstance(stores.calls, PostgresCallStore)


def test_unparseable_url_is_a_ConfigError() -> None:
    with pytest.raises(ConfigError, match="DB_URL"):
        PostgresDatabase("postgres://u@h/db?nosuchparameter=1", _reactor())


@pytest_twisted.ensureDeferred
async def test_a_host_name_works_and_reaches_libpq_as_hostaddr(postgres_db: str, make_datastore: Callable[..., PostgresDatastore]) -> None:
    """``localhost`` (resolved off the reactor thread; libpq tries each address, as it
    would after its own look-up) works; so does a name only our resolver knows, which
    proves libpq connected by the ``hostaddr`` we passed and looked nothing up."""
    import socket
    import threading

    ds = make_datastore(postgres_db.replace("@127.0.0.1:", "@localhost:"))
    await ds.start()
    await ds.insert_app(App("by-name"))

    looked_up: list[tuple[str, str]] = []

    def only_we_know(name: str, port: object, family: int, kind: int) -> list[tuple[Any, ...]]:
        looked_up.append((name, threading.current_thread().name))
        return [(socket.AF_INET, kind, 6, "", ("127.0.0.1", 0))]

    unknown = make_datastore(postgres_db.replace("@127.0.0.1:", "@db.invalid:"), getaddrinfo=only_we_know)
    await unknown.start()
    assert await unknown.get_app("by-name") == App("by-name")
    assert looked_up and all(n == "db.invalid" and "postgres-resolve" in t for n, t in looked_up)


@pytest_twisted.ensureDeferred
async def test_concurrent_starts_on_an_empty_database_migrate_once(postgres_db: str, make_datastore: Callable[..., PostgresDatastore]) -> None:
    """Several nodes starting together take turns on the advisory lock: all start, the
    schema is applied exactly once, and every node sees the same data."""
    nodes = [make_datastore(postgres_db) for _ in range(4)]
    await defer.gatherResults([defer.Deferred.fromCoroutine(n.start()) for n in nodes], consumeErrors=True)

    conn = psycopg2.connect(postgres_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [r[0] for r in cur.fetchall()] == [m.version for m in migrations("postgres")]
    finally:
        conn.close()
    await nodes[0].insert_app(App("shared"))
    for node in nodes:
        assert await node.get_app("shared") == App("shared")


@pytest_twisted.ensureDeferred
async def test_restart_on_a_migrated_database_keeps_data(postgres_db: str, make_datastore: Callable[..., PostgresDatastore]) -> None:
    first = make_datastore(postgres_db)
    await first.start()
    await first.insert_app(App("kept", {"k": "v"}))
    await first.close()
    second = make_datastore(postgres_db)
    await second.start()
    assert await second.get_app("kept") == App("kept", {"k": "v"})


@pytest_twisted.ensureDeferred
async def test_constraint_violations_map_to_domain_errors(postgres_db: str, make_datastore: Callable[..., PostgresDatastore]) -> None:
    """Unique and foreign-key violations come out as domain errors, never psycopg2's."""
    ds = make_datastore(postgres_db)
    await ds.start()
    await ds.insert_app(App("a"))
    with pytest.raises(AppAlreadyExists):
        await ds.insert_app(App("a"))
    await ds.insert_route(Route("a", "/r", "img"))
    with pytest.raises(RouteAlreadyExists):
        await ds.insert_route(Route("a", "/r", "img"))
    with pytest.raises(AppNotFound):
        await ds.insert_route(Route("ghost", "/r", "img"))
    with pytest.raises(AppHasRoutes):
        await ds.remove_app("a")
    # The pool is still healthy after the failed statements.
    assert (await ds.get_route("a", "/r")).image == "img"


@pytest_twisted.ensureDeferred
async def test_value_postgres_cannot_store_is_a_ValidationError(postgres_db: str, make_datastore: Callable[..., PostgresDatastore]) -> None:
    """JSONB refuses \\u0000; that is bad input (400), not an outage."""
    ds = make_datastore(postgres_db)
    await ds.start()
    with pytest.raises(ValidationError):
        await ds.insert_app(App("a", {"k": "nul\u0000"}))
    await ds.insert_app(App("a"))


@pytest_twisted.ensureDeferred
async def test_call_stuck_on_a_lock_gives_DatastoreUnavailable_at_its_deadline(postgres_db: str, make_datastore: Callable[..., PostgresDatastore]) -> None:
    """Every call has a deadline; after it the pool replaces the stuck connection."""
    ds = make_datastore(postgres_db, timeout=1.0)
    await ds.start()
    await ds.insert_app(App("a"))
    blocker = psycopg2.connect(postgres_db)
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT * FROM apps WHERE name = 'a' FOR UPDATE")
            error, took = await _timed(ds.update_app("a", lambda app: app))
            assert isinstance(error, DatastoreUnavailable) and 0.9 < took < 3
    finally:
        blocker.rollback()
        blocker.close()
    for _ in range(50):
        try:
            await ds.update_app("a", lambda app: App("a", {"after": "1"}))
            break
        except DatastoreUnavailable:
            await _sleep(0.1)
    assert await ds.get_app("a") == App("a", {"after": "1"})


@pytest_twisted.ensureDeferred
async def test_start_against_a_stopped_server_fails_fast(make_datastore: Callable[..., PostgresDatastore]) -> None:
    from tests.servers import free_port

    ds = make_datastore(f"postgres://nobody@127.0.0.1:{free_port()}/db", connect_timeout=2.0)
    error, took = await _timed(ds.start())
    assert isinstance(error, DatastoreUnavailable) and took < 3
    assert str(error) == "datastore unavailable"


@pytest_twisted.ensureDeferred
async def test_stopped_postgres_gives_DatastoreUnavailable_quickly_then_recovers(
    outage_cluster: PostgresCluster, outage_db: str, make_datastore: Callable[..., PostgresDatastore]
) -> None:
    """During an outage every call fails fast with DatastoreUnavailable; once Postgres is
    back, the same datastore object serves again without being recreated."""
    ds = make_datastore(outage_db, max_reconnect_delay=1.0)
    await ds.start()
    await ds.insert_app(App("a", {"k": "v"}))

    await threads.deferToThread(outage_cluster.stop)
    calls: list[Callable[[], Awaitable[object]]] = [
        ds.ping,
        lambda: ds.get_app("a"),
        lambda: ds.insert_app(App("b")),
        lambda: ds.update_app("a", lambda app: app),
        ds.get_routes,
        ds.ping,
    ]
    for call in calls:
        error, took = await _timed(call())
        assert isinstance(error, DatastoreUnavailable), error
        assert str(error) == "datastore unavailable"
        assert took < 2.0

    await threads.deferToThread(outage_cluster.start)
    deadline = time.monotonic() + 15
    while True:
        error, _ = await _timed(ds.ping())
        if error is None:
            break
        assert isinstance(error, DatastoreUnavailable)
        assert time.monotonic() < deadline, "datastore did not recover within 15 s"
        await _sleep(0.2)
    # Every pooled connection is back, not just one.
    for _ in range(8):
        assert await ds.get_app("a") == App("a", {"k": "v"})
    await ds.insert_app(App("b"))


@pytest_twisted.ensureDeferred
async def test_killed_backend_is_replaced_without_a_restart(outage_cluster: PostgresCluster, outage_db: str, make_datastore: Callable[..., PostgresDatastore]) -> None:
    """A connection killed under the pool (failover, pg_terminate_backend, idle-kill)
    fails at most the calls that were on it; the pool reconnects by itself."""
    ds = make_datastore(outage_db, max_reconnect_delay=1.0)
    await ds.start()
    await ds.insert_app(App("a"))
    conn = psycopg2.connect(outage_cluster.url(outage_db.rsplit("/", 1)[1]))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cur.fetchall()
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    ok = 0
    while ok < 8:
        error, took = await _timed(ds.get_app("a"))
        assert took < 2.0
        if error is None:
            ok += 1
        else:
            assert isinstance(error, DatastoreUnavailable)
            assert time.monotonic() < deadline, "pool did not recover within 10 s"
            await _sleep(0.1)


@pytest_twisted.ensureDeferred
async def test_cancelled_call_gives_its_connection_back(postgres_db: str, make_datastore: Callable[..., PostgresDatastore]) -> None:
    """A caller that gives up (an HTTP client that hung up) gets CancelledError at once,
    and the pool's only connection serves the next call once the first one finishes."""
    ds = make_datastore(postgres_db, pool_size=1, timeout=3.0)
    await ds.start()
    await ds.insert_app(App("a"))
    blocker = psycopg2.connect(postgres_db)
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT * FROM apps WHERE name = 'a' FOR UPDATE")
            call = defer.Deferred.fromCoroutine(ds.update_app("a", lambda app: App("a", {"first": "1"})))
            await _sleep(0.2)
            call.cancel()
            with pytest.raises(defer.CancelledError):
                await call
    finally:
        blocker.rollback()
        blocker.close()
    error, took = await _timed(ds.get_app("a"))
    assert error is None and took < 1
    assert await ds.get_app("a") == App("a", {"first": "1"})
