"""What the Redis cancel bus sends, as JSON text (pure).

A request names the call and, when its sender waits for answers, where to answer
(``reply_to``: the sender's reply channel) and which question it answers (``ask``).
An answer carries the ``ask`` and the cancelled call's record, or null ("not here").
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from ironfunctions.calls.model import CallRecord
from ironfunctions.models import CallStatus

_FIELDS = [f.name for f in attrs.fields(CallRecord) if f.name != "body"]  # a running call has no body


@attrs.frozen
class CancelRequest:
    app_name: str
    call_id: str
    reply_to: str | None = None
    ask: str | None = None


@attrs.frozen
class CancelAnswer:
    ask: str
    record: CallRecord | None


def record_to_json(record: CallRecord) -> dict[str, Any]:
    data = {name: getattr(record, name) for name in _FIELDS}
    data["status"] = record.status.value
    return data


def record_from_json(data: Any) -> CallRecord:
    """Raise ValueError/TypeError/KeyError for something that is not a record."""
    if not isinstance(data, dict):
        raise ValueError("not a record")
    fields = {name: data[name] for name in _FIELDS if name in data}  # a newer node may send more
    fields["status"] = CallStatus(data["status"])
    return CallRecord(**fields)


def encode_request(request: CancelRequest) -> str:
    return json.dumps(attrs.asdict(request), separators=(",", ":"))


def decode_request(text: str) -> CancelRequest:
    """Raise ValueError (or TypeError/KeyError) for a message that is not a request."""
    data = json.loads(text)
    request = CancelRequest(str(data["app_name"]), str(data["call_id"]), data.get("reply_to"), data.get("ask"))
    if not all(x is None or isinstance(x, str) for x in (request.reply_to, request.ask)):
        raise ValueError("reply_to and ask must be strings")
    return request


def encode_answer(answer: CancelAnswer) -> str:
    record = None if answer.record is None else record_to_json(answer.record)
    return json.dumps({"ask": answer.ask, "record": record}, separators=(",", ":"))


def decode_answer(text: str) -> CancelAnswer:
    """Raise ValueError (or TypeError/KeyError) for a message that is not an answer."""
    data = json.loads(text)
    record = data["record"]
    return CancelAnswer(str(data["ask"]), None if record is None else record_from_json(record))
