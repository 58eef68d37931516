"""``RedisCancelBus``: the cancel bus over the shared Redis of ``MQ_URL``.

It rides on the queue's own connections (``RedisQueue.subscribe``/``publish``), so it
reaches Redis exactly as the queue does (same URL, credentials and, where the queue
supports it, TLS), reconnects with it, and starts and stops with it. Channels, under
the queue's prefix:

- ``cancel``: every node listens; a request names the call, and, when its sender waits,
  the sender's reply channel and a question id.
- ``cancel-reply:<bus id>``: this bus's answers. Every node that received a waiting
  request answers it (the record if the call ran there, else null), so the sender
  knows when all have answered: PUBLISH returns how many received the request. A
  cancel of an unknown call then costs one round trip, not the whole wait.

Messages sent while a subscriber reconnects are lost (pub/sub keeps nothing): best
effort, see ``interface.py``.
"""

from __future__ import annotations

import uuid

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ironfunctions.calls.model import CallRecord
from ironfunctions.cancelbus.interface import CancelHandler, ICancelBus
from ironfunctions.cancelbus.wire import (
    CancelAnswer,
    CancelRequest,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)
from ironfunctions.mq.redis import RedisQueue

REQUESTS = "cancel"
REPLIES = "cancel-reply"


@attrs.define
class _Question:
    """A request waiting for answers: fires ``answer`` with the first record, or with
    None once every receiver said "not here" (or the sender gives up)."""

    answer: Deferred[CallRecord | None] = attrs.field(factory=Deferred)
    answered: int = 0
    receivers: int | None = None  # known once PUBLISH returns

    def heard(self, record: CallRecord | None) -> None:
        self.answered += 1
        if record is not None:
            self._fire(record)
        self._check()

    def sent_to(self, receivers: int) -> None:
        self.receivers = receivers
        self._check()

    def give_up(self) -> None:
        self._fire(None)

    def _check(self) -> None:
        if self.receivers is not None and self.answered >= self.receivers:
            self._fire(None)

    def _fire(self, record: CallRecord | None) -> None:
        if not self.answer.called:
            self.answer.callback(record)


@implementer(ICancelBus)
class RedisCancelBus:
    """Cancels over Redis pub/sub. Build it before ``queue`` starts (it subscribes)."""

    log = Logger()

    def __init__(self, queue: RedisQueue, clock: IReactorTime) -> None:
        self._queue = queue
        self._clock = clock
        self._id = uuid.uuid4().hex
        self.reply_channel = f"{REPLIES}:{self._id}"  # where this bus's answers arrive
        self._handler: CancelHandler | None = None
        self._questions: dict[str, _Question] = {}
        queue.subscribe(REQUESTS, self._request_received)
        queue.subscribe(self.reply_channel, self._answer_received)

    def on_cancel(self, handler: CancelHandler) -> None:
        self._handler = handler

    async def publish(self, app_name: str, call_id: str, wait: float = 0.0) -> CallRecord | None:
        if wait <= 0:
            await self._queue.publish(REQUESTS, encode_request(CancelRequest(app_name, call_id)))
            return None
        ask = uuid.uuid4().hex
        question = self._questions[ask] = _Question()
        timer = self._clock.callLater(wait, question.give_up)
        try:
            # Registered before sending: an answer may arrive before PUBLISH's reply.
            request = CancelRequest(app_name, call_id, reply_to=self._id, ask=ask)
            question.sent_to(await self._queue.publish(REQUESTS, encode_request(request)))
            return await question.answer
        finally:
            del self._questions[ask]
            if timer.active():
                timer.cancel()

    def _request_received(self, text: str) -> None:
        try:
            request = decode_request(text)
        except (ValueError, TypeError, KeyError) as e:
            self.log.warn("Ignored a malformed cancel request: {error}", error=str(e))
            return
        record = None
        if self._handler is not None:
            try:
                record = self._handler(request.app_name, request.call_id)
            except Exception:  # answer "not here" rather than leave the sender waiting
                self.log.failure("Cancel handler failed for {call_id}", call_id=request.call_id)
        if request.reply_to is None or request.ask is None:
            return
        answer = encode_answer(CancelAnswer(request.ask, record))
        d = Deferred.fromCoroutine(self._queue.publish(f"{REPLIES}:{request.reply_to}", answer))
        d.addErrback(lambda f: self.log.warn("Could not answer a cancel of {call_id}: {error}",
                                             call_id=request.call_id, error=str(f.value)))

    def _answer_received(self, text: str) -> None:
        try:
            answer = decode_answer(text)
        except (ValueError, TypeError, KeyError) as e:
            self.log.warn("Ignored a malformed cancel answer: {error}", error=str(e))
            return
        question = self._questions.get(answer.ask)
        if question is not None:  # else: late, after the sender gave up
            question.heard(answer.record)
