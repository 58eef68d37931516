"""Backends over TLS (SPEC §9), against a real Redis and a real Postgres with TLS on and a
CA made here (``tests/tlscerts.py``).

The server certificate names ``localhost`` and ``db.internal.test`` (DNS names only, no
IP address), signed by ``ca``; ``other`` is a second CA that signed nothing of theirs.
What must hold: the queue and the database work over TLS with the right CA; a wrong CA
or a host name the certificate does not carry is refused (``QueueUnavailable`` /
``DatastoreUnavailable`` and one clear log line), never silently accepted; Postgres is
checked against the *host name* even though the pool hands libpq a numeric ``hostaddr``
(``storage/pghosts.py``); and a real daemon on ``rediss://`` and ``verify-full`` serves
an async call end to end.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, TypeVar
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import implementer

from ironfunctions.errors import DatastoreUnavailable, QueueUnavailable
from ironfunctions.mq.interface import QueueItem
from ironfunctions.mq.redis import RedisQueue
from ironfunctions.storage.postgres import PostgresDatabase
from tests.daemon import DaemonFactory
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import (
    PostgresCluster,
    RedisServer,
    ServerTLS,
    start_postgres_cluster,
    start_redis_server,
    stop_postgres_cluster,
    stop_redis_server,
)
from tests.tlscerts import make_ca

_T = TypeVar("_T")
SERVER_NAMES = ("localhost", "db.internal.test")


def _block(coro: Coroutine[Any, Any, _T]) -> _T:
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(coro))


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = str(tmp_path_factory.mktemp("pki"))
    ca = make_ca(folder, "ca")
    other = make_ca(folder, "other")
    server = ca.issue("server", dns=SERVER_NAMES, ips=())
    impostor = other.issue("impostor", dns=SERVER_NAMES, ips=())
    return {"ca": ca.cert, "other": other.cert, "cert": server.cert, "key": server.key,
            "impostor_cert": impostor.cert, "impostor_key": impostor.key}


@pytest.fixture(scope="module")
def tls_redis(pki: dict[str, str]) -> Iterator[RedisServer]:
    server = start_redis_server(tls=ServerTLS(pki["cert"], pki["key"], pki["ca"]))
    yield server
    stop_redis_server(server)


@pytest.fixture(scope="module")
def tls_postgres(pki: dict[str, str]) -> Iterator[PostgresCluster]:
    cluster = start_postgres_cluster(tls=ServerTLS(pki["cert"], pki["key"], pki["ca"]))
    yield cluster
    stop_postgres_cluster(cluster)


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line emitted during the test, formatted."""
    lines: list[str] = []

    @implementer(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# -- Redis: rediss://


def rediss(server: RedisServer, ca: str, host: str = "localhost", extra: str = "") -> str:
    prefix = "t" + uuid.uuid4().hex[:8]
    return f"rediss://{host}:{server.port}/0?ssl_ca_certs={quote(ca)}&prefix={prefix}{extra}"


@pytest.fixture
def queues() -> Iterator[Callable[..., RedisQueue]]:
    made: list[RedisQueue] = []

    def make(url: str, **options: Any) -> RedisQueue:
        queue = RedisQueue.from_url(url, _reactor(), **options)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        _block(queue.close())


@pytest_twisted.ensureDeferred
async def test_queue_works_over_rediss_with_the_ca(tls_redis: RedisServer, pki: dict[str, str],
                                                   queues: Callable[..., RedisQueue]) -> None:
    """The server has no plain port: everything here went over TLS, the pub/sub
    connection that wakes waiting reservers included."""
    url = rediss(tls_redis, pki["ca"])
    queue, other_node = queues(url, poll_interval=30), queues(url, poll_interval=30)
    await queue.start()
    await other_node.start()
    assert await queue.push(QueueItem("c1", "myapp", "/hello", 0, {"body": "over tls"}))
    r = await other_node.reserve(30)
    assert r is not None and r.item.payload == {"body": "over tls"}
    await other_node.ack(r)
    assert await queue.depth() == 0
    started = time.monotonic()
    waiting = defer.Deferred.fromCoroutine(other_node.reserve(30, timeout=10))
    await task.deferLater(_reactor(), 0.3, lambda: None)
    await queue.push(QueueItem("c2", "myapp", "/hello", 0, {}))
    woken = await waiting
    assert woken is not None and woken.call_id == "c2"
    assert time.monotonic() - started < 5  # woken by the notification, not the 30 s poll


@pytest.mark.parametrize("case", ["wrong CA", "name not in the certificate"])
@pytest_twisted.ensureDeferred
async def test_queue_refuses_a_server_it_cannot_verify(case: str, tls_redis: RedisServer, pki: dict[str, str],
                                                 queues: Callable[..., RedisQueue], logged: list[str]) -> None:
    if case == "wrong CA":
        url, says = rediss(tls_redis, pki["other"]), "certificate verify failed"
    else:  # right CA, but the certificate names localhost, not 127.0.0.1
        url, says = rediss(tls_redis, pki["ca"], host="127.0.0.1"), "does not match"
    queue = queues(url, timeout=2)
    with pytest.raises(QueueUnavailable):
        await queue.start()
    with pytest.raises(QueueUnavailable):
        await queue.push(QueueItem("c1", "myapp", "/hello", 0, {}))
    failures = [line for line in logged if line.startswith("Redis TLS connection to")]
    assert failures, logged
    assert says in failures[0], failures
    server = "127.0.0.1" if case != "wrong CA" else "localhost"
    assert failures[0].startswith(f"Redis TLS connection to {server}:{tls_redis.port} failed:")
    assert len(failures) <= 2, failures  # not one per reconnection (one per distinct reason)


@pytest_twisted.ensureDeferred
async def test_queue_keeps_retrying_after_a_failed_handshake(pki: dict[str, str],
                                                             queues: Callable[..., RedisQueue]) -> None:
    """A failed handshake is retried like a refused connection: once the server shows a
    certificate the CA signed (say, after a botched rotation), the queue is back, with no
    restart. (txredisapi gives up for good if its first command fails, so the protocol
    must not see a connection before the handshake is done.)"""
    server = start_redis_server(tls=ServerTLS(pki["impostor_cert"], pki["impostor_key"], pki["other"]))
    try:
        queue = queues(rediss(server, pki["ca"]), timeout=2, max_retry_delay=0.5)
        with pytest.raises(QueueUnavailable):
            await queue.start()
        await threads.deferToThread(server.stop)
        server.tls = ServerTLS(pki["cert"], pki["key"], pki["ca"])
        await threads.deferToThread(server.start)
        deadline = time.monotonic() + 15
        while True:
            try:
                await queue.ping()
                break
            except QueueUnavailable:
                assert time.monotonic() < deadline, "the queue never reconnected"
                await task.deferLater(_reactor(), 0.2, lambda: None)
        assert await queue.push(QueueItem("c1", "myapp", "/hello", 0, {}))
    finally:
        await threads.deferToThread(stop_redis_server, server)


@pytest_twisted.ensureDeferred
async def test_ssl_cert_reqs_none_turns_verification_off_and_says_so(
    tls_redis: RedisServer, pki: dict[str, str], queues: Callable[..., RedisQueue], logged: list[str]
) -> None:
    queue = queues(rediss(tls_redis, pki["other"], extra="&ssl_cert_reqs=none"), timeout=5)
    await queue.start()
    assert any("ssl_cert_reqs=none" in line and "NOT verified" in line for line in logged), logged


@pytest_twisted.ensureDeferred
async def test_a_plain_redis_url_to_a_tls_server_fails_cleanly(tls_redis: RedisServer,
                                                               queues: Callable[..., RedisQueue]) -> None:
    queue = queues(f"redis://127.0.0.1:{tls_redis.port}/0", timeout=2)
    with pytest.raises(QueueUnavailable):
        await queue.start()


# -- Postgres: sslmode=verify-full


def fake_resolver(names: dict[str, str]) -> Callable[..., list[tuple[Any, ...]]]:
    """getaddrinfo for names libpq itself could not resolve: proof that it connected to
    the ``hostaddr`` we resolved and checked the certificate against the name."""

    def getaddrinfo(host: str, *args: Any) -> list[tuple[Any, ...]]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], 0))]

    return getaddrinfo


