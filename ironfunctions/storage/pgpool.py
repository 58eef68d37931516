"""A typed adapter over txpostgres: a pool of asynchronous psycopg2 connections that
notices dead connections, reconnects them in the background, and puts a deadline on
every call.

txpostgres is untyped, and its ``ConnectionPool`` builds connections without a
``DeadConnectionDetector``, hands out dead connections as readily as live ones, has no
timeouts, and only closes idle connections. ``PostgresPool`` keeps its connection set
and semaphore and fixes those four things; its connections also resolve host names off
the reactor thread (``pghosts``). The ``storage`` modules (and the Postgres stores'
error maps) are the only places that import txpostgres or psycopg2.

Failure modes: ``PostgresPool.run`` fails with ``DatastoreUnavailable`` when the server
cannot be reached, a connection is being re-established, or the deadline passes; SQL
errors (``psycopg2.IntegrityError``, ``DataError``, ...) and whatever the work itself
raises pass through for the caller to translate.
"""

from __future__ import annotations

import random
from typing import Any, Callable, TypeVar

import psycopg2
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres

from ironfunctions.errors import DatastoreUnavailable
from ironfunctions.storage.pghosts import Resolver

log = Logger()

T = TypeVar("T")


class CallTimedOut(Exception):
    """A call or a connection attempt ran past its deadline."""


def is_connection_failure(failure: Failure) -> bool:
    """Whether ``failure`` means the connection it happened on is unusable.

    Errors libpq raises itself carry no SQLSTATE; a server that is shutting down sends
    class 57P (operator intervention) or 08 (connection exception). Other operational
    errors (deadlock, serialization failure, query cancelled) leave the session usable.
    """
    error = failure.value
    if isinstance(error, (psycopg2.InterfaceError, txpostgres.RollbackFailed, CallTimedOut)):
        return True
    if isinstance(error, psycopg2.OperationalError):
        code = error.pgcode
        return code is None or code.startswith(("57P", "08"))
    return False


def describe(error: BaseException | None) -> str:
    """The first line of an error's message (libpq's span several), or its type.
    A ``FirstError`` (txpostgres opens its pool with a ``DeferredList``) is described
    by the error it wraps, not by its repr with a traceback in it."""
    while isinstance(error, defer.FirstError):
        error = error.subFailure.value
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def _unavailable(failure: Failure) -> bool:
    return is_connection_failure(failure) or isinstance(
        failure.value, (reconnection.ConnectionDead, ConnectionDone)
    )


def with_deadline(
    d: defer.Deferred[T], seconds: float, reactor: Any, on_timeout: Callable[[], object]
) -> defer.Deferred[T]:
    """A Deferred firing like ``d``, or failing with ``CallTimedOut`` after ``seconds``;
    at that point ``on_timeout()`` runs if ``d`` still has not fired.

    ``d`` itself is never cancelled (a txpostgres cancel makes a blocking libpq call), so
    ``on_timeout`` frees what it holds, by closing the connection. Cancelling the result
    answers the caller at once; the deadline still bounds ``d``.
    """
    out: defer.Deferred[T] = defer.Deferred(lambda _: None)

    def expire() -> None:
        if not out.called:
            out.errback(CallTimedOut())
        on_timeout()

    timer = reactor.callLater(seconds, expire)

    def finished(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if out.called:
            return  # the caller gave up or timed out; the late result is dropped
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)

    d.addBoth(finished)
    return out


class _Detector(reconnection.DeadConnectionDetector):  # type: ignore[misc]
    """txpostgres' detector with a bounded connection attempt, jittered backoff capped at
    ``max_delay`` seconds, and a ``stop()`` that ends reconnection for good."""

    def __init__(self, reactor: Any, connect_timeout: float, max_delay: float) -> None:
        super().__init__(deathChecker=is_connection_failure, reactor=reactor)
        self._connect_timeout = connect_timeout
        self._max_delay = max_delay
        self._stopped = False
        self._sleep: defer.Deferred[None] | None = None

    def stop(self) -> None:
        self._stopped = True
        if self._sleep is not None:
            self._sleep.cancel()

    def startReconnecting(self, f: Failure) -> None:
        if self._stopped:
            return
        log.warn("Postgres connection lost ({error}); reconnecting", error=describe(f.value))
        d = defer.Deferred.fromCoroutine(self._reconnect())
        d.addErrback(lambda f: log.failure("Postgres reconnection stopped", f))

    async def _reconnect(self) -> None:
        delay = 0.25
        while not self._stopped:
            conn = self.reconnectable
            try:
                conn.close()
            except Exception:
                pass  # already closed, or never opened
            attempt = conn.connect(*self._connargs, **self._connkw)
            try:
                await with_deadline(attempt, self._connect_timeout, self.reactor, conn.close)
            except Exception:
                self._sleep = deferLater(self.reactor, delay * random.uniform(0.8, 1.2), lambda: None)
                try:
                    await self._sleep
                except defer.CancelledError:
                    return
                finally:
                    self._sleep = None
                delay = min(delay * 2, self._max_delay)
                continue
            if self._stopped:
                conn.close()
                return
            log.info("Postgres connection re-established")
            await self.connectionRecovered()
            return


