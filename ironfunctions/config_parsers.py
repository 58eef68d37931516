"""Parsers of the daemon's settings: ``(variable name, raw text) -> value``, or
``ConfigError`` naming the variable (pure). ``config.Config.from_sources`` uses them."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ironfunctions.errors import ConfigError
from ironfunctions.listen import parse_endpoint
from ironfunctions.mq.redis_url import SCHEMES as REDIS_SCHEMES, parse_redis_url
from ironfunctions.storage.pgurl import postgres_files
from ironfunctions.storage.urls import sqlite_path

MIB = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warn", "error")
# How hot containers talk to the daemon (HOT_TRANSPORT); the drivers check it too.
HOT_TRANSPORTS = ("attach", "socket")




def parse_text(name: str, value: str) -> str:
    return value.strip()


MIN_JWT_KEY_BYTES = 32  # HS256's key should be as long as its hash (RFC 7518 §3.2)
API_AUTH_MODES = ("jwt", "none")


def parse_listen(name: str, value: str) -> str:
    listen = value.strip()
    if not parse_endpoint(listen)[0][0]:
        raise ConfigError(f"{name}: expected a Twisted endpoint such as tcp:8080:interface=127.0.0.1, got {value!r}")
    return listen


def parse_jwt_auth_key(name: str, value: str) -> str:
    key = value.strip()
    if len(key.encode("utf-8")) < MIN_JWT_KEY_BYTES:
        # Never echo the key itself.
        raise ConfigError(f"{name}: must be at least {MIN_JWT_KEY_BYTES} bytes, got {len(key.encode('utf-8'))}")
    return key


def parse_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``, case-insensitively."""
    word = value.strip().lower()
    if word not in choices:
        raise ConfigError(f"{name}: expected {' or '.join(choices)}, got {value!r}")
    return word


def parse_api_auth(name: str, value: str) -> str:
    return parse_choice(name, value, API_AUTH_MODES)


def parse_int(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None


def parse_port(name: str, value: str) -> int:
    port = parse_int(name, value)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}: port must be 1..65535, got {port}")
    return port


def parse_non_negative_int(name: str, value: str) -> int:
    """0 allowed: ``NUM_ASYNC=0`` leaves async calls to external runners (``/tasks``)."""
    number = parse_int(name, value)
    if number < 0:
        raise ConfigError(f"{name}: must be 0 or more, got {number}")
    return number


def parse_positive_int(name: str, value: str) -> int:
    number = parse_int(name, value)
    if number < 1:
        raise ConfigError(f"{name}: must be at least 1, got {number}")
    return number


_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MIB, "mb": MIB, "mib": MIB}
_SIZE_UNITS.update({"g": 1024 * MIB, "gb": 1024 * MIB, "gib": 1024 * MIB})


