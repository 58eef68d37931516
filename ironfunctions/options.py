"""``twistd ironfunctions``'s options: every setting of SPEC §2 as an option and an
environment variable (the option wins over the variable, the variable over the
default), checked into one ``Config`` before any service is built."""

from __future__ import annotations

import os
import sys
import uuid

from twisted.python import usage

from ironfunctions import __version__, bridge
from ironfunctions.config import Config, host_memory_mb
from ironfunctions.errors import ConfigError

__all__ = ["SETTINGS", "Options"]

# (option name, env var, help). Defaults are resolved in Config.from_sources.
SETTINGS = [
    ("port", "PORT", "API port [default: 8080]"),
    ("listen", "LISTEN", "Twisted endpoint to listen on; beyond loopback it needs JWT_AUTH_KEY or "
     "API_AUTH=none [default: tcp:$PORT:interface=127.0.0.1]"),
    ("data-dir", "DATA_DIR", "Folder for the embedded store, queue and node id [default: ./data]"),
    ("db-url", "DB_URL", "Datastore: sqlite:///path, postgres://user:pass@host:port/db or memory:// "
     "[default: sqlite:///<data dir>/ironfunctions.db]"),
    ("mq-url", "MQ_URL", "Async queue: sqlite:///path, redis[s]://[:pass@]host:port[/db] or memory:// "
     "[default: sqlite:///<data dir>/mq.db]"),
    ("api-url", "API_URL", "Where external async runners reach /tasks [default: http://127.0.0.1:$PORT]"),
    ("log-level", "LOG_LEVEL", "debug, info, warn or error [default: info]"),
    ("jwt-auth-key", "JWT_AUTH_KEY", "At least 32 bytes; when set, /v1/*, /tasks, /metrics and /stats "
     "need a Bearer HS256 JWT signed with it, with an exp"),
    ("api-auth", "API_AUTH", "'none' serves the API without a key on a non-loopback LISTEN, on purpose "
     "(e.g. behind an authenticating proxy) [default: jwt]"),
    ("docker-host", "DOCKER_HOST", "Docker engine URL [default: docker-py's default]"),
    ("num-async", "NUM_ASYNC", "Async calls this node runs at once; 0 leaves them to /tasks runners [default: 2 x cores]"),
    ("max-concurrency", "MAX_CONCURRENCY", "Containers this node runs at once [default: from cores and memory]"),
    ("max-request-size", "MAX_REQUEST_SIZE", "Largest request body, e.g. 6MiB [default: 6MiB]"),
    ("max-response-size", "MAX_RESPONSE_SIZE", "Largest function response, e.g. 6MiB [default: 6MiB]"),
    ("statsd-url", "STATSD_URL", "Also send metrics to statsd at udp://host:port"),
    ("docker-network", "DOCKER_NETWORK", "Network of function containers: the default is made and guarded "
     "by the daemon (SPEC 8); 'none' cuts them off; any other name is used as is [default: ironfunctions]"),
    ("function-allow-nets", "FUNCTION_ALLOW_NETS", "Private CIDRs functions may reach on the guarded network"),
    ("node-id", "NODE_ID", "Name of this daemon [default: generated once, kept in the data dir]"),
    ("async-max-attempts", "ASYNC_MAX_ATTEMPTS", "Attempts per async call [default: 3]"),
    ("async-retry-delay", "ASYNC_RETRY_DELAY", "First async retry delay, doubled each time [default: 1s]"),
    ("hot-transport", "HOT_TRANSPORT", "Hot functions' stdin/stdout: 'socket' (a unix socket and a static "
     "bridge, skipping the engine's relay) or 'attach' (the engine's attach stream) [default: socket, or "
     "attach when the bridge was not built]"),
    ("function-readonly-rootfs", "FUNCTION_READONLY_ROOTFS", "Function containers get a read-only root "
     "and a writable /tmp counted in the route's memory; false keeps a writable root [default: true]"),
    ("function-user", "FUNCTION_USER", "Run function containers as this numeric uid[:gid] "
     "[default: the image's user]"),
    ("header-timeout", "HEADER_TIMEOUT", "A request head must arrive within this of its first byte [default: 20s]"),
    ("idle-timeout", "IDLE_TIMEOUT", "An idle keep-alive connection closes after this [default: 60s]"),
    ("body-min-rate", "BODY_MIN_RATE", "A request body slower than this (over 10 s) gets 408 [default: 1KiB/s]"),
    ("max-buffered", "MAX_BUFFERED", "Request bytes held in memory across connections [default: 64MiB]"),
    ("max-spooled", "MAX_SPOOLED", "Request bytes spooled to disk across connections [default: 1GiB]"),
    ("admission-wait", "ADMISSION_WAIT", "How long a call may wait for a container slot [default: 10s]"),
    ("admission-max-waiting", "ADMISSION_MAX_WAITING", "How many calls may wait for a slot [default: 1000]"),
    ("app-max-concurrency", "APP_MAX_CONCURRENCY", "Containers one app may hold while others wait "
     "[default: half of MAX_CONCURRENCY]"),
    ("async-max-queued", "ASYNC_MAX_QUEUED", "Async calls per app waiting in the queue [default: 10000]"),
    ("async-max-queued-bytes", "ASYNC_MAX_QUEUED_BYTES", "Queued async payload bytes per app [default: 256MiB]"),
    ("async-max-age", "ASYNC_MAX_AGE", "An async call the platform could not run for this long ends "
     "error/expired [default: 24h]"),
    ("call-retention", "CALL_RETENTION", "Finished call records and logs older than this are deleted [default: 7d]"),
    ("retention-interval", "RETENTION_INTERVAL", "How often CALL_RETENTION's sweep runs [default: 5m]"),
    ("route-cache-stale", "ROUTE_CACHE_STALE", "How old a cached route may be served while the datastore "
     "is down; 0: never [default: 10m]"),
    ("record-buffer", "RECORD_BUFFER", "Call records and logs held while the datastore is down [default: 64MiB]"),
    ("lb-agent-port", "LB_AGENT_PORT", "TCP port of this node's HAProxy agent-check responder [default: off]"),
    ("trusted-proxies", "TRUSTED_PROXIES", "CIDRs whose X-Forwarded-For/-Proto/-Host are believed; dropped from others"),
    ("drain-grace", "DRAIN_GRACE", "After SIGTERM, keep serving this long while the balancer notices [default: 3s]"),
    ("shutdown-timeout", "SHUTDOWN_TIMEOUT", "After the grace, longest wait for in-flight calls [default: 60s]"),
    ("workers", "WORKERS", "Processes serving this node, each running its own containers within the "
     "node's limits; 1: one process [default: the number of cores]"),
    ("reconcile-interval", "RECONCILE_INTERVAL", "How often one node re-queues accepted async calls "
     "the queue lost [default: 20s]"),
]


