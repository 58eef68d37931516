"""The reactor side of a hot container under ``HOT_TRANSPORT=socket`` (issue 6).

The container runs ``/.ifbridge/ifbridge <socket> <its own argv...>``
(``ironfunctions/bridge``): the bridge connects to a unix socket the daemon listens on in
a per-container host directory bind-mounted into the container, puts the connection on
its stdin and stdout and execs the function. The function's stdout then reaches the
daemon without the engine's attach relay; its stderr still comes through the engine
(an attach with stderr only), so per-call logs keep working.

The connection is a ``drivers.connection.SocketConnection`` (plain reads and writes).
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from ironfunctions.drivers.connection import SocketConnection
from ironfunctions.drivers.interface import IAttachedContainer, IContainerStream

BRIDGE_IN_CONTAINER = "/.ifbridge/ifbridge"
SOCKET_DIR_IN_CONTAINER = "/.ifbridge/sock"
SOCKET_NAME = "s"


class SocketDirs:
    """Per-container socket directories under one host directory (the daemon's own,
    ``<DATA_DIR>/hot-sockets``). A container sees only its own directory, mounted
    read-only; the root is 0700, so on the host only root reaches the sockets and
    whatever a container's directory holds (issue 11)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def wipe(self) -> None:
        """Remove every directory left behind (stop, or a crash before this start)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def make(self, name: str) -> str:
        path = os.path.join(self.root, name)
        try:
            os.mkdir(path, 0o755)
        except FileNotFoundError:
            _private_dirs(self.root)
            os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # whatever the umask: the function may run as any user
        return path

    def remove(self, name: str) -> None:
        shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)


def listen(directory: str) -> socket.socket:
    """A non-blocking unix listening socket at ``<directory>/s`` that any user can
    connect to. Bound through ``/proc/self/fd`` so that a deep data dir does not hit the
    108-byte limit of socket paths."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
        os.chmod(os.path.join(directory, SOCKET_NAME), 0o777)
        listener.listen(1)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    finally:
        os.close(dir_fd)
    return listener


class _Listener(FileDescriptor):
    """Accepts the one connection of the bridge, then closes."""

    def __init__(self, sock: socket.socket, handle: "BridgedContainer", reactor: Any) -> None:
        super().__init__(reactor)
        self._sock = sock
        self._fd = sock.fileno()
        self._handle = handle
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:  # noqa: N802 (Twisted API)
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            return None
        conn.setblocking(False)
        self._handle._connected(conn)
        return main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 (Twisted API)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self._sock.close()


@implementer(IAttachedContainer, IContainerStream)
class BridgedContainer:
    """The handle of a bridged hot container, and the stream its stderr attach feeds.

    Writes before the bridge has connected are kept and sent on connection. The
    ``IContainerStream`` sees ``stream_closed`` once: when the connection ends, or when
    the container's stderr stream ends before the bridge ever connected (it died at
    start, e.g. an image whose command cannot run).
    """

    def __init__(self, stream: IContainerStream, listener: socket.socket, reactor: Any) -> None:
        self.container_id = ""
        self._stream = stream
        self._reactor = reactor
        self._pending: list[bytes] = []
        self._stdin_closed = False
        self._closed = False
        self._connection: SocketConnection | None = None
        self._listener: _Listener | None = _Listener(listener, self, reactor)
        self._listener.startReading()  # type: ignore[no-untyped-call]

    # -- IAttachedContainer

    def write(self, data: bytes) -> None:
        if self._connection is not None:
            self._connection.write(data)
        elif not self._closed:
            self._pending.append(data)

    def close_stdin(self) -> None:
        self._stdin_closed = True
        if self._connection is not None:
            self._connection.loseWriteConnection()  # type: ignore[no-untyped-call]

    # -- the stderr attach stream (an IContainerStream for the attach connection)

    def stdout_received(self, data: bytes) -> None:
        pass  # stdout goes through the socket; the attach asks for stderr only

    def stderr_received(self, data: bytes) -> None:
        self._stream.stderr_received(data)

    def stream_closed(self) -> None:
        if self._connection is None:
            self.abort()

    # -- the socket

    def _connected(self, conn: socket.socket) -> None:
        self._listener = None
        if self._closed:
            conn.close()
            return
        connection = self._connection = SocketConnection(conn, self._stream, self._close, self._reactor)
        connection.startReading()  # type: ignore[no-untyped-call]
        for data in self._pending:
            connection.write(data)
        self._pending = []
        if self._stdin_closed:
            connection.loseWriteConnection()  # type: ignore[no-untyped-call]

    def discard(self) -> None:
        """Stop listening without telling the stream (the start failed)."""
        self._closed = True
        self.abort()

    def abort(self) -> None:
        """Stop listening and report the stream closed (once)."""
        if self._listener is not None:
            self._listener.connectionLost(Failure(main.CONNECTION_DONE))
            self._listener = None
        if self._connection is not None:
            self._connection.loseConnection()  # type: ignore[no-untyped-call]
        else:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pending = []
            self._stream.stream_closed()


def _private_dirs(root: str) -> None:
    """Make ``root`` and each missing directory above it 0700 (whatever the umask):
    with worker processes the root is ``hot-sockets/w<index>``, and ``hot-sockets``
    must be as closed as the root."""
    missing = []
    path = root
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        os.chmod(directory, 0o700)
    os.chmod(root, 0o700)
