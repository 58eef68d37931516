"""``StatsdMetrics``: statsd datagrams over UDP (``STATSD_URL``).

The statsd host is resolved when the service starts and again every ``resolve_every``
seconds, off the reactor thread (``getaddrinfo`` on the reactor's thread pool, where
Twisted's own resolver runs it); each new address gets a connected UDP socket, and
a datagram is one non-blocking ``send`` on it. Nothing per datagram resolves a name
or blocks: before the first resolution, or when the host cannot be resolved, the
figures are dropped (and counted), as statsd expects lost datagrams.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from ironfunctions.metrics.interface import COUNT, GAUGE, TIME, IMetrics, statsd_names

# (family, socket address) of the host, as getaddrinfo gives them.
Address = tuple[int, Any]
Resolve = Callable[[str, int], "Deferred[list[Address]]"]
SocketFactory = Callable[[int], socket.socket]

RESOLVE_EVERY_S = 60.0
RESOLVE_TIMEOUT_S = 10.0


def thread_resolver(reactor: Any) -> Resolve:
    """``getaddrinfo`` for UDP on the reactor's thread pool (Twisted's resolver's own
    place; STYLE rule 11): never on the reactor thread."""

    def lookup(host: str, port: int) -> list[Address]:
        return [
            (family, sockaddr)
            for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
        ]

    def resolve(host: str, port: int) -> Deferred[list[Address]]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), lookup, host, port)

    return resolve


def udp_socket(family: int) -> socket.socket:
    """A non-blocking UDP socket of ``family``."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


@implementer(IMetrics)
class StatsdMetrics(Service):
    """Sends statsd datagrams (``name:value|c``, ``|g``, ``|ms``) over UDP; a
    ``Service`` that keeps the statsd host resolved.

    :param clock: runs the re-resolution timer.
    :param host: statsd's host name or address; :param port: its UDP port.
    :param resolve: ``(host, port) -> Deferred[[(family, sockaddr), ...]]``
        (default: ``thread_resolver(clock)``, which needs a full reactor).
    :param socket_factory: a new non-blocking UDP socket of a family (tests pass fakes).
    :param resolve_every: seconds between resolutions (a moved statsd is followed).

    ``sent``, ``dropped`` (no address yet) and ``send_errors`` count datagrams; a send
    error (e.g. ``ECONNREFUSED`` after statsd went away) is counted and ignored: metric
    calls never raise.
    """

    name = "statsd"
    log = Logger(namespace="ironfunctions.metrics")
    _TYPES = {COUNT: "c", GAUGE: "g", TIME: "ms"}

    def __init__(
        self,
        clock: IReactorTime,
        host: str,
        port: int,
        prefix: str = "",
        resolve: Resolve | None = None,
        socket_factory: SocketFactory = udp_socket,
        resolve_every: float = RESOLVE_EVERY_S,
    ) -> None:
        self._clock = clock
        self._host = host
        self._port = port
        self._prefix = prefix
        self._resolve = resolve or thread_resolver(clock)
        self._socket_factory = socket_factory
        self._resolve_every = resolve_every
        self._loop: LoopingCall | None = None
        self._sock: socket.socket | None = None
        self._address: Address | None = None
        self._failing = False
        self.sent = 0
        self.dropped = 0
        self.send_errors = 0

    # -- Service

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self.resolve_now)
        self._loop.clock = self._clock
        self._loop.start(self._resolve_every, now=True).addErrback(
            lambda f: self.log.failure("statsd resolution loop died", f)
        )

    def stopService(self) -> None:  # noqa: N802 (Twisted API)
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock, self._address = None, None

    # -- resolution

    def resolve_now(self) -> Deferred[None]:
        """Resolve the host and, if its address changed, connect a new socket to it.
        Fires when done; never fails (a failure is logged once per outage, and the
        previous address is kept)."""
        resolving = self._resolve(self._host, self._port)
        resolving.addTimeout(RESOLVE_TIMEOUT_S, self._clock)
        done = resolving.addCallback(self._resolved)
        done.addErrback(self._not_resolved)
        return done

    def _resolved(self, addresses: list[Address]) -> None:
        if self._sock is not None and self._address in addresses:
            self._recovered()
            return  # still a valid address: keep its socket
        error: OSError = OSError(f"no address for {self._host}")
        for address in addresses:  # the first one this host can route to
            sock = self._socket_factory(address[0])
            try:
                sock.connect(address[1])  # UDP: no packet sent, only the peer set
            except OSError as e:
                sock.close()
                error = e
                continue
            old, self._sock, self._address = self._sock, sock, address
            if old is not None:
                old.close()
            self._recovered()
            return
        raise error

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self.log.info("statsd host {host} reachable again", host=self._host)

    def _not_resolved(self, failure: Any) -> None:
        if not self._failing:
            self._failing = True
            self.log.warn("Cannot reach statsd host {host}: {error}; metrics to statsd are "
                          "dropped until it resolves", host=self._host, error=str(failure.value))

    # -- IMetrics

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        """One datagram, one metric per line (statsd's multi-metric packets)."""
        self._many(samples, fields)

    def _many(self, samples: Sequence[tuple[str, str, int]], fields: dict[str, Any]) -> None:
        sock = self._sock
        if sock is None:
            self.dropped += 1
            return
        data = "\n".join(
            f"{self._prefix}{metric}:{int(value)}|{self._TYPES[kind]}"
            for kind, name, value in samples
            for metric in statsd_names(name, fields)
        ).encode()
        try:
            sock.send(data)
            self.sent += 1
        except OSError:
            self.send_errors += 1  # statsd is best effort by design

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        self._many([(COUNT, name, value)], fields)

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        self._many([(GAUGE, name, value)], fields)

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        self._many([(TIME, name, ms)], fields)