class Options(usage.Options):
    """Command-line options of ``twistd ironfunctions`` (each also an env variable)."""

    synopsis = "[options]"
    longdesc = (
        "IronFunctions serverless API server. Every option can also be set by the "
        "environment variable in brackets; the option wins."
    )
    optParameters = [[name, None, None, f"{help_} (env {env})"] for name, env, help_ in SETTINGS]

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"ironfunctions {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:  # noqa: N802 (Twisted API)
        try:
            config = Config.from_sources(
                self, os.environ, os.getcwd(), os.cpu_count() or 1, host_memory_mb()
            )
            if not config.node_id:
                config = _with_node_id(config)
            if config.hot_transport == "socket":
                problem = bridge.missing()
                if problem and (self.get("hot-transport") or os.environ.get("HOT_TRANSPORT", "").strip()):
                    raise ConfigError(f"HOT_TRANSPORT=socket: {problem}")
                if problem:  # the default: fall back to the engine's stream, and say so at start
                    import attrs

                    config = attrs.evolve(config, hot_transport="attach")
                    self["bridge_missing"] = problem
        except ConfigError as e:
            # One clear line and a non-zero exit, not twistd's full usage text.
            sys.stderr.write(f"ironfunctions: configuration error: {e}\n")
            sys.exit(2)
        self["config"] = config


def _with_node_id(config: Config) -> Config:
    """The node id kept in ``<data dir>/node_id``, generated on the first start."""
    import attrs

    path = os.path.join(config.data_dir, "node_id")
    try:
        with open(path) as f:
            node_id = f.read().strip()
    except FileNotFoundError:
        node_id = ""
    if not node_id:
        node_id = "node-" + uuid.uuid4().hex[:12]
        try:
            os.makedirs(config.data_dir, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                f.write(node_id + "\n")
            os.replace(path + ".tmp", path)
        except OSError as e:
            raise ConfigError(f"DATA_DIR: cannot write {path}: {e}") from None
    return attrs.evolve(config, node_id=node_id)


