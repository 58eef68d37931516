"""``redis[s]://[:password@]host:port[/db][?prefix=x]``: a queue many nodes share
(``rediss://``: over TLS, see ``redis_url`` and ``redis_tls``).

Built on txredisapi. Every operation is one Lua script (``redis_scripts.py``), so a
reservation is atomic: concurrent reservers on any node never get the same item, and
an item is never out of both the queue and a lease. Connections reconnect by
themselves (a short back-off, at most ``max_retry_delay``); while none is up, calls
fail at once with ``QueueUnavailable`` instead of hanging, and every call has a
deadline (``timeout``).

Waiting reservers sleep on a pub/sub channel: pushes and releases from any node
publish to it, so a waiting ``reserve`` wakes at once, with no polling. ``poll_interval``
only bounds the wait for a notification lost while the subscriber reconnects.

Other node-to-node messages ride on the same two connections: ``subscribe`` adds a
channel to the subscriber (before ``start``), ``publish`` sends on one (the cancel bus,
``ironfunctions/cancelbus/redis.py``).
"""

from __future__ import annotations

import uuid
from typing import AbstractSet, Any, Callable, Collection

import txredisapi  # untyped: ignore_missing_imports in mypy.ini
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ironfunctions.errors import LeaseLost, QueueFull, QueueUnavailable
import ironfunctions.mq.redis_scripts as lua
from ironfunctions.mq._waiting import Waiters, reserve_loop
from ironfunctions.mq.interface import (
    APPS_SCAN_LIMIT, AppUsage, IMessageQueue, Lease, QueueItem, QueueLimits, Reservation, lease_of,
)
from ironfunctions.mq.redis_tls import client_creator, redis_endpoint
from ironfunctions.mq.redis_url import DEFAULT_PREFIX, RedisTLS, parse_redis_url

_ERRORS = (txredisapi.RedisError, DeferredTimeout, ConnectError, ConnectionLost)


class _WakeProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """The subscriber connection: (re)subscribes to the wake channel (and any channel
    added by ``RedisQueue.subscribe``) each time it connects, wakes the queue's waiting
    reservers on every wake message and hands other messages to their channel's handler."""

    factory: _WakeFactory

    def connectionMade(self) -> Deferred[Any]:  # noqa: N802 (Twisted API)
        d: Deferred[Any] = super().connectionMade()
        d.addCallback(lambda _: self._subscribe())
        return d

    def _subscribe(self) -> None:
        if not self._ready:
            return  # authentication failed; txredisapi logs it
        d = self.subscribe(sorted(self.factory.channels))
        # Wake everyone once subscribed: whatever was pushed while we were
        # disconnected is found by their next try.
        d.addCallback(lambda _: self.factory.on_wake())
        d.addErrback(self._subscribe_failed)

    def _subscribe_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, txredisapi.ConnectionError):
            return  # lost the connection meanwhile: we subscribe again on reconnect
        RedisQueue.log.failure("Subscribing to {channels} failed", failure,
                               channels=" ".join(sorted(self.factory.channels)))

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
        handler = self.factory.channels.get(_text(channel))
        if handler is None:
            return
        try:
            handler(_text(message))
        except Exception:  # one bad handler must not drop the connection
            RedisQueue.log.failure("Handling a message on {channel} failed", channel=_text(channel))


class _WakeFactory(txredisapi.RedisFactory):  # type: ignore[misc]
    protocol = _WakeProtocol

    def __init__(self, channels: dict[str, Callable[[str], None]], on_wake: Any, password: str | None,
                 username: str | None) -> None:
        super().__init__(None, None, 1, isLazy=True, password=password, convertNumbers=False,
                         username=username)
        self.channels = channels  # channel -> handler of its messages (text)
        self.on_wake = on_wake


