"""Throwaway real servers for the test run: a Postgres cluster and a Redis server, each
on a free loopback port.

The cluster is created with ``initdb`` into a temporary folder, started with
``pg_ctl``, and deleted at the end of the session. Either server can be started with TLS
on (``ServerTLS``: a certificate, its key and the CA that signed it, see
``tests/tlscerts.py``). When the tests run as root, the
server runs as the ``postgres`` user (Postgres refuses to run as root). A cluster that
cannot start raises: the tests that need it fail, they are never skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from typing import Iterator

import attrs
import psycopg2
import pytest


def free_port() -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    """The newest installed Postgres' ``name`` binary (initdb, pg_ctl, ...)."""
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise RuntimeError(f"Postgres binary {name!r} not found (apt-get install postgresql)")


@attrs.frozen
class ServerTLS:
    """A server's certificate and key files, and the CA file that signed the certificate."""

    cert: str
    key: str
    ca: str


@attrs.define
class PostgresCluster:
    """A running throwaway cluster. ``url(db)`` names a database on it; ``stop()`` and
    ``start()`` take it down and bring it back (same port, same data) for outage tests."""

    folder: str
    port: int
    user: str
    tls: ServerTLS | None = None  # ssl=on with these (copies owned by the server's user)

    @property
    def data(self) -> str:
        return os.path.join(self.folder, "data")

    def url(self, db: str = "postgres") -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{db}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", self.user, "--", *argv]
        return argv

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        argv = self._as_owner([_pg_bin("pg_ctl"), "-D", self.data, "-w", "-t", "30", *args])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = os.path.join(self.folder, "postgres.log")
            tail = open(log).read()[-2000:] if os.path.exists(log) else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {result.stderr}{result.stdout}\n{tail}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-k {self.folder} -h 127.0.0.1 -p {self.port} -c fsync=off -c full_page_writes=off"
        if self.tls is not None:
            cert, key = self._owned_copy(self.tls.cert, "server.crt"), self._owned_copy(self.tls.key, "server.key")
            options += f" -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}"
        self._pg_ctl("-l", os.path.join(self.folder, "postgres.log"), "-o", options, "start")

    def _owned_copy(self, path: str, name: str) -> str:
        """``path`` copied into the cluster's folder, owned by the server's user, mode
        0600 (Postgres refuses a key file others can read)."""
        target = os.path.join(self.folder, name)
        shutil.copyfile(path, target)
        os.chmod(target, 0o600)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(target, entry.pw_uid, entry.pw_gid)
        return target

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` disconnects clients, ``immediate`` is a crash."""
        self._pg_ctl("-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def accepts_connections(self) -> bool:
        """Whether the cluster is up (a test that stopped it may have failed before
        starting it again)."""
        try:
            psycopg2.connect(self.url(), connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def execute(self, sql: str, db: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        conn = psycopg2.connect(self.url(db), connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, template: str = "template0") -> str:
        """A new empty database; return its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE {template}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_postgres_cluster(tls: ServerTLS | None = None) -> PostgresCluster:
    """initdb + pg_ctl start into a fresh temporary folder (with ``ssl=on`` if ``tls``).
    Raise if it cannot start."""
    root = os.geteuid() == 0
    user = "postgres" if root else pwd.getpwuid(os.geteuid()).pw_name
    folder = tempfile.mkdtemp(prefix="ironfunctions-pg-")
    if root:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    os.chmod(folder, 0o700)
    cluster = PostgresCluster(folder=folder, port=free_port(), user=user, tls=tls)
    argv = cluster._as_owner(
        [_pg_bin("initdb"), "-D", cluster.data, "-U", user, "-A", "trust", "-E", "UTF8", "--no-sync"]
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {result.stderr}{result.stdout}")
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return cluster


def stop_postgres_cluster(cluster: PostgresCluster) -> None:
    """Stop the server (if it runs) and delete its files."""
    try:
        cluster.stop("immediate")
    except Exception:
        pass  # already stopped by an outage test that failed half-way
    shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway Postgres for the whole session; failing to start fails the tests."""
    cluster = start_postgres_cluster()
    try:
        yield cluster
    finally:
        stop_postgres_cluster(cluster)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """URL of a database on the session's throwaway Postgres."""
    return postgres_cluster.create_database()


@pytest.fixture
def postgres_db(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """URL of a fresh, empty database for one test, dropped afterwards."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)



# -- Redis


@attrs.define
class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, with no persistence.
    ``stop()`` and ``start()`` take it down and bring it back (same port) for outage tests."""

    folder: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    persistent: bool = False  # append-only file, fsync'd on every write: survives a restart
    tls: ServerTLS | None = None  # TLS only (no plain port), clients not asked for certificates

    def url(self, db: int = 0, prefix: str | None = None) -> str:
        """``redis://``; with TLS, ``rediss://localhost`` trusting the server's CA."""
        if self.tls is None:
            url = f"redis://127.0.0.1:{self.port}/{db}"
            return url if prefix is None else f"{url}?prefix={prefix}"
        url = f"rediss://localhost:{self.port}/{db}?ssl_ca_certs={self.tls.ca}"
        return url if prefix is None else f"{url}&prefix={prefix}"

    def start(self, timeout: float = 10) -> None:
        """Start the server and wait until it answers PING. Raise if it cannot start."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        log = open(os.path.join(self.folder, "redis.log"), "ab")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", self.folder, "--daemonize", "no"]
        if self.tls is not None:
            argv[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            argv += ["--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key,
                     "--tls-ca-cert-file", self.tls.ca, "--tls-auth-clients", "no"]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(argv, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") == b"+PONG":
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = open(os.path.join(self.folder, "redis.log"), "rb").read()[-2000:]
                raise RuntimeError(f"redis-server did not start on port {self.port}: {tail!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (if it runs) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def command(self, *args: str) -> bytes:
        """Send one command and return the first line of the reply (enough for
        PING, FLUSHALL and the like)."""
        request = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
        )
        with self._connect() as s:
            s.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if self.tls is None:
            return s
        context = ssl.create_default_context(cafile=self.tls.ca)
        return context.wrap_socket(s, server_hostname="localhost")

    def flush(self) -> None:
        """Empty every database."""
        if self.command("FLUSHALL") != b"+OK":
            raise RuntimeError("FLUSHALL failed")


def start_redis_server(persistent: bool = False, tls: ServerTLS | None = None) -> RedisServer:
    """A new redis-server in a fresh temporary folder (TLS only, if ``tls``). Raise if
    it cannot start."""
    server = RedisServer(folder=tempfile.mkdtemp(prefix="ironfunctions-redis-"), port=free_port(),
                         persistent=persistent, tls=tls)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.folder, ignore_errors=True)
        raise
    return server


def stop_redis_server(server: RedisServer) -> None:
    """Stop the server and delete its folder."""
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis for the whole session; failing to start fails the tests."""
    server = start_redis_server()
    try:
        yield server
    finally:
        stop_redis_server(server)


@pytest.fixture(scope="session")
def rediss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway Redis speaking only TLS, with a certificate for ``localhost`` from a
    CA made for it; its ``url()`` is ``rediss://`` trusting that CA."""
    from tests.tlscerts import make_ca

    ca = make_ca(str(tmp_path_factory.mktemp("rediss-pki")))
    issued = ca.issue("server")
    server = start_redis_server(tls=ServerTLS(issued.cert, issued.key, ca.cert))
    try:
        yield server
    finally:
        stop_redis_server(server)
