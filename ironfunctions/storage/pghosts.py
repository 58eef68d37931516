"""Postgres host names resolved off the reactor thread.

libpq looks host names up with a blocking ``getaddrinfo`` inside ``PQconnectStart``,
even for an asynchronous connection such as txpostgres opens on the reactor thread: a
slow DNS server would freeze the whole daemon at every (re)connection. libpq's answer
(its docs on ``hostaddr``) is to pass numeric addresses. So before every connection
attempt the names are resolved on a thread of ours and libpq gets ``hostaddr`` (one
entry per address, ``host`` and ``port`` repeated to match) *and* ``host``, which it
still uses for TLS certificate checks, SNI, Kerberos and the password file.

``address_params`` is the pure part (what to add to the connection parameters);
``Resolver`` runs the look-ups.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable, Mapping, Sequence

import psycopg2
import psycopg2.extensions
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ironfunctions.threads import stop_pools

GetAddrInfo = Callable[..., Sequence[tuple[Any, ...]]]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_name(host: str) -> bool:
    """Whether libpq would look ``host`` up: not empty (default socket), not a Unix
    socket folder (``/...``, or ``@...`` for an abstract one), not an address."""
    return bool(host) and not host.startswith(("/", "@")) and not _is_address(host)


def names_in(params: Mapping[str, str]) -> list[str]:
    """The host names in libpq parameters that libpq would resolve itself: none when
    the parameters already carry ``hostaddr``."""
    if params.get("hostaddr"):
        return []
    return [h for h in params.get("host", "").split(",") if _is_name(h)]


def address_params(params: Mapping[str, str], addresses: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """libpq parameters to add to ``params`` so that libpq resolves nothing: ``hostaddr``
    with every address of every host (``addresses`` maps each name of ``names_in`` to
    its addresses, in the resolver's order; a name that did not resolve maps to none and
    is left out), and ``host``/``port`` lists repeated to match. Empty when there is no
    name to resolve. Raise ``psycopg2.OperationalError`` when no host is left."""
    if not names_in(params):
        return {}
    hosts = params.get("host", "").split(",")
    ports = params.get("port", "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    elif len(ports) != len(hosts):
        return {}  # libpq refuses this itself, with its own message
    out_hosts: list[str] = []
    out_addrs: list[str] = []
    out_ports: list[str] = []
    for host, port in zip(hosts, ports):
        found = addresses.get(host, ()) if _is_name(host) else [host if _is_address(host) else ""]
        for address in found:
            out_hosts.append(host)
            out_addrs.append(address)
            out_ports.append(port)
    if not out_hosts:
        raise psycopg2.OperationalError(f'could not translate host name "{params["host"]}" to address')
    extra = {"host": ",".join(out_hosts), "hostaddr": ",".join(out_addrs)}
    if any(out_ports):
        extra["port"] = ",".join(out_ports)
    return extra


class Resolver:
    """Resolves the host names of connection parameters with ``getaddrinfo`` on a small
    thread pool of its own (never the reactor's: that one already resolves names for
    Twisted, and a hung DNS server must not take it over). ``start`` before use;
    ``stop`` waits, off the reactor thread, for a look-up in flight. ``pool`` is for
    tests (a pool that runs work at once)."""

    def __init__(
        self, reactor: Any, getaddrinfo: GetAddrInfo = socket.getaddrinfo, pool: ThreadPool | None = None
    ) -> None:
        self._reactor = reactor
        self._pool = pool or ThreadPool(minthreads=0, maxthreads=2, name="postgres-resolve")
        self._getaddrinfo = getaddrinfo

    def start(self) -> None:
        if not self._pool.started and not self._pool.joined:
            self._pool.start()

    async def stop(self) -> None:
        if self._pool.started:
            await stop_pools(self._reactor, self._pool)

    async def connect_params(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
        """What to add to ``psycopg2.connect(*args, **kwargs)`` (``args`` is empty or the
        DSN) so that it does not look a name up: see ``address_params``."""
        dsn = str(args[0]) if args else ""
        params = psycopg2.extensions.parse_dsn(
            psycopg2.extensions.make_dsn(dsn, **{k: str(v) for k, v in kwargs.items()})
        )
        addresses = {}
        for name in names_in(params):
            addresses[name] = await deferToThreadPool(self._reactor, self._pool, self._lookup, name)
        return address_params(params, addresses)

    def _lookup(self, name: str) -> list[str]:
        """Every address of ``name`` in the order getaddrinfo gives (libpq tries them in
        turn, as it would have); none if it does not resolve."""
        try:
            infos = self._getaddrinfo(name, None, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []
        found: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in found:
                found.append(address)
        return found
