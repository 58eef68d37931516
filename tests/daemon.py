"""A real daemon process for functional tests: ``twistd -n ironfunctions`` on a free
port, talked to over real HTTP.

``daemon`` fixture (function scope) gives a started ``Daemon`` on the embedded default
(SQLite under a temporary data dir); ``daemon_factory`` starts more, with any settings.
"""

from __future__ import annotations

import http.client as httpclient
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlsplit

import attrs
import pytest

from ironfunctions.logging import logfmt_value
from ironfunctions.tap import SETTINGS
from tests.servers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def http(method: str, url: str, body: bytes | str | dict[str, Any] | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
    """One blocking HTTP request (a fresh connection each time); dict bodies become JSON."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    parts = urlsplit(url)
    assert parts.hostname is not None
    conn = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + ("?" + parts.query if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


class Daemon:
    """One ``twistd -n ironfunctions`` process with its own port and data dir."""

    def __init__(self, workdir: str, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = dict(env or {})
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec: Callable[[], None] | None = None  # run in the child before twistd (e.g. setrlimit)
        self.log_path = os.path.join(workdir, "daemon.log")
        os.makedirs(workdir, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 30) -> "Daemon":
        env = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
        env.update({"PORT": str(self.port), "LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
                    "PYTHONPATH": REPO, "DOCKER_NETWORK": "none",
                    # No balancer polls a test daemon: stop at once (a test that wants the
                    # drain sequence sets DRAIN_GRACE itself).
                    "DRAIN_GRACE": "0"})
        env.update(self.env)
        log = open(self.log_path, "ab")
        self._log_start = log.tell()  # this start's lines begin here (restarts append)
        self.proc = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", "ironfunctions", *self.args],
            cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=self.preexec,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the node can serve: ``/health`` 200 (datastore, queue and Docker
        all answer), which also means ``/v1`` and ``/r`` are past their 503s."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                last = self.get("/health", timeout=2)
                if last.status == 200 and self._workers_ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon not healthy in {timeout}s (last: {last}):\n{self.log()}")

    def _workers_ready(self) -> bool:
        """With worker processes (WORKERS > 1), whether each has its datastore and queue
        (each logs both once): a test's requests may reach any of them."""
        if self.proc is None:
            return True
        workers = [pid for pid in _children(self.proc.pid) if _is_worker(pid)]
        if not workers:
            return True
        with open(self.log_path, "rb") as f:
            f.seek(getattr(self, "_log_start", 0))
            log = f.read()
        return min(log.count(b'msg="datastore ready"'), log.count(b'msg="queue ready"')) >= len(workers)

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 30) -> Reply:
        return http(method, self.url + path, body, headers, timeout)

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    def add_route(self, app: str, path: str, image: str, **fields: Any) -> Reply:
        """Create route ``path`` of ``app`` (made if missing) running ``image``; the
        test fails unless the daemon answers 200."""
        reply = self.post(f"/v1/apps/{app}/routes", {"route": {"path": path, "image": image, **fields}})
        assert reply.status == 200, reply.body
        return reply

    def log_mark(self) -> int:
        """Where the log ends now (for ``each_process_logged``)."""
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def each_process_logged(self, msg: str, since: int) -> bool:
        """Whether every process serving requests (each worker with WORKERS > 1, else
        the one daemon) has logged ``msg`` after offset ``since`` of the log."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            lines = [line for line in f.read().splitlines() if b"msg=" + logfmt_value(msg).encode() in line]
        workers = [pid for pid in _children(self.proc.pid) if _is_worker(pid)] if self.proc else []
        if not workers:
            return bool(lines)
        tags = {m.group(1) for line in lines if (m := re.search(rb" worker=(\d+) ", line))}
        return len(tags) >= len(workers)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; return the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"daemon did not stop within {timeout}s after SIGTERM:\n{self.log()}")
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9, as a crash: the daemon and its worker processes (WORKERS > 1), which
        would otherwise notice their parent gone and stop cleanly."""
        if self.proc is not None:
            for pid in _children(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> "Daemon":
        self.stop()
        return self.start()


class RoutedDaemon(Daemon):
    """For the type checker only: a ``Daemon`` to which a test fixture added a
    ``route(path, image, **fields)`` shortcut (``daemon.route = lambda ...``)."""

    route: Callable[..., Reply]


# Every setting the daemon reads (tap.SETTINGS), so none leaks in from the environment
# the tests run in.
_SETTINGS = {env for _, env, _ in SETTINGS}


class DaemonFactory(Protocol):
    def __call__(self, env: dict[str, str] | None = None, args: list[str] | None = None,
                 start: bool = True, workdir: str | None = None) -> Daemon: ...


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """``daemon_factory(env=..., args=..., start=True)`` -> a Daemon; all stopped at the end."""
    started: list[Daemon] = []

    def make(env: dict[str, str] | None = None, args: list[str] | None = None,
             start: bool = True, workdir: str | None = None) -> Daemon:
        d = Daemon(workdir or str(tmp_path / f"daemon{len(started)}"), env, args)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        try:
            d.stop()
        except RuntimeError:
            pass


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> Daemon:
    """A started daemon on the embedded default (SQLite in its own data dir)."""
    return daemon_factory()


def _children(parent: int) -> list[int]:
    """The live child processes of ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"IRONFUNCTIONS_WORKER=" in f.read()
    except OSError:
        return False