@implementer(IMessageQueue)
class RedisQueue:
    """The async queue in Redis, shared by every node that points at it."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        poll_interval: float = 5.0,
        pool_size: int = 4,
        max_retry_delay: float = 2.0,
        tls: RedisTLS | None = None,
    ) -> None:
        """``reactor`` provides IReactorTCP and IReactorTime; ``timeout`` bounds every
        call (and the first connection in ``start``); ``tls`` None: in the clear.
        Raise ``ConfigError`` if a TLS file cannot be used."""
        self._reactor = reactor
        self._tls = client_creator(host, tls) if tls is not None else None
        self._host, self._port, self._db = host, port, db
        self._password, self._username = password, username
        self._keys = [f"{prefix}:{name}" for name in lua.KEY_NAMES]
        self._channel = f"{prefix}:wake:{db}"  # pub/sub channels are not per-database
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._pool_size = pool_size
        self._max_retry_delay = max_retry_delay
        self._factory: Any = None
        self._wake_factory: Any = None
        self._waiters = Waiters(reactor)
        self._closed = False
        self._prefix = prefix
        self._channels: dict[str, Callable[[str], None]] = {self._channel: lambda _: self._waiters.wake_all()}

    @classmethod
    def from_url(cls, url: str, reactor: Any, **options: Any) -> RedisQueue:
        """Parse ``redis[s]://[[user]:password@]host[:port][/db][?prefix=x&ssl_...]``
        (``redis_url``). Raise ``ConfigError`` naming MQ_URL."""
        u = parse_redis_url(url)
        return cls(reactor, u.host, u.port, u.db, u.password, u.username, u.prefix, tls=u.tls, **options)

    # -- connections

    def _connect(self) -> None:
        endpoint = redis_endpoint(self._reactor, self._host, self._port, self._timeout, self._tls)
        factories = [
            txredisapi.RedisFactory(
                f"{self._host}:{self._port}", self._db, self._pool_size, isLazy=True,
                password=self._password, username=self._username,
                replyTimeout=self._timeout, convertNumbers=False,
            ),
            _WakeFactory(self._channels, self._waiters.wake_all, self._password, self._username),
        ]
        for factory in factories:
            factory.initialDelay = min(0.1, self._max_retry_delay)
            factory.maxDelay = self._max_retry_delay
            factory.startConnecting(endpoint)
        self._factory, self._wake_factory = factories

    def _unavailable(self, why: object) -> QueueUnavailable:
        return QueueUnavailable(f"queue unavailable: redis at {self._host}:{self._port}: {why}")

    async def _eval(self, script: str, *args: Any, wait_for_connection: bool = False) -> Any:
        """Run ``script`` with the queue's keys; map every failure to QueueUnavailable.
        With no connection up, fail at once unless ``wait_for_connection`` (then wait
        for one, within the timeout)."""
        if self._closed:
            raise QueueUnavailable("queue closed")
        if self._factory is None:
            raise QueueUnavailable("queue not started")
        if self._factory.size == 0 and not wait_for_connection:
            raise self._unavailable("not connected")
        d = self._factory.handler.eval(script, self._keys, [str(a) for a in args])
        return await self._bounded(d)

    async def _bounded(self, d: Deferred[Any]) -> Any:
        """``d``'s result within the timeout; every failure becomes QueueUnavailable."""
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        except _ERRORS as e:
            raise self._unavailable(e) from e

    async def start(self) -> None:
        if self._closed:
            raise QueueUnavailable("queue closed")
        if self._factory is None:
            self._connect()
        await self._eval("return redis.call('PING')", wait_for_connection=True)
        await self._eval(lua.INIT)  # counters for a queue filled before they existed

    # -- pub/sub for other node-to-node messages

    def _channel_name(self, name: str) -> str:
        return f"{self._prefix}:{name}:{self._db}"  # as the wake channel: not per database

    def subscribe(self, name: str, on_message: Callable[[str], None]) -> None:
        """Listen on channel ``name`` (under the queue's prefix): ``on_message(text)``
        for each message, on the subscriber connection, which resubscribes each time it
        reconnects (messages sent while it is down are lost). Call before ``start``."""
        if self._factory is not None:
            raise RuntimeError("subscribe before the queue starts")
        self._channels[self._channel_name(name)] = on_message

    async def publish(self, name: str, message: str) -> int:
        """Send ``message`` on channel ``name``; return how many subscribers (on every
        node, this one included) received it. Raise ``QueueUnavailable``."""
        if self._closed or self._factory is None:
            raise QueueUnavailable("queue not started or closed")
        if self._factory.size == 0:
            raise self._unavailable("not connected")
        return int(await self._bounded(self._factory.handler.publish(self._channel_name(name), message)))

    async def close(self) -> None:
        self._closed = True
        self._waiters.wake_all()
        factories = [f for f in (self._factory, self._wake_factory) if f is not None]
        self._factory = self._wake_factory = None  # closing twice does nothing
        for factory in factories:
            d = factory.disconnect()
            d.addTimeout(self._timeout, self._reactor)
            try:
                await d
            except Exception as e:  # closing anyway: log and go on
                self.log.warn("Closing redis connections failed: {error}", error=str(e))

    # -- IMessageQueue

    async def ping(self) -> None:
        await self._eval("return redis.call('PING')")

    async def push(self, item: QueueItem, delay: float = 0, limits: QueueLimits | None = None) -> bool:
        bounds = () if limits is None else (limits.max_calls, limits.max_bytes)
        added = await self._eval(lua.PUSH, item.call_id, item.to_json(), item.priority,
                                 _ms(delay), self._channel, item.app_name, *bounds)
        if isinstance(added, list):  # refused: {-1, 'calls'|'bytes'}
            assert limits is not None
            if _text(added[1]) == "calls":
                raise QueueFull(item.app_name, "ASYNC_MAX_QUEUED", limits.max_calls)
            raise QueueFull(item.app_name, "ASYNC_MAX_QUEUED_BYTES", limits.max_bytes)
        if int(added):
            self._waiters.wake_all()  # this node's waiters, without the round trip
        return bool(int(added))

    async def _try_reserve(
        self, lease_seconds: float, apps: AbstractSet[str] | None,
    ) -> tuple[Reservation | None, float | None]:
        token = uuid.uuid4().hex
        only = () if apps is None else (APPS_SCAN_LIMIT, *sorted(apps))
        result = await self._eval(lua.RESERVE, max(1, _ms(lease_seconds)), token, *only)
        if int(result[0]) == 1:
            _, call_id, text, attempt = result
            return Reservation(QueueItem.from_json(text), Lease(call_id, token), int(attempt)), None
        next_due = float(result[1])
        return None, None if next_due < 0 else next_due / 1000

    async def reserve(
        self, lease_seconds: float, timeout: float = 0, apps: AbstractSet[str] | None = None,
    ) -> Reservation | None:
        if self._closed:
            raise QueueUnavailable("queue closed")
        return await reserve_loop(
            lambda: self._try_reserve(lease_seconds, apps),
            self._waiters,
            self._reactor,
            timeout,
            lambda: self._closed,
            self._poll_interval,
        )

    async def _held(self, script: str, held: Reservation | Lease, *args: Any) -> None:
        lease = lease_of(held)
        if not int(await self._eval(script, lease.call_id, lease.token, *args)):
            raise LeaseLost()

    async def ack(self, held: Reservation | Lease) -> None:
        await self._held(lua.ACK, held)

    async def renew(self, held: Reservation | Lease, lease_seconds: float) -> None:
        await self._held(lua.RENEW, held, max(1, _ms(lease_seconds)))

    async def release(self, held: Reservation | Lease, delay: float = 0) -> None:
        await self._held(lua.RELEASE, held, _ms(delay), self._channel)
        self._waiters.wake_all()

    async def remove(self, call_id: str) -> bool:
        return bool(int(await self._eval(lua.REMOVE, call_id)))

    async def holds(self, call_ids: Collection[str]) -> set[str]:
        wanted = sorted(set(call_ids))
        found: set[str] = set()
        for start in range(0, len(wanted), 500):  # keep each script short
            chunk = wanted[start:start + 500]
            flags = await self._eval(lua.HOLDS, *chunk)
            found.update(call_id for call_id, flag in zip(chunk, flags) if int(flag))
        return found

    async def try_lead(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take or keep the lease ``name`` for ``owner`` for ``ttl_ms`` (a key set NX
        with a PX expiry); False while another owner's lease lasts. See
        ``runner/reconciler.py``."""
        return bool(int(await self._eval(lua.LEAD, name, owner, max(1, int(ttl_ms)))))

    async def depth(self) -> int:
        return int(await self._eval(lua.DEPTH))

    async def app_usage(self, app_name: str) -> AppUsage:
        calls, size = await self._eval(lua.USAGE, app_name)
        return AppUsage(int(calls), int(size))

    async def rebuild_counts(self) -> None:
        await self._eval(lua.REBUILD)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(0, int(round(seconds * 1000)))
