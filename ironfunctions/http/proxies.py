"""What is believed of ``X-Forwarded-*`` headers, and from whom (SPEC §9, ``TRUSTED_PROXIES``).

A proxy in front of the daemon (HAProxy, nginx...) tells it, in headers, what the
client asked for: ``X-Forwarded-Proto`` (the scheme), ``X-Forwarded-Host`` (the host),
``X-Forwarded-For`` (the client's address), RFC 7239's ``Forwarded``. Any client can
send the same headers, so they are believed only from a peer inside ``TRUSTED_PROXIES``:

- from a trusted peer, ``X-Forwarded-Proto`` (``http`` or ``https``, any case) sets
  ``REQUEST_URL``'s scheme and ``X-Forwarded-Host`` (a plain ``host[:port]``, as
  ``hosts.valid_host`` checks the ``Host`` header) its host; anything else in them is
  ignored (the URL keeps the connection's scheme, the ``Host`` header's host). With
  several values (a chain of proxies: comma-separated, or the header repeated), the
  **last** one counts: it is the one our trusted proxy appended; earlier ones come
  from hops we know nothing of. All forwarding headers reach the function as sent.
- from anyone else every forwarding header (``Forwarded``, ``X-Real-Ip`` and every
  ``X-Forwarded-*`` name) is dropped before the function sees it, so a client can
  spoof neither its address nor its scheme to a function.

``Forwarded`` is passed on (from a trusted peer) but not read for the URL: the shipped
HAProxy config sets ``X-Forwarded-*``, and one source of truth is simpler to reason about.

A peer on a UNIX socket has no address to match: it is never trusted (the safe choice:
a local process is not necessarily the proxy). An IPv4-mapped IPv6 peer
(``::ffff:10.1.2.3``, a dual-stack listener) is matched as its IPv4 address too.

This runs on the ``/r/`` hot path: a request without forwarding headers costs one
substring test of the joined header names (names are in Twisted's canonical form,
``X-Forwarded-Proto``, whatever case the client sent), with or without trusted proxies.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable

Headers = dict[str, list[str]]

_MAX_PEERS = 10_000  # cached peer verdicts; cleared when full (random peers cannot grow it)


def is_forwarding(name: str) -> bool:
    """Whether the header ``name`` (Twisted's canonical form) is a forwarding header."""
    return name.startswith("X-Forwarded-") or name == "Forwarded" or name == "X-Real-Ip"


class TrustedProxies:
    """The ``TRUSTED_PROXIES`` networks (normalised CIDR strings, as ``config_parsers.
    parse_cidrs`` gives them) and a cached verdict per peer address."""

    __slots__ = ("_networks", "_verdicts")

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
        self._verdicts: dict[str, bool] = {}

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an IP address as Twisted gives it, None for a UNIX socket)
        is inside one of the networks."""
        if peer is None or not self._networks:
            return False
        verdict = self._verdicts.get(peer)
        if verdict is None:
            verdict = self._match(peer)
            if len(self._verdicts) >= _MAX_PEERS:
                self._verdicts.clear()
            self._verdicts[peer] = verdict
        return verdict

    def _match(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        # ``in`` is False (not an error) across IP versions.
        return any(candidate in network for network in self._networks for candidate in candidates)


# What a request's forwarding headers amount to: the scheme and host of ``REQUEST_URL``
# (None: not set by a proxy) and the headers a function sees. A plain tuple: this is
# made once per call on the hot path.
Forwarded = tuple[str | None, str | None, Headers]


def forwarded(proxies: TrustedProxies, peer: str | None, headers: Headers,
              valid_host: Callable[[str], bool]) -> Forwarded:
    """The scheme and host of ``REQUEST_URL`` (each None when no trusted proxy set it)
    and the headers a function sees, for a request from ``peer`` (see the module docstring).

    ``valid_host`` decides whether an ``X-Forwarded-Host`` value is a plain
    ``host[:port]`` (``hosts.valid_host``, or a cached form of it)."""
    names = "".join(headers)
    if "Forwarded" not in names and "X-Real-Ip" not in names:
        return None, None, headers  # the common case: nothing to decide
    if not proxies.trusts(peer):
        return None, None, {name: values for name, values in headers.items() if not is_forwarding(name)}
    scheme = _last(headers.get("X-Forwarded-Proto"))
    scheme = scheme.lower() if scheme is not None else None
    host = _last(headers.get("X-Forwarded-Host"))
    return (scheme if scheme in ("http", "https") else None,
            host if host is not None and valid_host(host) else None, headers)


def _last(values: list[str] | None) -> str | None:
    """The last of a header's comma-separated values, over all its lines; None if
    there is none (or it is empty: the proxy said nothing usable)."""
    if not values:
        return None
    last = values[-1].rpartition(",")[2].strip(" \t")
    return last or None

