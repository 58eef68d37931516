"""One end of the unix socket between a worker process and its parent.

Requests and notices go out as frames (``workers/wire.py``); answers come back to the
Deferred of the request with the same sequence number. Incoming requests go to
``handlers[kind](*args)``: a plain value, a Deferred or a coroutine, whose outcome is
sent back (an error as its name and message, ``wire.error_fields``). Reads and writes
are plain ``os.read``/``os.write`` on the reactor (``drivers/connection.py``): a hot
call crosses this link twice, so it must cost little more than the bytes.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Coroutine, Mapping

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ironfunctions.drivers.connection import SocketConnection
from ironfunctions.drivers.interface import IContainerStream
from ironfunctions.workers.wire import (
    ANSWER, FAILED, NOTICE_SEQ, FrameReader, WorkerLinkError, error_fields, frame, rebuild_error,
)

log = Logger()

Handler = Callable[..., Any]


@implementer(IContainerStream)
class Link:
    """A framed request/answer link over a connected stream socket ``sock``.

    :param handlers: what this end answers, by message kind.
    :param on_lost: called once when the link is gone (the other process died or
        closed it); every request still waiting fails with ``WorkerLinkError``.
    """

    def __init__(self, sock: socket.socket, reactor: Any, handlers: Mapping[str, Handler],
                 on_lost: Callable[[], None] = lambda: None) -> None:
        sock.setblocking(False)
        self._handlers = dict(handlers)
        self._on_lost = on_lost
        self._reader = FrameReader()
        self._pending: dict[int, Deferred[Any]] = {}
        self._seq = NOTICE_SEQ
        self.connected = True
        self._connection = SocketConnection(sock, self, self._lost, reactor)
        self._connection.startReading()  # type: ignore[no-untyped-call]

    def handle(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def request(self, kind: str, *args: Any) -> Deferred[Any]:
        """Send a request; the Deferred fires with the answer (or the other side's error)."""
        if not self.connected:
            raise WorkerLinkError("the link to the node's parent process is gone")
        self._seq += 1
        seq = self._seq
        d: Deferred[Any] = Deferred(lambda _: self._forget(seq))
        self._pending[seq] = d
        self._connection.write(frame((kind, seq, *args)))
        return d

    def _forget(self, seq: int) -> None:
        self._pending.pop(seq, None)  # cancelled: its answer, if it comes, is dropped

    def notify(self, kind: str, *args: Any) -> None:
        """Send a message that wants no answer (dropped when the link is gone)."""
        if self.connected:
            self._connection.write(frame((kind, NOTICE_SEQ, *args)))

    def close(self) -> None:
        self._connection.loseConnection()  # type: ignore[no-untyped-call]

    # -- IContainerStream: the socket's bytes

    def stdout_received(self, data: bytes) -> None:
        try:
            for message in self._reader.feed(data):
                self._dispatch(message)
        except Exception:
            log.failure("A corrupt frame on the worker link: closing it")
            self.close()

    def stderr_received(self, data: bytes) -> None:
        pass

    def stream_closed(self) -> None:
        pass

    # --

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == ANSWER:
            d = self._pending.pop(message[1], None)
            if d is not None:
                d.callback(message[2])
            return
        if kind == FAILED:
            d = self._pending.pop(message[1], None)
            if d is not None:
                d.errback(Failure(rebuild_error(*message[2:5])))
            return
        seq = message[1]
        handler = self._handlers.get(kind)
        if handler is None:
            log.warn("Worker link: no handler for {kind}", kind=kind)
            if seq != NOTICE_SEQ:
                self._answer_error(seq, WorkerLinkError(f"no handler for {kind}"))
            return
        try:
            value = handler(*message[2:])
        except Exception as e:
            if seq == NOTICE_SEQ:
                log.failure("Worker link: {kind} failed", kind=kind)
            else:
                self._answer_error(seq, e)
            return
        if isinstance(value, Coroutine):
            value = ensureDeferred(value)
        if isinstance(value, Deferred):
            if seq == NOTICE_SEQ:
                value.addErrback(lambda f: log.failure("Worker link: {kind} failed", f, kind=kind))
            else:
                value.addCallbacks(lambda v: self._answer(seq, v), lambda f: self._answer_error(seq, f.value))
        elif seq != NOTICE_SEQ:
            self._answer(seq, value)

    def _answer(self, seq: int, value: Any) -> None:
        if self.connected:
            try:
                data = frame((ANSWER, seq, value))
            except ValueError as e:  # not marshal-able: a bug of this side
                self._answer_error(seq, e)
                return
            self._connection.write(data)

    def _answer_error(self, seq: int, error: BaseException | None) -> None:
        if error is None:
            error = WorkerLinkError("failed")
        name, message, retry_after = error_fields(error)
        if not name:
            log.error("Worker link: a request failed: {error}", error=message)
        if self.connected:
            self._connection.write(frame((FAILED, seq, name, message, retry_after)))

    def _lost(self) -> None:
        if not self.connected:
            return
        self.connected = False
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Failure(WorkerLinkError("the link to the other process is gone")))
        self._on_lost()