@pytest.fixture
def tls_db(tls_postgres: PostgresCluster) -> Iterator[str]:
    url = tls_postgres.create_database()
    yield url.rsplit("/", 1)[1]
    tls_postgres.drop_database(url)


def pg_url(cluster: PostgresCluster, db: str, host: str, ca: str, sslmode: str = "verify-full") -> str:
    return f"postgres://{cluster.user}@{host}:{cluster.port}/{db}?sslmode={sslmode}&sslrootcert={quote(ca)}"


@pytest.fixture
def databases() -> Iterator[Callable[..., PostgresDatabase]]:
    made: list[PostgresDatabase] = []

    def make(url: str, **kwargs: Any) -> PostgresDatabase:
        db = PostgresDatabase(url, _reactor(), timeout=5, connect_timeout=5, **kwargs)
        made.append(db)
        return db

    yield make
    for db in made:
        _block(db.close())


@pytest.mark.parametrize("host", ["localhost", "db.internal.test"])
@pytest_twisted.ensureDeferred
async def test_postgres_verify_full_works_with_the_ca(host: str, tls_postgres: PostgresCluster, tls_db: str,
                                                pki: dict[str, str],
                                                databases: Callable[..., PostgresDatabase]) -> None:
    names = {"localhost": "127.0.0.1", "db.internal.test": "127.0.0.1"}
    db = databases(pg_url(tls_postgres, tls_db, host, pki["ca"]), getaddrinfo=fake_resolver(names))
    await db.open()
    rows = await db.query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert rows[0][0] is True and rows[0][1].startswith("TLS"), rows


