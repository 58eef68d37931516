"""Plain values of the domain: apps, routes, and what a container run needs.

Everything here is immutable and free of I/O, so it can be passed across threads and
compared in tests. Serialisation to the wire lives in ``api/schema.py``.
"""

from __future__ import annotations

import enum
from typing import Mapping

import attrs

# Route defaults of IronFunctions' v1 API (SPEC §3).
DEFAULT_MEMORY_MB = 128
DEFAULT_TYPE = "sync"
DEFAULT_FORMAT = "default"
DEFAULT_MAX_CONCURRENCY = 1
DEFAULT_TIMEOUT_S = 30
DEFAULT_IDLE_TIMEOUT_S = 30

ROUTE_TYPES = ("sync", "async")
ROUTE_FORMATS = ("default", "http")


# Converters: each value holds its own copy. Most are empty (no config, no headers),
# and these run for every call, so an empty one costs no more than a new dict.


def _frozen_str_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if not value:
        return {}
    return dict(value)


def _frozen_headers(value: Mapping[str, list[str]] | None) -> Mapping[str, list[str]]:
    if not value:
        return {}
    return {k: [*v] for k, v in value.items()}


@attrs.frozen
class App:
    """An application: a name and config shared by all of its routes."""

    name: str
    config: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)


@attrs.frozen
class Route:
    """A route: which image answers ``/r/{app_name}{path}`` and how it runs.

    ``path`` is always in normalised form (see ``paths.normalize_path``).
    ``headers`` maps a header name to all of its values, as Go's ``http.Header``.
    """

    app_name: str
    path: str
    image: str
    memory: int = DEFAULT_MEMORY_MB
    headers: Mapping[str, list[str]] = attrs.field(factory=dict, converter=_frozen_headers)
    type: str = DEFAULT_TYPE
    format: str = DEFAULT_FORMAT
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout: int = DEFAULT_TIMEOUT_S
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT_S
    config: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)
    jwt_key: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """The identity of a route: its app and path."""
        return (self.app_name, self.path)


# Container labels: every function container carries them, so a node can find (and
# remove) its own containers after a crash without touching another node's.
LABEL_NODE = "io.ironfunctions.node"
LABEL_APP = "io.ironfunctions.app"
LABEL_PATH = "io.ironfunctions.path"
LABEL_CALL = "io.ironfunctions.call_id"
LABEL_KIND = "io.ironfunctions.kind"  # "cold" or "hot"
LABEL_WORKER = "io.ironfunctions.worker"  # the worker process that runs it (WORKERS > 1)

DEFAULT_PIDS_LIMIT = 512
DEFAULT_STDERR_LIMIT = 1024 * 1024
DEFAULT_STDOUT_LIMIT = 6 * 1024 * 1024

# The capabilities a function container keeps; every other one is dropped (issue 11,
# SPEC §8). Each is what ordinary images running as root need, and none reaches past
# the container's own files, processes and network namespace:
#   CHOWN, DAC_OVERRIDE, FOWNER, FSETID: root handling files it does not own (tar/pip
#     unpacking into /tmp, package hooks, chmod/utime of extracted files, group bits);
#   KILL: signalling processes of another uid (an init or supervisor over its workers);
#   SETGID, SETUID: entrypoints that start as root and drop to an app user (gosu,
#     su-exec, nginx/postgres workers); with no-new-privileges they only go down;
#   NET_BIND_SERVICE: listening below 1024 inside the container's own network namespace.
# Never: NET_RAW (forged packets, ARP/ICMP spoofing on the bridge), MKNOD (device nodes),
# SYS_CHROOT, SETFCAP (file capabilities), AUDIT_WRITE (the host's audit log), SETPCAP.
FUNCTION_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE",
)
# Open files per function process: the common Linux soft limit (and Lambda's), instead of
# the engine's 1048576 that would let one function hold a large share of the host's files.
DEFAULT_NOFILE = 1024


