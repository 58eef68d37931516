"""The daemon's configuration: one frozen value, built from twistd options and the
environment (option wins over env var, env var over default) and validated purely.

Every setting of SPEC §2 is here. ``Config.from_sources`` raises ``ConfigError`` whose
message names the variable, so the daemon can stop at start with one clear line.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Mapping, TypeVar

import attrs

from ironfunctions.config_parsers import (
    HOT_TRANSPORTS,
    MIB,
    MIN_JWT_KEY_BYTES,
    parse_allow_nets,
    parse_api_auth,
    parse_bool,
    parse_cidrs,
    parse_db_url,
    parse_docker_network,
    parse_duration,
    parse_function_user,
    parse_hot_transport,
    parse_http_url,
    parse_jwt_auth_key,
    parse_listen,
    parse_log_level,
    parse_mq_url,
    parse_node_id,
    parse_non_negative_int,
    parse_port,
    parse_positive_duration,
    parse_positive_int,
    parse_rate,
    parse_size,
    parse_statsd_address,
    parse_text,
)
from ironfunctions.errors import ConfigError
from ironfunctions.listen import listen_is_local, parse_endpoint

__all__ = ["HOT_TRANSPORTS", "MIB", "Config", "default_max_concurrency", "host_memory_mb", "with_backlog"]

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
    hot_transport: str = "socket"
    function_readonly_rootfs: bool = True
    function_user: str = ""
    function_allow_nets: tuple[str, ...] = ()
    api_auth: str = "jwt"
    # Bounds under hostile load (SPEC §8) and backend outages (SPEC §10).
    header_timeout: float = 20.0
    idle_timeout: float = 60.0
    body_min_rate: int = 1024  # bytes per second, averaged over 10 s
    max_buffered: int = 64 * MIB
    max_spooled: int = 1024 * MIB
    admission_wait: float = 10.0
    admission_max_waiting: int = 1000
    app_max_concurrency: int = 0  # 0: half of max_concurrency (see ``app_concurrency``)
    async_max_queued: int = 10_000
    async_max_queued_bytes: int = 256 * MIB
    async_max_age: float = 24 * 3600.0
    call_retention: float = 7 * 86400.0
    retention_interval: float = 300.0  # seconds between CALL_RETENTION sweeps
    route_cache_stale: float = 600.0
    record_buffer: int = 64 * MIB
    # Production behind HAProxy (SPEC §9).
    lb_agent_port: int = 0  # 0: no agent
    trusted_proxies: tuple[str, ...] = ()
    drain_grace: float = 3.0
    shutdown_timeout: float = 60.0
    reconcile_interval: float = 20.0
    workers: int = 1

    @property
    def worker_processes(self) -> int:
        """How many worker processes serve this node (``WORKERS``): 1 (one process, no
        parent) when the setting says so, or when the node cannot share its state
        across processes: a ``memory://`` datastore or queue lives in one process, and
        only a plain TCP or unix ``LISTEN`` socket can be handed to workers."""
        if self.workers <= 1:
            return 1
        if self.db_url.startswith("memory:") or self.mq_url.startswith("memory:"):
            return 1
        if parse_endpoint(self.listen)[0][0].strip().lower() not in ("tcp", "tcp6", "unix"):
            return 1
        return self.workers

    @property
    def app_concurrency(self) -> int:
        """Containers one app may hold while others wait (APP_MAX_CONCURRENCY)."""
        return self.app_max_concurrency or max(1, self.max_concurrency // 2)

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

        port = get("PORT", parse_port, 8080)
        data_dir = os.path.join(cwd, "data")
        data_dir = get("DATA_DIR", parse_text, data_dir)
        statsd = get("STATSD_URL", parse_statsd_address, ("", 0))
        listen = get("LISTEN", parse_listen, f"tcp:{port}:interface=127.0.0.1")
        jwt_auth_key = get("JWT_AUTH_KEY", parse_jwt_auth_key, "")
        api_auth = get("API_AUTH", parse_api_auth, "jwt")
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
            db_url=get("DB_URL", parse_db_url, f"sqlite:///{data_dir}/ironfunctions.db"),
            mq_url=get("MQ_URL", parse_mq_url, f"sqlite:///{data_dir}/mq.db"),
            api_url=get("API_URL", parse_http_url, f"http://127.0.0.1:{port}"),
            log_level=get("LOG_LEVEL", parse_log_level, "info"),
            jwt_auth_key=jwt_auth_key,
            docker_host=get("DOCKER_HOST", parse_text, ""),
            num_async=get("NUM_ASYNC", parse_non_negative_int, 2 * cpu_count),
            max_concurrency=get(
                "MAX_CONCURRENCY", parse_positive_int, default_max_concurrency(cpu_count, host_memory_mb)
            ),
            max_request_size=get("MAX_REQUEST_SIZE", parse_size, 6 * MIB),
            max_response_size=get("MAX_RESPONSE_SIZE", parse_size, 6 * MIB),
            statsd_host=statsd[0],
            statsd_port=statsd[1],
            docker_network=get("DOCKER_NETWORK", parse_docker_network, "ironfunctions"),
            node_id=get("NODE_ID", parse_node_id, ""),
            async_max_attempts=get("ASYNC_MAX_ATTEMPTS", parse_positive_int, 3),
            async_retry_delay=get("ASYNC_RETRY_DELAY", parse_duration, 1.0),
            host_memory_mb=host_memory_mb,
            hot_transport=get("HOT_TRANSPORT", parse_hot_transport, "socket"),
            function_readonly_rootfs=get("FUNCTION_READONLY_ROOTFS", parse_bool, True),
            function_user=get("FUNCTION_USER", parse_function_user, ""),
            function_allow_nets=get("FUNCTION_ALLOW_NETS", parse_allow_nets, ()),
            api_auth=api_auth,
            header_timeout=get("HEADER_TIMEOUT", parse_positive_duration, 20.0),
            idle_timeout=get("IDLE_TIMEOUT", parse_positive_duration, 60.0),
            body_min_rate=get("BODY_MIN_RATE", parse_rate, 1024),
            max_buffered=get("MAX_BUFFERED", parse_size, 64 * MIB),
            max_spooled=get("MAX_SPOOLED", parse_size, 1024 * MIB),
            admission_wait=get("ADMISSION_WAIT", parse_positive_duration, 10.0),
            admission_max_waiting=get("ADMISSION_MAX_WAITING", parse_non_negative_int, 1000),
            app_max_concurrency=get("APP_MAX_CONCURRENCY", parse_positive_int, 0),
            async_max_queued=get("ASYNC_MAX_QUEUED", parse_positive_int, 10_000),
            async_max_queued_bytes=get("ASYNC_MAX_QUEUED_BYTES", parse_size, 256 * MIB),
            async_max_age=get("ASYNC_MAX_AGE", parse_positive_duration, 24 * 3600.0),
            call_retention=get("CALL_RETENTION", parse_positive_duration, 7 * 86400.0),
            retention_interval=get("RETENTION_INTERVAL", parse_positive_duration, 300.0),
            route_cache_stale=get("ROUTE_CACHE_STALE", parse_duration, 600.0),
            record_buffer=get("RECORD_BUFFER", parse_size, 64 * MIB),
            lb_agent_port=get("LB_AGENT_PORT", parse_port, 0),
            trusted_proxies=get("TRUSTED_PROXIES", parse_cidrs, ()),
            drain_grace=get("DRAIN_GRACE", parse_duration, 3.0),
            shutdown_timeout=get("SHUTDOWN_TIMEOUT", parse_positive_duration, 60.0),
            reconcile_interval=get("RECONCILE_INTERVAL", parse_positive_duration, 20.0),
            workers=get("WORKERS", parse_positive_int, cpu_count),
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


