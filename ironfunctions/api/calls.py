"""``/v1/apps/{app}/calls``: look up, list, read the log of, and cancel calls.

Mounted by ``AppsAPI`` (the URL rules live there, as for routes). Parsing of the list
query is pure (``parse_call_query``).
"""

from __future__ import annotations

import calendar
import datetime
import re
from typing import Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from ironfunctions.calls.interface import Canceller, ICallStore
from ironfunctions.calls.model import (
    DEFAULT_PER_PAGE,
    MAX_PER_PAGE,
    CallRecord,
    CallQuery,
    call_json,
    cancelled,
    decode_cursor,
)
from ironfunctions.api.http import json_response
from ironfunctions.datastore.interface import IDatastore
from ironfunctions.errors import ValidationError
from ironfunctions.models import CallStatus
from ironfunctions.paths import normalize_path


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


MAX_EPOCH_S = 253402300799  # 9999-12-31T23:59:59Z, as far as RFC 3339 goes


def parse_time(name: str, value: str) -> int:
    """RFC 3339 (``2026-11-28T08:00:00Z``, offsets allowed) or epoch seconds -> epoch ms."""
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds_f = float(value)
        if seconds_f > MAX_EPOCH_S:  # also keeps the value in a database's int64
            raise ValidationError(f"Invalid {name}: epoch seconds must be at most {MAX_EPOCH_S}")
        return int(seconds_f * 1000)
    match = _RFC3339.match(value)
    if not match:
        raise ValidationError(f"Invalid {name}: use RFC 3339 (2026-01-02T15:04:05Z) or epoch seconds")
    y, mo, d, h, mi, s, frac, zone = match.groups()
    try:
        moment = datetime.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))
        seconds = calendar.timegm(moment.timetuple())
    except (ValueError, OverflowError):
        raise ValidationError(f"Invalid {name}: not a valid time") from None
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    ms = int(float(frac) * 1000) if frac else 0
    return seconds * 1000 + ms


def _status(text: str | None) -> CallStatus | None:
    """The ``status`` filter: one of the call statuses, or none. Raise ValidationError."""
    if text is None:
        return None
    try:
        return CallStatus(text)
    except ValueError:
        raise ValidationError(f"Invalid status: use one of {', '.join(CallStatus)}") from None


def parse_call_query(app_name: str, args: Mapping[bytes, list[bytes]]) -> CallQuery:
    """The list query string -> CallQuery. Raise ``ValidationError``."""

    def arg(name: str) -> str | None:
        values = args.get(name.encode())
        if not values:
            return None
        text = values[0].decode("utf-8", "replace").strip()
        return text or None

    path = arg("path")
    status = _status(arg("status"))
    per_page = DEFAULT_PER_PAGE
    if arg("per_page") is not None:
        try:
            per_page = int(arg("per_page") or "")
        except ValueError:
            raise ValidationError("Invalid per_page: must be an integer") from None
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValidationError(f"Invalid per_page: must be between 1 and {MAX_PER_PAGE}")
    after = None
    cursor = arg("cursor")
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except ValueError:
            raise ValidationError("Invalid cursor") from None
    from_raw, to_raw = arg("from"), arg("to")
    return CallQuery(
        app_name=app_name,
        path=None if path is None else normalize_path(path),
        status=status,
        from_ms=None if from_raw is None else parse_time("from", from_raw),
        to_ms=None if to_raw is None else parse_time("to", to_raw),
        after=after,
        per_page=per_page,
    )


def store_canceller(calls: ICallStore, clock: IReactorTime) -> Canceller:
    """Cancel by marking the record: a queued call is then skipped by whichever worker
    reserves it. (The runner wraps this to also stop a running call's container.)"""

    async def cancel(app_name: str, call_id: str) -> CallRecord:
        return await calls.update_call(app_name, call_id, cancelled(int(clock.seconds() * 1000)))

    return cancel


class CallsAPI:
    """The calls of one app."""

    def __init__(self, datastore: IDatastore, calls: ICallStore, cancel: Canceller, app_name: str) -> None:
        self._datastore = datastore
        self._calls = calls
        self._cancel = cancel
        self._app_name = app_name

    async def list_calls(self, request: IRequest) -> bytes:
        query = parse_call_query(self._app_name, request.args)
        await self._datastore.get_app(self._app_name)
        page = await self._calls.list_calls(query)
        return json_response(request, {
            "message": "Successfully listed calls",
            "calls": [call_json(c) for c in page.calls],
            "next_cursor": page.next_cursor,
        })

    async def get_call(self, request: IRequest, call_id: str) -> bytes:
        call = await self._calls.get_call(self._app_name, call_id)
        return json_response(request, {"message": "Successfully loaded call", "call": call_json(call)})

    async def get_log(self, request: IRequest, call_id: str) -> bytes:
        log = await self._calls.get_log(self._app_name, call_id)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return log

    async def cancel_call(self, request: IRequest, call_id: str) -> bytes:
        call = await self._cancel(self._app_name, call_id)
        return json_response(request, {"message": "Call cancelled", "call": call_json(call)})