class _Connection(txpostgres.Connection):  # type: ignore[misc]
    """A txpostgres connection that resolves host names off the reactor thread before
    each connection attempt (``pghosts``), and whose socket errors go to its detector
    instead of escaping ``doRead``/``doWrite`` (where the reactor logs them as
    unhandled)."""

    def __init__(self, reactor: Any, cooperator: Any, detector: _Detector, resolver: Resolver) -> None:
        super().__init__(reactor, cooperator, detector=detector)
        self._resolver = resolver
        self._attempts = 0  # bumped by every connect and close: a stale attempt gives up

    def connect(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Resolve, then connect with ``hostaddr``. The detector keeps the names, not the
        addresses, so every reconnection resolves again (a failover may move a name)."""
        self._attempts += 1
        attempt = self._attempts

        async def resolve_then_connect() -> Any:
            extra = await self._resolver.connect_params(args, kwargs)
            if attempt != self._attempts:
                raise defer.CancelledError("closed while resolving the host name")
            connected = txpostgres.Connection.connect(self, *args, **{**kwargs, **extra})
            if self.detector is not None:
                self.detector.setReconnectable(self, *args, **kwargs)
            return await connected

        return defer.Deferred.fromCoroutine(resolve_then_connect())

    def close(self) -> None:
        self._attempts += 1
        if self._connection is not None:  # None: never connected (e.g. still resolving)
            super().close()

    def doRead(self) -> None:
        self._guarded(super().doRead)

    def doWrite(self) -> None:
        self._guarded(super().doWrite)

    def _guarded(self, io: Callable[[], None]) -> None:
        try:
            io()
        except Exception:
            failure = Failure()
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            self.connectionLost(failure)


class PostgresPool(txpostgres.ConnectionPool):  # type: ignore[misc]
    """``size`` connections to ``dsn``; each call runs on one of them within ``timeout``
    seconds. ``connect_kwargs`` are extra libpq parameters (they override the DSN).
    Host names are looked up by ``resolver`` (default: ``getaddrinfo`` on a small
    thread pool of its own), started by ``open`` and stopped by ``close``."""

    def __init__(
        self,
        dsn: str,
        reactor: Any,
        *,
        size: int,
        timeout: float,
        connect_timeout: float,
        max_reconnect_delay: float = 5.0,
        connect_kwargs: dict[str, Any] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.reactor = reactor
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_reconnect_delay = max_reconnect_delay
        self._resolver = resolver or Resolver(reactor)
        super().__init__(None, dsn, min=size, **(connect_kwargs or {}))
        self._all = list(self.connections)

    def connectionFactory(self, reactor: Any, cooperator: Any) -> Any:
        detector = _Detector(reactor, self._connect_timeout, self._max_reconnect_delay)
        return _Connection(reactor, cooperator, detector, self._resolver)

    async def open(self) -> None:
        """Connect every connection; fail (leaving nothing open) if any cannot."""
        self._resolver.start()
        try:
            await with_deadline(self.start(), self._connect_timeout, self.reactor, lambda: None)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every connection, busy or idle, stop reconnecting, and stop the
        resolver's threads (waiting for a look-up in flight, off the reactor thread)."""
        for conn in self._all:
            conn.detector.stop()
            try:
                conn.close()
            except Exception:
                pass  # never opened
        await self._resolver.stop()

    def run(
        self, work: Callable[[Any], defer.Deferred[T]], timeout: float | None = None
    ) -> defer.Deferred[T]:
        """Run ``work(connection)`` (which calls ``runQuery``, ``runOperation`` or
        ``runInteraction`` on it) on a live connection, within the deadline.

        A call that overruns its deadline has its connection closed and re-opened, so a
        hung server cannot hold the pool; what it did may or may not have committed.
        """
        checked_out: list[Any] = []
        slot = self._semaphore.acquire()

        def on_timeout() -> None:
            if checked_out:
                timed_out = Failure(CallTimedOut())
                checked_out[0].detector.checkForDeadConnection(timed_out)
            else:
                slot.cancel()

        def got_slot(_: object) -> defer.Deferred[T]:
            conn = self._checkout()
            checked_out.append(conn)
            d = defer.maybeDeferred(work, conn)

            def put_back(result: Any) -> Any:
                self.connections.add(conn)
                self._semaphore.release()
                return result

            return d.addBoth(put_back)

        seconds = timeout or self._timeout
        result = with_deadline(slot.addCallback(got_slot), seconds, self.reactor, on_timeout)
        return result.addErrback(self._translate)

    def _checkout(self) -> Any:
        live = [c for c in self.connections if not c.detector.connectionIsDead]
        conn = live[0] if live else next(iter(self.connections))
        self.connections.discard(conn)
        return conn

    @staticmethod
    def _translate(failure: Failure) -> Failure:
        if _unavailable(failure):
            log.debug("Postgres call failed: {error}", error=describe(failure.value))
            return Failure(DatastoreUnavailable())
        return failure