@attrs.frozen
class ContainerSpec:
    """Everything the container driver needs to run one function container.

    Built by ``runner.plan.container_spec`` (pure). ``memory_mb`` becomes both the
    memory limit and the memory+swap limit (no swap beyond it). ``timeout_s`` counts
    from the moment the container is running; ``stdin`` is written then closed.
    Output beyond ``stdout_limit``/``stderr_limit`` bytes is dropped and flagged.
    Cold runs use all fields; a long-lived (hot) container ignores ``stdin`` and
    ``timeout_s``.

    Hardening (issue 11): every capability but ``capabilities`` is dropped;
    ``no_new_privileges``; at most ``pids_limit`` processes and ``nofile`` open files;
    ``cpu_shares`` (0: the engine's default); ``read_only_rootfs`` with, when
    ``tmpfs_mb`` > 0, a writable ``/tmp`` of that size (its pages count in the memory
    limit); ``user`` (``uid:gid``, empty: the image's user).
    """

    image: str
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)
    memory_mb: int = DEFAULT_MEMORY_MB
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)
    stdin: bytes = b""
    timeout_s: float = DEFAULT_TIMEOUT_S
    network_mode: str = "bridge"
    pids_limit: int = DEFAULT_PIDS_LIMIT
    stdout_limit: int = DEFAULT_STDOUT_LIMIT
    stderr_limit: int = DEFAULT_STDERR_LIMIT
    capabilities: tuple[str, ...] = FUNCTION_CAPABILITIES
    no_new_privileges: bool = True
    nofile: int = DEFAULT_NOFILE
    cpu_shares: int = 0
    read_only_rootfs: bool = False
    tmpfs_mb: int = 0
    user: str = ""


@attrs.frozen
class ContainerResult:
    """How a cold container ended.

    ``timed_out``: the container overran ``timeout_s`` and was killed and removed
    before this value was returned. ``oom_killed``: the kernel killed it for
    exceeding its memory limit. ``start_ms`` is create+attach+start, ``run_ms`` is
    from running to exit (or to the kill). ``exit_code`` is -1 when timed out.
    """

    container_id: str
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    oom_killed: bool = False
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    start_ms: int = 0
    run_ms: int = 0
    # Beyond ``stderr_limit``: what was counted, not kept (bytes, newlines).
    stderr_lost_bytes: int = 0
    stderr_lost_lines: int = 0


@attrs.frozen
class CallRequest:
    """What the client sent to ``/r/{app}{path}``, as the runner needs it.

    ``url`` is the full request URL (``http://host/r/app/path?query``); ``headers``
    maps each header name (as sent) to all of its values; ``body`` is the function's
    stdin (for a GET without body, the ``payload`` query parameter).
    """

    method: str
    url: str
    headers: Mapping[str, list[str]] = attrs.field(factory=dict, converter=_frozen_headers)
    body: bytes = b""
    params: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)


@attrs.frozen
class Call:
    """One invocation to run: its id, its route, the app's config and the request."""

    id: str
    route: Route
    request: CallRequest
    app_config: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)


class CallStatus(enum.StrEnum):
    """Where a call is (SPEC §3 Calls). The values are the wire and database strings,
    and a member *is* its string (``CallStatus.SUCCESS == "success"``, JSON and SQL
    see the string). ``success``, ``error``, ``timeout`` and ``cancelled`` end a call:
    a record in one of them never changes again; a ``CallResult`` is always in one."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # stopped through DELETE /v1/apps/{app}/calls/{id}

    @property
    def terminal(self) -> bool:
        """Whether a call in this status has ended for good."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {CallStatus.SUCCESS, CallStatus.ERROR, CallStatus.TIMEOUT, CallStatus.CANCELLED}
)
CANCELLED_MESSAGE = "Call cancelled"  # the error of a call stopped by a cancel


@attrs.frozen
class CallResult:
    """How a call ended. ``status`` is ``success``, ``error``, ``timeout`` or
    ``cancelled``; ``error``
    is the client-facing message (``exit code 3``, ``out of memory``, ``Timed out``).
    ``status_code``/``headers`` are set by functions that answer HTTP themselves
    (hot, format ``http``); cold functions leave them None/empty.
    Times are integer milliseconds: waiting for admission, starting the container,
    running it. ``stderr`` is what the function wrote to stderr, cut at 1 MiB while it
    was read; ``stderr_lost_bytes``/``stderr_lost_lines`` count what was cut (bytes,
    newlines)."""

    call_id: str
    # The converter keeps a result's status a member even when given its string.
    status: CallStatus = attrs.field(converter=CallStatus)
    body: bytes = b""
    stderr: bytes = b""
    error: str = ""
    exit_code: int | None = None
    status_code: int | None = None
    headers: Mapping[str, list[str]] = attrs.field(factory=dict, converter=_frozen_headers)
    wait_ms: int = 0
    start_ms: int = 0
    run_ms: int = 0
    stderr_lost_bytes: int = 0
    stderr_lost_lines: int = 0
