"""A throwaway IronFunctions cluster for end-to-end tests: N real daemons on one real
Postgres and one real Redis, behind a real HAProxy (SPEC §9's shape).

``start_cluster(workdir, nodes=3)`` is a context manager that yields a ``Cluster``;
whatever happens inside, everything it started is stopped on the way out (daemons,
HAProxy, Redis, the database or the Postgres cluster, and the containers labelled with
the nodes' ids). ``Cluster.restart_redis(down=3)`` and ``restart_postgres(down=3)``
take a backend away for a few seconds (SPEC §10).

HAProxy checks ``GET /health`` every 500 ms (``fall 2 rise 2``), as the shipped sample
does, so a node whose ``/health`` turns 503 leaves the pool within about a second; it
retries requests that failed to connect or got no answer on another node. Its admin
socket tells which nodes it considers up (``Balancer.states()``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from typing import Any, Iterator

import attrs
import psycopg2

from ironfunctions.models import LABEL_NODE
from tests.daemon import Daemon, Reply, http
from tests.servers import (
    PostgresCluster,
    RedisServer,
    free_port,
    start_postgres_cluster,
    start_redis_server,
    stop_postgres_cluster,
    stop_redis_server,
)

# Every node's environment unless the test says otherwise: a short reconcile interval
# (SPEC §10) so that a lost queue is rebuilt within the test; fast async retries.
NODE_ENV = {"RECONCILE_INTERVAL": "2", "ASYNC_RETRY_DELAY": "100ms", "MAX_CONCURRENCY": "8"}

HAPROXY_CFG = """\
global
    # Each connection costs HAProxy two file descriptors (client and server side).
    maxconn 200
    stats socket {folder}/admin.sock mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    # Retry elsewhere what never reached a node or got no answer at all; an answer
    # (even a 503) is the node's word and goes to the client.
    retries 3
    option redispatch
    retry-on conn-failure empty-response

frontend ironfunctions
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}
"""


def _wait(check: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout}s")
        time.sleep(interval)


@attrs.define
class Balancer:
    """``haproxy -db -f cfg`` in the foreground on a free loopback port."""

    folder: str
    port: int
    servers: dict[str, int]  # server name -> node port
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.folder, "haproxy.log")

    def start(self, timeout: float = 15) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy not found (scripts/setup.sh --test installs it)")
        os.makedirs(self.folder, exist_ok=True)
        lines = "\n".join(f"    server {name} 127.0.0.1:{port} check" for name, port in self.servers.items())
        cfg = os.path.join(self.folder, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(folder=self.folder, port=self.port, servers=lines))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([binary, "-db", "-f", cfg], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()
        try:
            _wait(lambda: self.process is not None and (self.process.poll() is not None or self.all_up()),
                  timeout, "HAProxy sees every node up")
        except RuntimeError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.process.returncode}: {self.log()[-2000:]}")

    def admin(self, command: str) -> str:
        """One command on the admin socket (e.g. ``show stat``); its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(os.path.join(self.folder, "admin.sock"))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Server name -> HAProxy's view of it (``UP``, ``DOWN``, ``UP 1/2``...);
        empty if HAProxy does not answer."""
        try:
            lines = self.admin("show stat").splitlines()
        except OSError:
            return {}
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        name, status = header.index("svname"), header.index("status")
        rows = [line.split(",") for line in lines[1:] if line]
        return {r[name]: r[status] for r in rows if r[name] in self.servers}

    def all_up(self) -> bool:
        states = self.states()
        return len(states) == len(self.servers) and all(s == "UP" for s in states.values())

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@attrs.define
class Cluster:
    """Running nodes behind a balancer, on one Postgres database and one Redis."""

    postgres: PostgresCluster
    db_url: str
    redis: RedisServer
    nodes: list[Daemon]
    node_ids: list[str]
    balancer: Balancer

    @property
    def url(self) -> str:
        """The balancer's address: where clients go."""
        return self.balancer.url

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 30) -> Reply:
        """One request through the balancer."""
        return http(method, self.url + path, body, headers, timeout)

    def health(self, timeout: float = 2) -> list[str]:
        """Each node's ``/health`` in one word: its ``status`` (``ok``, ``degraded``,
        ``unavailable``), or ``no answer``."""
        states = []
        for node in self.nodes:
            try:
                reply = node.get("/health", timeout=timeout)
                states.append(str(reply.json().get("status", reply.status)))
            except (OSError, ValueError):
                states.append("no answer")
        return states

    def wait_all_ok(self, timeout: float = 30) -> float:
        """Wait until every node's ``/health`` is ``ok`` and HAProxy has them all up;
        return the seconds it took."""
        started = time.monotonic()
        _wait(lambda: all(s == "ok" for s in self.health()) and self.balancer.all_up(), timeout,
              "every node healthy behind the balancer", interval=0.1)
        return time.monotonic() - started

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis.start()

    def stop_postgres(self) -> None:
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres.start()

    def restart_redis(self, down: float = 3.0) -> tuple[float, float]:
        """Take Redis away for ``down`` seconds (what it had survives only if it was
        started ``persistent``); return the monotonic times it went down and was back."""
        went = time.monotonic()
        self.stop_redis()
        time.sleep(max(0.0, down - (time.monotonic() - went)))
        self.start_redis()
        return went, time.monotonic()

    def restart_postgres(self, down: float = 3.0) -> tuple[float, float]:
        """Take Postgres away for ``down`` seconds (a fast shutdown: clients are
        disconnected); return the monotonic times it went down and was back."""
        went = time.monotonic()
        self.stop_postgres()
        time.sleep(max(0.0, down - (time.monotonic() - went)))
        self.start_postgres()
        return went, time.monotonic()

    def logs(self) -> str:
        """Every node's log and HAProxy's, for a failure message or a post-mortem."""
        parts = [f"==== {nid} ====\n{node.log()}" for nid, node in zip(self.node_ids, self.nodes)]
        parts.append(f"==== haproxy (last lines) ====\n{self.balancer.log()[-5000:]}")
        return "\n".join(parts)


