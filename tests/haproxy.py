"""HAProxy for the cluster tests and the benchmark: ``Balancer`` runs ``haproxy -db`` in
the foreground with either a small config of its own (``HAPROXY_CFG``) or the shipped
``etc/haproxy.cfg`` changed only in its addresses and ports (``rewrite_sample``), and
reads HAProxy's view of the nodes through its admin socket."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import time
from typing import Any, Callable

import attrs

from tests.servers import free_port

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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "etc", "haproxy.cfg")
_SERVER_LINE = re.compile(r"^\s*server node\d+ \S+ agent-port \d+\n", re.MULTILINE)


def rewrite_sample(config: str, front: int, stats: int, nodes: list[tuple[int, int]],
                   admin_socket: str | None = None) -> str:
    """The shipped sample with only its addresses and ports changed, as an operator
    does: the frontend's ``bind``, the stats page's, and in each backend the run of
    ``server`` lines replaced by one line per node, ``node1``... with its (api port,
    agent port) on loopback. ``admin_socket``: also a ``stats socket`` (the one added
    line: it observes, it does not balance)."""
    config = config.replace("bind :8000", f"bind 127.0.0.1:{front}")
    config = config.replace("bind 127.0.0.1:8404", f"bind 127.0.0.1:{stats}")
    lines = "".join(f"    server node{i + 1} 127.0.0.1:{api} agent-port {agent}\n"
                    for i, (api, agent) in enumerate(nodes))
    out: list[str] = []
    last = 0
    for match in _SERVER_LINE.finditer(config):
        if match.start() != last or not out:  # the first line of a run: the whole run becomes `lines`
            out += [config[last:match.start()], lines]
        last = match.end()
    config = "".join(out) + config[last:]
    if admin_socket is not None:
        config = re.sub(r"^global\n", f"global\n    stats socket {admin_socket} mode 600 level admin\n", config,
                        count=1, flags=re.MULTILINE)
    return config


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout}s")
        time.sleep(interval)


@attrs.define
class Balancer:
    """``haproxy -db -f cfg`` in the foreground on a free loopback port.

    ``agents`` (server name -> agent port) given: the shipped ``etc/haproxy.cfg``
    (rewritten by ``rewrite_sample``, then by ``edit`` if given: the benchmark's
    variants); else ``HAPROXY_CFG``. ``servers`` maps server names (``node1``... for
    the shipped config) to node ports."""

    folder: str
    port: int
    servers: dict[str, int]  # server name -> node port
    agents: dict[str, int] | None = None  # server name -> agent port: the shipped config
    edit: Callable[[str], str] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.folder, "haproxy.log")

    def config(self) -> str:
        socket_path = os.path.join(self.folder, "admin.sock")
        if self.agents is None:
            lines = "\n".join(f"    server {name} 127.0.0.1:{port} check" for name, port in self.servers.items())
            return HAPROXY_CFG.format(folder=self.folder, port=self.port, servers=lines)
        with open(SAMPLE) as f:
            config = rewrite_sample(f.read(), self.port, free_port(),
                                    [(port, self.agents[name]) for name, port in self.servers.items()], socket_path)
        return self.edit(config) if self.edit is not None else config

    def start(self, timeout: float = 15) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy not found (scripts/setup.sh --test installs it)")
        os.makedirs(self.folder, exist_ok=True)
        cfg = os.path.join(self.folder, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(self.config())
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([binary, "-db", "-f", cfg], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_until(lambda: self.process is not None and (self.process.poll() is not None or self.all_up()),
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

    def stat(self, backend: str | None = None) -> dict[str, dict[str, str]]:
        """HAProxy's figures (``show stat``) for each of our servers: name -> its CSV
        row (``status``, ``weight``, ``stot``: sessions sent to it...), in ``backend``,
        or, when None, the row that looks worst across backends (not ``UP`` first);
        empty if HAProxy does not answer."""
        try:
            text = self.admin("show stat")
        except OSError:
            return {}
        if not text.startswith("# "):
            return {}
        rows: dict[str, dict[str, str]] = {}
        for row in csv.DictReader(io.StringIO(text[2:])):
            name = row["svname"]
            if name not in self.servers or (backend is not None and row["pxname"] != backend):
                continue
            if name not in rows or rows[name]["status"] == "UP":
                rows[name] = row
        return rows

    def states(self) -> dict[str, str]:
        """Server name -> HAProxy's view of it (``UP``, ``DOWN``, ``UP 1/2``, ``DRAIN``...;
        with the shipped config, the worse of its two backends); empty if HAProxy does
        not answer."""
        return {name: row["status"] for name, row in self.stat().items()}

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


