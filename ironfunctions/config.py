"""The daemon's configuration: one frozen value, built from twistd options and the
environment (option wins over env var, env var over default) and validated purely.

Every setting of SPEC §2 is here. ``Config.from_sources`` raises ``ConfigError`` whose
message names the variable, so the daemon can stop at start with one clear line.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlsplit

import attrs

from ironfunctions.errors import ConfigError
from ironfunctions.listen import listen_is_local, parse_endpoint
from ironfunctions.storage.urls import sqlite_path

MIB = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warn", "error")
# How hot containers talk to the daemon (HOT_TRANSPORT); the drivers check it too.
HOT_TRANSPORTS = ("attach", "socket")

T = TypeVar("T")


@attrs.frozen
class Config:
    """Validated settings of one daemon (see SPEC §2 and README for each)."""

    port: int
    listen: str
    data_dir: str
    db_url: str
    mq_url: str
    api_url: str
    log_level: str
    jwt_auth_key: str
    docker_host: str
    num_async: int
    max_concurrency: int
    max_request_size: int
    max_response_size: int
    statsd_host: str  # "" when STATSD_URL is not set
    statsd_port: int
    docker_network: str
    node_id: str
    async_max_attempts: int
    async_retry_delay: float
    host_memory_mb: int
    hot_transport: str = "attach"
    function_readonly_rootfs: bool = True
    function_user: str = ""
    function_allow_nets: tuple[str, ...] = ()
    api_auth: str = "jwt"

    @property
    def open_api_on_network(self) -> bool:
        """True when the API listens beyond loopback with no key, by ``API_AUTH=none``
        (the daemon warns about it at every start)."""
        return not self.jwt_auth_key and not listen_is_local(self.listen)

    @classmethod
    def from_sources(
        cls,
        options: Mapping[str, str | None],
        environ: Mapping[str, str],
        cwd: str,
        cpu_count: int,
        host_memory_mb: int,
    ) -> "Config":
        """Resolve every setting from options (keys as the twistd option names,
        e.g. ``db-url``), then ``environ`` (``DB_URL``), then defaults. Pure."""

        def raw(name: str) -> str | None:
            value = options.get(name.lower().replace("_", "-"))
            if value is None:
                value = environ.get(name)
            if value is not None and value.strip() == "":
                return None
            return value

        def get(name: str, parse: Callable[[str, str], T], default: T) -> T:
            value = raw(name)
            return default if value is None else parse(name, value)

        port = get("PORT", _port, 8080)
        data_dir = os.path.join(cwd, "data")
        data_dir = get("DATA_DIR", _text, data_dir)
        statsd = get("STATSD_URL", _statsd_address, ("", 0))
        listen = get("LISTEN", _listen, f"tcp:{port}:interface=127.0.0.1")
        jwt_auth_key = get("JWT_AUTH_KEY", _jwt_auth_key, "")
        api_auth = get("API_AUTH", _api_auth, "jwt")
        if api_auth == "jwt" and not jwt_auth_key and not listen_is_local(listen):
            raise ConfigError(
                f"LISTEN: {listen} is not loopback-only and JWT_AUTH_KEY is empty: set JWT_AUTH_KEY "
                f"(at least {MIN_JWT_KEY_BYTES} bytes) so the API needs a token, or set API_AUTH=none "
                "to serve it without one on purpose"
            )
        return cls(
            port=port,
            listen=with_backlog(listen),
            data_dir=data_dir,
            db_url=get("DB_URL", _db_url, f"sqlite:///{data_dir}/ironfunctions.db"),
            mq_url=get("MQ_URL", _mq_url, f"sqlite:///{data_dir}/mq.db"),
            api_url=get("API_URL", _http_url, f"http://127.0.0.1:{port}"),
            log_level=get("LOG_LEVEL", _log_level, "info"),
            jwt_auth_key=jwt_auth_key,
            docker_host=get("DOCKER_HOST", _text, ""),
            num_async=get("NUM_ASYNC", _non_negative_int, 2 * cpu_count),
            max_concurrency=get(
                "MAX_CONCURRENCY", _positive_int, default_max_concurrency(cpu_count, host_memory_mb)
            ),
            max_request_size=get("MAX_REQUEST_SIZE", _size, 6 * MIB),
            max_response_size=get("MAX_RESPONSE_SIZE", _size, 6 * MIB),
            statsd_host=statsd[0],
            statsd_port=statsd[1],
            docker_network=get("DOCKER_NETWORK", _docker_network, "ironfunctions"),
            node_id=get("NODE_ID", _node_id, ""),
            async_max_attempts=get("ASYNC_MAX_ATTEMPTS", _positive_int, 3),
            async_retry_delay=get("ASYNC_RETRY_DELAY", _duration, 1.0),
            host_memory_mb=host_memory_mb,
            hot_transport=get("HOT_TRANSPORT", _hot_transport, "attach"),
            function_readonly_rootfs=get("FUNCTION_READONLY_ROOTFS", _bool, True),
            function_user=get("FUNCTION_USER", _function_user, ""),
            function_allow_nets=get("FUNCTION_ALLOW_NETS", _allow_nets, ()),
            api_auth=api_auth,
        )


def default_max_concurrency(cpu_count: int, host_memory_mb: int) -> int:
    """Containers at once: enough to keep the cores busy with slow functions, never
    more than the host's memory can hold at the default 128 MiB each (half of it)."""
    return max(2, min(32 * cpu_count, host_memory_mb // 256))


# Twisted listens with a backlog of 50; a burst of more clients than that overflows the
# accept queue, and the kernel answers the overflow with resets (SYN cookies), not the
# 503 + Retry-After the node owes an overloaded client (bench/cold_load.py: 500
# concurrent calls, up to 216 resets). Go's net package asks for net.core.somaxconn; we
# ask for 4096 and the kernel caps it at somaxconn the same way.
LISTEN_BACKLOG = 4096
_BACKLOG_ENDPOINTS = ("tcp", "tcp6", "unix")


def with_backlog(listen: str, backlog: int = LISTEN_BACKLOG) -> str:
    """``listen`` with ``backlog=`` added when it is a tcp/tcp6/unix endpoint string
    that does not set one itself (pure)."""
    kind, _, rest = listen.partition(":")
    if kind not in _BACKLOG_ENDPOINTS or not rest:
        return listen
    if any(part.startswith("backlog=") for part in re.split(r"(?<!\\):", rest)):
        return listen
    return f"{listen}:backlog={backlog}"


def host_memory_mb(meminfo_path: str = "/proc/meminfo") -> int:
    """Total memory of the host in MiB (from /proc/meminfo)."""
    with open(meminfo_path) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise ConfigError("cannot read MemTotal from /proc/meminfo")


# -- parsers: (variable name, raw text) -> value, or ConfigError naming the variable


def _text(name: str, value: str) -> str:
    return value.strip()


MIN_JWT_KEY_BYTES = 32  # HS256's key should be as long as its hash (RFC 7518 §3.2)
API_AUTH_MODES = ("jwt", "none")


def _listen(name: str, value: str) -> str:
    listen = value.strip()
    if not parse_endpoint(listen)[0][0]:
        raise ConfigError(f"{name}: expected a Twisted endpoint such as tcp:8080:interface=127.0.0.1, got {value!r}")
    return listen


def _jwt_auth_key(name: str, value: str) -> str:
    key = value.strip()
    if len(key.encode("utf-8")) < MIN_JWT_KEY_BYTES:
        # Never echo the key itself.
        raise ConfigError(f"{name}: must be at least {MIN_JWT_KEY_BYTES} bytes, got {len(key.encode('utf-8'))}")
    return key


def _api_auth(name: str, value: str) -> str:
    mode = value.strip().lower()
    if mode not in API_AUTH_MODES:
        raise ConfigError(f"{name}: expected jwt or none, got {value!r}")
    return mode


def _int(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None


def _port(name: str, value: str) -> int:
    port = _int(name, value)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}: port must be 1..65535, got {port}")
    return port


def _non_negative_int(name: str, value: str) -> int:
    """0 allowed: ``NUM_ASYNC=0`` leaves async calls to external runners (``/tasks``)."""
    number = _int(name, value)
    if number < 0:
        raise ConfigError(f"{name}: must be 0 or more, got {number}")
    return number


def _positive_int(name: str, value: str) -> int:
    number = _int(name, value)
    if number < 1:
        raise ConfigError(f"{name}: must be at least 1, got {number}")
    return number


_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MIB, "mb": MIB, "mib": MIB}
_SIZE_UNITS.update({"g": 1024 * MIB, "gb": 1024 * MIB, "gib": 1024 * MIB})


def _size(name: str, value: str) -> int:
    """Bytes, with an optional binary unit: ``6291456``, ``6MiB``, ``512k``."""
    match = _SIZE.match(value)
    if not match or int(match.group(1)) < 1:
        raise ConfigError(f"{name}: expected a size in bytes such as 6291456 or 6MiB, got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def _duration(name: str, value: str) -> float:
    """Seconds: ``1``, ``0.5``, ``1s``, ``250ms``."""
    match = _DURATION.match(value)
    if not match:
        raise ConfigError(f"{name}: expected a duration such as 1, 1s or 250ms, got {value!r}")
    seconds = float(match.group(1))
    return seconds / 1000 if match.group(2) == "ms" else seconds


def _log_level(name: str, value: str) -> str:
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


def _db_url(name: str, value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("memory", "sqlite", "postgres", "postgresql"):
        raise ConfigError(
            f"{name}: expected memory://, sqlite:///path or postgres://..., got {redact(value)!r}"
        )
    return _checked_sqlite(name, value)


def _mq_url(name: str, value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("memory", "sqlite", "redis"):
        raise ConfigError(f"{name}: expected memory://, sqlite:///path or redis://..., got {redact(value)!r}")
    return _checked_sqlite(name, value)


def _checked_sqlite(name: str, value: str) -> str:
    if urlsplit(value).scheme == "sqlite":
        sqlite_path(redact(value), name)  # raises ConfigError naming ``name``
    return value


def _http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: expected an http(s):// URL, got {value!r}")
    return value.rstrip("/")


def _statsd_address(name: str, value: str) -> tuple[str, int]:
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


def _docker_network(name: str, value: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", value.strip()):
        raise ConfigError(f"{name}: invalid network name {value!r}")
    return value.strip()


def _allow_nets(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated CIDRs functions may reach although private (SPEC §8)."""
    from ironfunctions.drivers.netplan import parse_allow_nets

    try:
        return tuple(str(net) for net in parse_allow_nets(value))
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def _hot_transport(name: str, value: str) -> str:
    transport = value.strip().lower()
    if transport not in HOT_TRANSPORTS:
        raise ConfigError(f"{name}: expected attach or socket, got {value!r}")
    return transport


def _node_id(name: str, value: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", value.strip()):
        raise ConfigError(f"{name}: use 1-63 letters, digits, '_', '.', '-', got {value!r}")
    return value.strip()


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _bool(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return word in _TRUE


_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


def _function_user(name: str, value: str) -> str:
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