def remove_containers(node_ids: list[str]) -> None:
    """Remove every container labelled with one of these nodes' ids."""
    for nid in node_ids:
        found = subprocess.run(["docker", "ps", "-aq", f"--filter=label={LABEL_NODE}={nid}"],
                               capture_output=True, text=True, timeout=60).stdout.split()
        if found:
            subprocess.run(["docker", "rm", "-f", *found], capture_output=True, timeout=120)


def _accepts_connections(cluster: PostgresCluster) -> bool:
    try:
        psycopg2.connect(cluster.url(), connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


@contextlib.contextmanager
def start_cluster(workdir: str, nodes: int = 3, *, postgres: PostgresCluster | None = None,
                  redis_persistent: bool = True, env: dict[str, str] | None = None,
                  name: str = "e2e") -> Iterator[Cluster]:
    """Start ``nodes`` daemons (ids ``{name}-0``...) on a fresh database of ``postgres``
    (a Postgres cluster of its own when None) and a fresh Redis, and HAProxy in front;
    yield the running ``Cluster``; stop and remove all of it on the way out.

    ``env`` adds to (or overrides) ``NODE_ENV`` for every node."""
    with contextlib.ExitStack() as cleanup:
        if postgres is None:
            postgres = start_postgres_cluster()
            cleanup.callback(stop_postgres_cluster, postgres)
        db_url = postgres.create_database()

        def drop_database(cluster: PostgresCluster = postgres) -> None:
            if not _accepts_connections(cluster):  # a test that failed while it was down
                cluster.start()
            cluster.drop_database(db_url)

        cleanup.callback(drop_database)
        redis = start_redis_server(persistent=redis_persistent)
        cleanup.callback(stop_redis_server, redis)

        node_ids = [f"{name}-{i}-{os.getpid()}" for i in range(nodes)]
        # Registered before any node starts: a node that got as far as a container
        # leaves nothing behind. (ExitStack runs callbacks last-in first-out, so this
        # runs after the nodes have stopped.)
        cleanup.callback(remove_containers, node_ids)
        daemons = []
        for i, nid in enumerate(node_ids):
            settings = {**NODE_ENV, **(env or {}), "DB_URL": db_url, "MQ_URL": redis.url(), "NODE_ID": nid}
            daemon = Daemon(os.path.join(workdir, f"node{i}"), settings)
            cleanup.callback(_stop_daemon, daemon)
            daemons.append(daemon.start(wait=False))
        for daemon in daemons:
            daemon.wait_ready(60)

        balancer = Balancer(os.path.join(workdir, "haproxy"), free_port(),
                            {f"n{i}": d.port for i, d in enumerate(daemons)})
        cleanup.callback(balancer.stop)
        balancer.start()
        yield Cluster(postgres, db_url, redis, daemons, node_ids, balancer)


def _stop_daemon(daemon: Daemon) -> None:
    try:
        daemon.stop(timeout=30)
    except RuntimeError:
        pass  # killed after the timeout; its log says why
