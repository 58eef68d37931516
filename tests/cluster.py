"""A throwaway IronFunctions cluster for end-to-end tests: N real daemons on one real
Postgres and one real Redis, behind a real HAProxy (SPEC §9's shape).

``start_cluster(workdir, nodes=3)`` is a context manager that yields a ``Cluster``;
whatever happens inside, everything it started is stopped on the way out (daemons,
HAProxy, Redis, the database or the Postgres cluster, and the containers labelled with
the nodes' ids). ``Cluster.restart_redis(down=3)`` and ``restart_postgres(down=3)``
take a backend away for a few seconds (SPEC §10).

By default HAProxy runs a small config of its own (``tests/haproxy.py``): round robin,
``GET /health`` every 500 ms (``fall 2 rise 2``), so a node whose ``/health`` turns 503
leaves the pool within about a second; it retries requests that failed to connect or
got no answer on another node. With ``shipped=True`` it runs the shipped
``etc/haproxy.cfg`` instead, changed only in its addresses and ports
(``rewrite_sample``): each node then also runs its agent (``LB_AGENT_PORT``) and drains
on SIGTERM for ``DRAIN_GRACE``. Either way its admin socket tells which nodes it
considers up (``Balancer.states()``) and each server's figures (``Balancer.stat()``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from typing import Any, Callable, Iterator

import attrs

from ironfunctions.models import LABEL_NODE
from tests.daemon import Daemon, Reply, http
from tests.haproxy import Balancer, wait_until
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
SHIPPED_DRAIN_GRACE = "2500ms"

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
        wait_until(lambda: all(s == "ok" for s in self.health()) and self.balancer.all_up(), timeout,
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

    def server(self, i: int) -> str:
        """HAProxy's name for node ``i``."""
        return list(self.balancer.servers)[i]

    def wait_node_up(self, i: int, timeout: float = 30) -> None:
        """Wait until HAProxy has node ``i`` ``UP`` again (in every backend)."""
        name = self.server(i)
        wait_until(lambda: self.balancer.states().get(name) == "UP", timeout, f"HAProxy sees {name} up", interval=0.1)

    def restart_node(self, i: int, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM node ``i``, wait for it to exit, start it again (same port, same
        NODE_ID), wait until it is healthy and HAProxy has it up; its exit status and
        the seconds it took."""
        started = time.monotonic()
        code = self.nodes[i].stop(timeout)
        self.nodes[i].start(wait=True, timeout=timeout)
        self.wait_node_up(i, timeout)
        return code, time.monotonic() - started

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



@contextlib.contextmanager
def start_cluster(workdir: str, nodes: int = 3, *, postgres: PostgresCluster | None = None,
                  redis_persistent: bool = True, env: dict[str, str] | None = None,
                  name: str = "e2e", shipped: bool = False,
                  edit: Callable[[str], str] | None = None) -> Iterator[Cluster]:
    """Start ``nodes`` daemons (ids ``{name}-0``...) on a fresh database of ``postgres``
    (a Postgres cluster of its own when None) and a fresh Redis, and HAProxy in front;
    yield the running ``Cluster``; stop and remove all of it on the way out.

    ``env`` adds to (or overrides) ``NODE_ENV`` for every node. ``shipped``: HAProxy
    runs ``etc/haproxy.cfg`` (then ``edit``-ed if given), each node its agent on a
    port of its own and a ``DRAIN_GRACE`` of ``SHIPPED_DRAIN_GRACE`` (two of the
    sample's 1 s agent intervals and a half) unless ``env`` says otherwise."""
    with contextlib.ExitStack() as cleanup:
        if postgres is None:
            postgres = start_postgres_cluster()
            cleanup.callback(stop_postgres_cluster, postgres)
        db_url = postgres.create_database()

        def drop_database(cluster: PostgresCluster = postgres) -> None:
            if not cluster.accepts_connections():  # a test that failed while it was down
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
            agent = {"LB_AGENT_PORT": str(free_port()), "DRAIN_GRACE": SHIPPED_DRAIN_GRACE} if shipped else {}
            settings = {**NODE_ENV, **agent, **(env or {}), "DB_URL": db_url, "MQ_URL": redis.url(), "NODE_ID": nid}
            daemon = Daemon(os.path.join(workdir, f"node{i}"), settings)
            cleanup.callback(_stop_daemon, daemon)
            daemons.append(daemon.start(wait=False))
        for daemon in daemons:
            daemon.wait_ready(60)

        names = [f"node{i + 1}" if shipped else f"n{i}" for i in range(nodes)]
        balancer = Balancer(os.path.join(workdir, "haproxy"), free_port(),
                            {n: d.port for n, d in zip(names, daemons)},
                            {n: int(d.env["LB_AGENT_PORT"]) for n, d in zip(names, daemons)} if shipped else None,
                            edit)
        cleanup.callback(balancer.stop)
        balancer.start()
        yield Cluster(postgres, db_url, redis, daemons, node_ids, balancer)


def _stop_daemon(daemon: Daemon) -> None:
    try:
        daemon.stop(timeout=30)
    except RuntimeError:
        pass  # killed after the timeout; its log says why
