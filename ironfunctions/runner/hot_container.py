"""One hot container of a ``RoutePool`` (see ``runner/hot_pool.py``): serves one call
at a time over its attached stdin/stdout, and is killed and replaced by its pool the
moment it misbehaves (dies, answers garbage or more than one response, overruns the
timeout).

The container owns its call in flight, its output parsing and its one timer; it
reports what happens to it through ``ContainerOwner`` (``runner/hot_owner.py``), and
its pool decides what follows.
"""

from __future__ import annotations

from typing import Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ironfunctions.drivers.interface import IAttachedContainer, IContainerStream
from ironfunctions.models import CANCELLED_MESSAGE, Call, CallResult, CallStatus
from ironfunctions.runner.hot_owner import ContainerOwner
from ironfunctions.runner.protocol import RequestEncoder
from ironfunctions.runner.response import OversizedResponse, ProtocolError, ResponseParser
from ironfunctions.runner.stderr_log import StderrLog

STDERR_LIMIT = 1024 * 1024

EXITED = "Function exited unexpectedly"
TIMED_OUT = "Timed out"
TOO_LARGE = "Function response too large"

log = Logger()


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds (how call times are reported)."""
    return int(round(seconds * 1000))


@implementer(IContainerStream)
class HotContainer:
    """One hot container: its attached stream, the call in flight, its timer.

    :param owner: its pool, told when it is available, misbehaves, exits or expires.
    :param clock: times calls and idleness.
    :param encoder: writes a call's request in the route's format.
    :param idle_timeout: seconds idle after which the owner is told to stop it.
    :param max_response_size: largest response body the function may announce.
    :param log_fields: fields of every log event about it (app, path).
    :param began: when its start began (it counts as idle from then).
    :param stderr_log: the node's stderr log, for what it writes between calls (a
        call's own stderr goes with its result, to the agent).
    """

    def __init__(
        self,
        owner: ContainerOwner[HotContainer],
        clock: IReactorTime,
        encoder: RequestEncoder,
        idle_timeout: float,
        max_response_size: int,
        log_fields: Mapping[str, str],
        began: float,
        stderr_log: StderrLog,
    ) -> None:
        self._owner = owner
        self._clock = clock
        self._encoder = encoder
        self._idle_timeout = idle_timeout
        self._fields = log_fields
        self._attached: IAttachedContainer | None = None
        self._start_ms = 0
        self._calls = 0
        self._dead = False
        self._removed: Deferred[None] = Deferred()
        self._parser = ResponseParser(max_response_size, self._response)
        self._call: Call | None = None
        self._call_start_ms = 0
        # stdout and stderr reach us through two pipes: stderr a call wrote may arrive
        # just after its answer. Until the next call starts it is logged with this id.
        self._last_call_id = ""
        self._done: Deferred[CallResult] | None = None
        self._wait_ms = 0
        self._began = 0.0
        self._deadline = 0.0
        self._idle_since = began
        self._stderr: list[bytes] = []  # of the call in flight, up to STDERR_LIMIT bytes
        self._stderr_size = 0
        self._stderr_lost_bytes = 0  # beyond STDERR_LIMIT: counted, not kept
        self._stderr_lost_lines = 0
        self._idle_stderr = stderr_log.idle(log_fields.get("app", ""))
        self._timer: IDelayedCall | None = None

    @property
    def container_id(self) -> str:
        return self._attached.container_id if self._attached is not None else ""

    @property
    def calls(self) -> int:
        """Calls it was given so far."""
        return self._calls

    @property
    def start_ms(self) -> int:
        """How long its start took."""
        return self._start_ms

    @property
    def dead(self) -> bool:
        """Whether it is out of service (exited, or being killed)."""
        return self._dead

    @property
    def removed(self) -> Deferred[None]:
        """Fires once its pool has removed it (``mark_removed``)."""
        return self._removed

    # -- its pool's side

    def started(self, attached: IAttachedContainer, start_ms: int) -> None:
        """Its start is done: calls go to ``attached``."""
        self._attached = attached
        self._start_ms = start_ms

    def stop_serving(self) -> None:
        """Take no more calls and ignore its output: its pool is killing it."""
        self._dead = True
        self._idle_stderr.flush(self._idle_fields)

    def mark_removed(self) -> None:
        """Its pool has removed it (or given up trying)."""
        self._removed.callback(None)

    # -- a call

    def serve(self, call: Call, wait_ms: int, start_ms: int) -> Deferred[CallResult]:
        """Write ``call``'s request; the Deferred fires with its result."""
        assert self._attached is not None and self._call is None and not self._dead
        self._idle_stderr.flush(self._idle_fields)
        self._call = call
        self._calls += 1
        self._wait_ms = wait_ms
        self._call_start_ms = start_ms
        now = self._clock.seconds()
        self._began = now
        self._deadline = deadline = now + call.route.timeout
        timer = self._timer
        if timer is None or timer.getTime() > deadline:
            self._arm(deadline)
        d: Deferred[CallResult] = Deferred()
        self._done = d
        self._parser.expect()
        self._attached.write(self._encoder.encode(call))
        return d

    def _response(self, code: int, headers: Mapping[str, list[str]], body: bytes, rest: bytes) -> None:
        call = self._call
        assert call is not None
        if rest:
            self._fail("Invalid function response: more than one response to a request")
            return
        echoed = headers.get("Fn-Call-Id")
        if echoed is not None and echoed != [call.id]:
            self._fail("Invalid function response: answer to another call")
            return
        stderr, lost_bytes, lost_lines = self._take_stderr()
        result = CallResult(
            call_id=call.id,
            status=CallStatus.SUCCESS,
            body=body,
            stderr=stderr,
            stderr_lost_bytes=lost_bytes,
            stderr_lost_lines=lost_lines,
            status_code=code,
            headers=headers,
            wait_ms=self._wait_ms,
            start_ms=self._call_start_ms,
            run_ms=ms(self._clock.seconds() - self._began),
        )
        done = self._done
        assert done is not None
        self._call = self._done = None
        self._last_call_id = call.id
        # Hand the container on first, so the next call's request is on its way
        # while this call's answer is written.
        self._owner.available(self)
        done.callback(result)

    def _take_stderr(self) -> tuple[bytes, int, int]:
        """The call's stderr, and the bytes and newlines of it beyond STDERR_LIMIT."""
        lost = (self._stderr_lost_bytes, self._stderr_lost_lines)
        self._stderr_lost_bytes = self._stderr_lost_lines = 0
        if not self._stderr:
            return b"", *lost
        stderr = b"".join(self._stderr)
        self._stderr = []
        self._stderr_size = 0
        return stderr, *lost

    def _end_call(self, status: str, error: str) -> None:
        """End the call in flight (if any) with an error result."""
        call, done = self._call, self._done
        self._call = self._done = None
        if call is None or done is None:
            return
        stderr, lost_bytes, lost_lines = self._take_stderr()
        result = CallResult(
            call_id=call.id, status=status, error=error, stderr=stderr,
            stderr_lost_bytes=lost_bytes, stderr_lost_lines=lost_lines, wait_ms=self._wait_ms, start_ms=self._call_start_ms,
            run_ms=ms(self._clock.seconds() - self._began),
        )
        done.callback(result)

    def cancel_call(self, call_id: str) -> bool:
        """If this container serves ``call_id``, kill it (the call ends at once)."""
        if self._call is None or self._call.id != call_id:
            return False
        self._fail(CANCELLED_MESSAGE)
        return True

    def _fail(self, error: str) -> None:
        """The container is out of step: kill it; the call in flight gets ``error``."""
        call = self._call
        log.warn("Killing hot container {container_id}: {error}", container_id=self.container_id,
                 error=error, call_id=call.id if call else None, **self._fields)
        self._owner.kill(self)
        self._end_call(CallStatus.ERROR, error)

    def _timed_out(self) -> None:
        """The call overran its timeout: kill the container, then answer 504."""
        call = self._call
        assert call is not None
        log.info("Call {call_id} timed out; killing hot container {container_id}",
                 call_id=call.id, container_id=self.container_id, **self._fields)
        removed = self._owner.kill(self)

        def answer(_: object) -> None:
            self._end_call(CallStatus.TIMEOUT, TIMED_OUT)

        removed.addBoth(answer)

    # -- timer: one per container, moved only when it would fire too late

    @property
    def idle_since(self) -> float:
        """When its last call ended (or it started)."""
        return self._idle_since

    def went_idle(self) -> None:
        """Its pool keeps it idle: it expires ``idle_timeout`` s from now."""
        now = self._clock.seconds()
        self._idle_since = now
        at = now + self._idle_timeout
        timer = self._timer
        if timer is None or timer.getTime() > at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        delay = max(0.0, at - self._clock.seconds())
        if self._timer is None:
            self._timer = self._clock.callLater(delay, self._tick)
        else:
            self._timer.reset(delay)

    def cancel_timer(self) -> None:
        """It is leaving its pool: no more timeouts nor expiry."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self._dead:
            return
        now = self._clock.seconds()
        if self._call is not None:
            if now >= self._deadline:
                self._timed_out()
            else:
                self._arm(self._deadline)
        else:
            expires = self._idle_since + self._idle_timeout
            if now >= expires:
                self._owner.idle_expired(self)
            else:
                self._arm(expires)

    # -- IContainerStream

    def stdout_received(self, data: bytes) -> None:
        if self._dead:
            return
        try:
            self._parser.feed(data)
        except OversizedResponse:
            self._fail(TOO_LARGE)
        except ProtocolError as e:
            self._fail(f"Invalid function response: {e}")

    def stderr_received(self, data: bytes) -> None:
        if self._call is not None:
            # Kept up to the limit as it arrives, the rest only counted: a flood costs
            # one bytes.count per chunk, never memory.
            room = STDERR_LIMIT - self._stderr_size
            if room >= len(data):
                self._stderr.append(data)
                self._stderr_size += len(data)
            else:
                if room > 0:
                    self._stderr.append(data[:room])
                    self._stderr_size = STDERR_LIMIT
                self._stderr_lost_bytes += len(data) - max(room, 0)
                self._stderr_lost_lines += data.count(b"\n", max(room, 0))
        elif not self._dead:
            self._idle_stderr.feed(data, self._idle_fields())

    def _idle_fields(self) -> dict[str, str]:
        """The fields of what it writes between calls: its last call's id goes with it
        (stderr may trail its answer: two pipes)."""
        fields = dict(self._fields, container_id=self.container_id)
        if self._last_call_id:
            fields["call_id"] = self._last_call_id
        return fields

    def stream_closed(self) -> None:
        if self._dead:
            return  # we are removing it
        self._dead = True
        self._idle_stderr.flush(self._idle_fields)
        if self._attached is None:
            return  # still starting; the pool removes it once started
        if self._call is not None:
            log.warn("Hot container {container_id} exited during call {call_id}",
                     container_id=self.container_id, call_id=self._call.id, **self._fields)
        self._owner.exited(self)
        self._end_call(CallStatus.ERROR, EXITED)

