"""``StatsdMetrics``: statsd datagrams over UDP."""

from __future__ import annotations

import socket
from typing import Any, Sequence

from zope.interface import implementer

from ironfunctions.metrics.interface import COUNT, GAUGE, TIME, IMetrics, statsd_names


@implementer(IMetrics)
class StatsdMetrics:
    """Sends statsd datagrams (``name:value|c``, ``|g``, ``|ms``) over UDP.

    A connected non-blocking UDP socket: ``send`` never blocks, and a lost datagram is
    what statsd expects."""

    _TYPES = {COUNT: "c", GAUGE: "g", TIME: "ms"}

    def __init__(self, host: str, port: int, prefix: str = "") -> None:
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._address = (host, port)
        self._prefix = prefix

    def _send(self, kind: str, name: str, value: int, fields: dict[str, Any]) -> None:
        self._many([(kind, name, value)], fields)

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        """One datagram, one metric per line (statsd's multi-metric packets)."""
        self._many(samples, fields)

    def _many(self, samples: Sequence[tuple[str, str, int]], fields: dict[str, Any]) -> None:
        data = "\n".join(
            f"{self._prefix}{metric}:{int(value)}|{self._TYPES[kind]}"
            for kind, name, value in samples
            for metric in statsd_names(name, fields)
        ).encode()
        try:
            self._sock.sendto(data, self._address)
        except OSError:
            pass  # statsd is best effort by design

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        self._send(COUNT, name, value, fields)

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        self._send(GAUGE, name, value, fields)

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        self._send(TIME, name, ms, fields)
