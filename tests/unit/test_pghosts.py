"""Postgres host names are resolved off the reactor thread and handed to libpq as
``hostaddr`` (no server, no socket: a fake getaddrinfo and a connection factory that
records what libpq would get)."""

from __future__ import annotations

import socket
from typing import Any, Callable, Mapping, NoReturn, Sequence, cast

import psycopg2
import pytest
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ironfunctions.storage.pghosts import GetAddrInfo, Resolver, address_params, names_in
from ironfunctions.storage.pgpool import PostgresPool


def test_a_name_becomes_every_address_with_the_name_kept_for_tls() -> None:
    """One entry per address (libpq tries them in turn, as after its own look-up);
    ``host`` stays, for certificate checks and SNI."""
    params = {"host": "db.example", "port": "5432", "sslmode": "verify-full"}
    extra = address_params(params, {"db.example": ["::1", "127.0.0.1"]})
    assert extra == {"host": "db.example,db.example", "hostaddr": "::1,127.0.0.1", "port": "5432,5432"}


def test_lists_of_hosts_and_ports_stay_in_step() -> None:
    params = {"host": "a.example,10.0.0.9,/run/pg,b.example", "port": "5432,5433,5434,5435"}
    extra = address_params(params, {"a.example": ["10.0.0.1"], "b.example": ["10.0.0.2", "10.0.0.3"]})
    assert extra == {
        "host": "a.example,10.0.0.9,/run/pg,b.example,b.example",
        "hostaddr": "10.0.0.1,10.0.0.9,,10.0.0.2,10.0.0.3",
        "port": "5432,5433,5434,5435,5435",
    }


def test_nothing_to_resolve_adds_nothing() -> None:
    """Addresses, Unix sockets, no host at all, or a hostaddr the operator set."""
    for params in ({"host": "127.0.0.1"}, {"host": "::1"}, {"host": "/tmp"}, {"dbname": "x"},
                   {"host": "db.example", "hostaddr": "10.0.0.1"}):
        assert names_in(params) == []
        assert address_params(params, {}) == {}


def test_a_name_that_does_not_resolve_is_skipped_and_none_left_is_an_OperationalError() -> None:
    params = {"host": "gone.example,db.example"}
    assert address_params(params, {"gone.example": [], "db.example": ["10.0.0.1"]}) == {
        "host": "db.example", "hostaddr": "10.0.0.1",
    }
    with pytest.raises(psycopg2.OperationalError, match="could not translate host name"):
        address_params({"host": "gone.example"}, {"gone.example": []})


def _addresses(*addresses: str) -> GetAddrInfo:
    def getaddrinfo(name: str, port: object, family: int, kind: int) -> list[tuple[Any, ...]]:
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, kind, 6, "", (a, 0)) for a in addresses]

    return getaddrinfo


def test_lookup_keeps_getaddrinfo_order_without_duplicates_and_survives_errors() -> None:
    assert Resolver(Clock(), _addresses("::1", "127.0.0.1", "127.0.0.1"))._lookup("localhost") == ["::1", "127.0.0.1"]
    assert Resolver(Clock(), _addresses())._lookup("gone.example") == []


class ImmediatePool:
    """A thread pool that runs work at once, in the caller's thread, and counts it."""

    started = joined = False

    def __init__(self) -> None:
        self.ran: list[str] = []

    def start(self) -> None:
        self.started = True

    def callInThreadWithCallback(self, on_result: Callable[[bool, object], object], fn: Callable[..., object],
                                 *args: Any, **kwargs: Any) -> None:
        self.ran.append(fn.__name__)
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            on_result(False, Failure(e))
        else:
            on_result(True, result)


class FakeReactor(Clock):
    def callFromThread(self, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        fn(*args, **kwargs)


class _Refused(Exception):
    """What the recording connection factory raises instead of connecting."""


def recording_pool(dsn: str, resolver: Resolver, connected: list[dict[str, str]], **kwargs: Any) -> PostgresPool:
    """A PostgresPool of one connection whose libpq connect records its parameters."""

    class RecordingPool(PostgresPool):
        def connectionFactory(self, reactor: Any, cooperator: Any) -> Any:
            conn = super().connectionFactory(reactor, cooperator)

            def record(*args: Any, **kw: Any) -> NoReturn:
                connected.append(parse_dsn(make_dsn(*args, **{k: v for k, v in kw.items() if k != "async"})))
                raise _Refused()

            conn.connectionFactory = record
            return conn

    return RecordingPool(dsn, resolver._reactor, size=1, timeout=5, connect_timeout=5, resolver=resolver, **kwargs)


def test_every_connection_attempt_resolves_on_the_resolvers_pool_and_passes_hostaddr() -> None:
    """libpq gets ``host`` and ``hostaddr``; the look-up ran on the resolver's pool;
    reconnection keeps the name (not the address), so each reconnection resolves again."""
    connected: list[dict[str, str]]
    reactor, threads, connected = FakeReactor(), ImmediatePool(), []
    resolver = Resolver(reactor, _addresses("127.0.0.1"), pool=cast(ThreadPool, threads))
    pool = recording_pool("postgres://u@db.example:5439/x", resolver, connected,
                          connect_kwargs={"application_name": "t"})
    resolver.start()
    conn = next(iter(pool.connections))
    failures: list[Failure] = []
    conn.connect("postgres://u@db.example:5439/x", application_name="t").addErrback(failures.append)
    # What _Detector does to reconnect: connect again with the arguments it stored.
    conn.connect(*conn.detector._connargs, **conn.detector._connkw).addErrback(failures.append)
    assert [f.check(_Refused) for f in failures] == [_Refused, _Refused]
    assert threads.ran == ["_lookup", "_lookup"]
    for params in connected:
        assert (params["host"], params["hostaddr"], params["port"]) == ("db.example", "127.0.0.1", "5439")
        assert params["application_name"] == "t"
    assert conn.detector._connkw == {"application_name": "t"}


def test_a_connection_closed_while_resolving_does_not_connect_later() -> None:
    connected: list[dict[str, str]]
    reactor, connected = FakeReactor(), []
    held: Deferred[None] = Deferred()

    class HeldResolver(Resolver):
        async def connect_params(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
            await held
            return {"hostaddr": "127.0.0.1"}

    pool = recording_pool("postgres://u@db.example/x", HeldResolver(reactor), connected)
    conn = next(iter(pool.connections))
    failures: list[Failure] = []
    conn.connect("postgres://u@db.example/x").addErrback(failures.append)
    conn.close()  # no psycopg2 connection yet: must not raise
    held.callback(None)
    assert connected == [] and failures[0].check(CancelledError)
