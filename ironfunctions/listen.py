"""Is the API reachable beyond this host? (SPEC §2, §8: defaults are safe.)

Pure functions over a Twisted server endpoint string (``LISTEN``), read the way
``serverFromString`` reads it, so the daemon can refuse to serve an open management
API on the network.
"""

from __future__ import annotations

import ipaddress

_LOCAL_NETS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Where the listening address sits among each endpoint type's positional arguments
# (twisted.internet.endpoints' _parseTCP / _parseSSL: "tcp:8080:127.0.0.1" is valid).
_INTERFACE_POSITION = {"tcp": 2, "tcp6": 2, "ssl": 5}


def parse_endpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """A Twisted server endpoint string as (positional args, keyword args), the way
    ``serverFromString`` reads it: ``:`` separates arguments, the first ``=`` of an
    argument makes it a keyword one, and a backslash makes the next character literal
    (``interface=\\:\\:1``). Pure."""
    args: list[str] = []
    kwargs: dict[str, str] = {}
    key: str | None = None
    current: list[str] = []
    chars = iter(description)

    def finish() -> None:
        if key is None:
            args.append("".join(current))
        else:
            kwargs[key] = "".join(current)

    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            finish()
            key, current = None, []
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    finish()
    return args, kwargs


def listen_is_local(listen: str) -> bool:
    """Whether the endpoint ``listen`` is reachable from this host only: a unix socket,
    or a tcp/tcp6/ssl endpoint bound to an address in 127.0.0.0/8 or ::1. Anything
    else (no interface, 0.0.0.0, ::, a host name, a ``systemd:`` socket, an endpoint
    type we do not know) counts as reachable from the network. Pure."""
    args, _ = parse_endpoint(listen)
    if args[0].strip().lower() == "unix":
        return True
    interface = listen_interface(listen)
    if interface is None:
        return False
    try:
        address = ipaddress.ip_address((interface or "").strip())
    except ValueError:
        return False
    return any(address in net for net in _LOCAL_NETS)


def listen_interface(listen: str) -> str | None:
    """The address a tcp/tcp6/ssl endpoint string binds to (``""``: every address), or
    ``None`` for other endpoint types (unix, systemd, unknown). Pure."""
    args, kwargs = parse_endpoint(listen)
    position = _INTERFACE_POSITION.get(args[0].strip().lower())
    if position is None:
        return None
    interface = kwargs.get("interface")
    if interface is None and len(args) > position:
        interface = args[position]
    return interface or ""
