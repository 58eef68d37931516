"""Functional-test helpers for a daemon with worker processes (``WORKERS`` > 1).

Which worker serves a connection is the kernel's choice (they share one listening
socket), so tests find out afterwards: the server side of a TCP connection is a socket
inode (``/proc/net/tcp``), and the worker holding it has it among its file descriptors
(``/proc/<pid>/fd``). ``connections_on_each_worker`` opens keep-alive connections until
every worker holds one, so a test can send a request to the worker it chooses.
"""

from __future__ import annotations

import http.client as httpclient
import json
import os
import time
from typing import Any

from tests.daemon import Daemon, Reply

WORKER_ENV = "IRONFUNCTIONS_WORKER"


def worker_pids(parent: int) -> dict[int, int]:
    """The live worker processes of ``parent``: worker index -> pid."""
    workers = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) != parent or state == "Z":
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        index = env.get(WORKER_ENV.encode())
        if index is not None:
            workers[int(index)] = int(name)
    return workers


def wait_workers(parent: int, count: int, timeout: float = 30.0) -> dict[int, int]:
    """Wait until ``parent`` has ``count`` live workers; return them."""
    deadline = time.monotonic() + timeout
    while len(workers := worker_pids(parent)) < count:
        assert time.monotonic() < deadline, f"only workers {workers} after {timeout}s"
        time.sleep(0.05)
    return workers


def _server_inode(server_port: int, client_port: int) -> int | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                return inode
    return None


def _holder(inode: int, workers: dict[int, int]) -> int | None:
    target = f"socket:[{inode}]"
    for index, pid in workers.items():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return index
            except OSError:
                continue
    return None


class WorkerConnection:
    """A keep-alive HTTP connection to ``daemon`` and the worker that accepted it."""

    def __init__(self, daemon: Daemon, workers: dict[int, int], timeout: float = 60.0) -> None:
        self.conn = httpclient.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)
        self.conn.connect()
        assert self.conn.sock is not None
        client_port = self.conn.sock.getsockname()[1]
        deadline = time.monotonic() + 5
        self.worker: int | None = None
        while self.worker is None:
            assert time.monotonic() < deadline, "no worker accepted the connection"
            inode = _server_inode(daemon.port, client_port)
            if inode is not None and inode != 0:
                self.worker = _holder(inode, workers)
            if self.worker is None:
                time.sleep(0.01)

    def request(self, method: str, path: str, body: bytes | str | dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def close(self) -> None:
        self.conn.close()


def connections_on_each_worker(daemon: Daemon, workers: dict[int, int], tries: int = 40) -> dict[int, WorkerConnection]:
    """One open keep-alive connection on each of ``workers`` (index -> connection)."""
    held: dict[int, WorkerConnection] = {}
    for _ in range(tries):
        conn = WorkerConnection(daemon, workers)
        assert conn.worker is not None
        if conn.worker in held:
            conn.close()
            time.sleep(0.05)  # let the board's counts catch up
            continue
        held[conn.worker] = conn
        if len(held) == len(workers):
            return held
    raise AssertionError(f"connections landed only on workers {sorted(held)} in {tries} tries")
