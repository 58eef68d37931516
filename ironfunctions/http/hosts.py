"""Which host a function is told it was called on (SPEC §8, issue 11 item 6).

``REQUEST_URL`` and a hot function's request line are built from the request's own
path and query, and from a host. The ``Host`` header is the client's to choose, so it is
used only when it is a plain ``host[:port]``: a name (letters, digits, ``-``, ``_``,
dots), an IPv4 address or a bracketed IPv6 address, and an optional port of 1-5 digits.
Anything else (``evil.example/r/app/admin?``, a user-info ``@``, spaces...) would let a
caller rewrite the URL the function sees; the connection's local address is used
instead.
"""

from __future__ import annotations

import re

from twisted.internet.interfaces import IAddress

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?")
MAX_HOST = 260  # a 253-character name and a port


def valid_host(host: str) -> bool:
    """Whether ``host`` is a plain ``host[:port]`` (see the module docstring)."""
    return len(host) <= MAX_HOST and HOST.fullmatch(host) is not None


def authority(address: IAddress | None) -> str:
    """``host:port`` of a connection's local ``address`` (``[::1]:8080`` for IPv6);
    ``localhost`` for an address without a port (a UNIX socket)."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if not isinstance(host, str) or port is None:
        return "localhost"
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def peer_host(address: IAddress | None) -> str | None:
    """The IP address of a connection's peer ``address``; None for a UNIX socket (no
    address: never a trusted proxy, ``http/proxies.py``)."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) and getattr(address, "port", None) is not None else None