def parse_size(name: str, value: str) -> int:
    """Bytes, with an optional binary unit: ``6291456``, ``6MiB``, ``512k``."""
    match = _SIZE.match(value)
    if not match or int(match.group(1)) < 1:
        raise ConfigError(f"{name}: expected a size in bytes such as 6291456 or 6MiB, got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(name: str, value: str) -> float:
    """Seconds: ``1``, ``0.5``, ``1s``, ``250ms``, ``10m``, ``24h``, ``7d``."""
    match = _DURATION.match(value)
    if not match:
        raise ConfigError(f"{name}: expected a duration such as 1, 1s, 250ms, 10m, 24h or 7d, got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or ""]


def parse_positive_duration(name: str, value: str) -> float:
    seconds = parse_duration(name, value)
    if seconds <= 0:
        raise ConfigError(f"{name}: must be more than 0, got {value!r}")
    return seconds


def parse_rate(name: str, value: str) -> int:
    """Bytes per second: ``1KiB/s``, ``1024``, ``512/s``."""
    text = value.strip()
    if text.lower().endswith("/s"):
        text = text[:-2]
    try:
        return parse_size(name, text)
    except ConfigError:
        raise ConfigError(f"{name}: expected a rate such as 1KiB/s or 1024, got {value!r}") from None


def parse_log_level(name: str, value: str) -> str:
    level = value.strip().lower()
    if level == "warning":
        level = "warn"
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name}: expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for an error message or a log."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if not password:
        return url
    netloc = parts.netloc.replace(":" + password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def parse_db_url(name: str, value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("memory", "sqlite", "postgres", "postgresql"):
        raise ConfigError(
            f"{name}: expected memory://, sqlite:///path or postgres://..., got {redact(value)!r}"
        )
    if scheme in ("postgres", "postgresql"):
        for parameter, path in postgres_files(name, value):
            check_readable(name, parameter, path)
    return checked_sqlite(name, value)


def parse_mq_url(name: str, value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("memory", "sqlite", *REDIS_SCHEMES):
        raise ConfigError(
            f"{name}: expected memory://, sqlite:///path, redis://... or rediss://..., got {redact(value)!r}"
        )
    if scheme in REDIS_SCHEMES:
        tls = parse_redis_url(value, name).tls
        if tls is not None:
            for option, path in (("ssl_ca_certs", tls.ca_certs), ("ssl_certfile", tls.certfile),
                                 ("ssl_keyfile", tls.keyfile)):
                if path:
                    check_readable(name, option, path)
    return checked_sqlite(name, value)


def check_readable(name: str, option: str, path: str) -> None:
    """A file a URL names (a CA, a certificate, a key) must be there and readable now:
    found missing only at connection time, it would leave the daemon retrying forever."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{name}: {option}: cannot read {path}: {e.strerror}") from None


def checked_sqlite(name: str, value: str) -> str:
    if urlsplit(value).scheme == "sqlite":
        sqlite_path(redact(value), name)  # raises ConfigError naming ``name``
    return value


def parse_http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: expected an http(s):// URL, got {value!r}")
    return value.rstrip("/")


def parse_statsd_address(name: str, value: str) -> tuple[str, int]:
    """``udp://host:port`` -> ``(host, port)``; an IPv6 address goes in brackets
    (``udp://[::1]:8125``) and comes out without them."""
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    if parts.scheme != "udp" or not parts.hostname or not port:
        raise ConfigError(f"{name}: expected udp://host:port, got {value!r}")
    return parts.hostname, port


def parse_docker_network(name: str, value: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", value.strip()):
        raise ConfigError(f"{name}: invalid network name {value!r}")
    return value.strip()


def parse_allow_nets(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated CIDRs functions may reach although private (SPEC §8)."""
    from ironfunctions.drivers import netplan

    try:
        return tuple(str(net) for net in netplan.parse_allow_nets(value))
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def parse_cidrs(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated CIDRs (or single addresses), IPv4 or IPv6, normalised."""
    import ipaddress

    nets = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            nets.append(str(ipaddress.ip_network(part.strip(), strict=False)))
        except ValueError:
            raise ConfigError(f"{name}: expected comma-separated CIDRs such as 10.0.0.0/8,::1, got {part.strip()!r}") from None
    return tuple(nets)


def parse_hot_transport(name: str, value: str) -> str:
    return parse_choice(name, value, HOT_TRANSPORTS)


def parse_node_id(name: str, value: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", value.strip()):
        raise ConfigError(f"{name}: use 1-63 letters, digits, '_', '.', '-', got {value!r}")
    return value.strip()


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_bool(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return word in _TRUE


_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


def parse_function_user(name: str, value: str) -> str:
    """``uid[:gid]``, numeric only: a name would be looked up in the image's own
    /etc/passwd, which the function's author writes (``nobody`` may be uid 0 there).
    Normalised to ``uid:gid``; ``gid`` defaults to ``uid`` (Docker would otherwise
    pick group 0 for a uid missing from the image's /etc/passwd). uid 0 is refused:
    empty already means the image's own user."""
    match = re.fullmatch(r"\s*(\d{1,10})(?::(\d{1,10}))?\s*", value)
    uid = int(match.group(1)) if match else -1
    gid = int(match.group(2) or uid) if match else -1
    if not 1 <= uid <= _MAX_ID or not 0 <= gid <= _MAX_ID:
        raise ConfigError(
            f"{name}: expected a numeric uid[:gid] other than root (e.g. 1000 or 1000:1000), got {value!r}"
        )
    return f"{uid}:{gid}"