@pytest.mark.parametrize("case", ["wrong CA", "address not in the certificate", "name not in the certificate"])
@pytest_twisted.ensureDeferred
async def test_postgres_verify_full_refuses_a_server_it_cannot_verify(
    case: str, tls_postgres: PostgresCluster, tls_db: str, pki: dict[str, str],
    databases: Callable[..., PostgresDatabase], logged: list[str],
) -> None:
    names = {"localhost": "127.0.0.1", "other.internal.test": "127.0.0.1"}
    host, ca, says = {
        "wrong CA": ("localhost", pki["other"], "certificate verify failed"),
        "address not in the certificate": ("127.0.0.1", pki["ca"], 'does not match host name "127.0.0.1"'),
        "name not in the certificate": ("other.internal.test", pki["ca"],
                                        'does not match host name "other.internal.test"'),
    }[case]
    db = databases(pg_url(tls_postgres, tls_db, host, ca), getaddrinfo=fake_resolver(names))
    with pytest.raises(DatastoreUnavailable):
        await db.open()
    failures = [line for line in logged if line.startswith("Cannot start the Postgres datastore")]
    assert failures and says in failures[0], logged


# -- A real daemon on both


def test_daemon_on_rediss_and_verify_full_runs_an_async_call(
    test_images: dict[str, str], daemon_factory: DaemonFactory, tls_redis: RedisServer,
    tls_postgres: PostgresCluster, tls_db: str, pki: dict[str, str],
) -> None:
    env = {"MQ_URL": rediss(tls_redis, pki["ca"]), "DB_URL": pg_url(tls_postgres, tls_db, "localhost", pki["ca"]),
           "ASYNC_RETRY_DELAY": "100ms"}
    daemon = daemon_factory(env=env)
    assert daemon.get("/health").status == 200
    daemon.add_route("myapp", "/echo", image_tag("cat"), type="async")
    reply = daemon.post("/r/myapp/echo", b"over tls both ways")
    assert reply.status == 202, reply.body
    call_id = reply.json()["call_id"]
    deadline = time.monotonic() + 60
    record: Any = None
    while time.monotonic() < deadline:
        record = daemon.get(f"/v1/apps/myapp/calls/{call_id}").json().get("call")
        if record and record["status"] in ("success", "error", "timeout", "cancelled"):
            break
        time.sleep(0.05)
    assert record and record["status"] == "success", record
    assert record["body"] == "over tls both ways"
    assert "Redis TLS connection" not in daemon.log()


def test_daemon_refuses_to_start_on_an_unreadable_ca(daemon_factory: DaemonFactory, tmp_path: Path,
                                                     tls_redis: RedisServer) -> None:
    missing = tmp_path / "missing-ca.pem"
    daemon = daemon_factory(env={"MQ_URL": rediss(tls_redis, str(missing))}, start=False)
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 2
    assert f"MQ_URL: ssl_ca_certs: cannot read {missing}" in daemon.log()
