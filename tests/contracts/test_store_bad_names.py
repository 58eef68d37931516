"""Bad names (SPEC §8, issue 11 item 8) on every datastore and call store: text no
database can hold (a NUL, a lone surrogate such as JSON's ``"\\udc80"``) is a lookup
that finds nothing or a ``ValidationError``: a 404 or a 400, never a 500, and the
store works on afterwards. The API refuses such names first (``names.py``); this is
the stores' own defence (Postgres refuses NUL, every database a lone surrogate)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs
import pytest
import pytest_twisted

from ironfunctions.calls.model import CallQuery
from ironfunctions.datastore import Stores
from ironfunctions.errors import AppNotFound, CallNotFound, RouteNotFound, ValidationError
from ironfunctions.models import App, Route

BAD = ["a\0b", "a\udc80b"]
REFUSED = (AppNotFound, RouteNotFound, CallNotFound, ValidationError)


def lookups(stores: Any, bad: str) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    ds, calls = stores.datastore, stores.calls
    return [
        ("get_app", lambda: ds.get_app(bad)),
        ("update_app", lambda: ds.update_app(bad, lambda app: app)),
        ("remove_app", lambda: ds.remove_app(bad)),
        ("get_route app", lambda: ds.get_route(bad, "/x")),
        ("get_route path", lambda: ds.get_route("a", "/" + bad)),
        ("update_route", lambda: ds.update_route("a", "/" + bad, lambda r: r)),
        ("remove_route", lambda: ds.remove_route(bad, "/x")),
        ("get_routes app", lambda: ds.get_routes(app_name=bad)),
        ("get_routes image", lambda: ds.get_routes(image=bad)),
        ("get_call", lambda: calls.get_call("a", bad)),
        ("get_call app", lambda: calls.get_call(bad, "c")),
        ("get_log", lambda: calls.get_log("a", bad)),
        ("update_call", lambda: calls.update_call("a", bad, lambda c: attrs.evolve(c))),
        ("list_calls", lambda: calls.list_calls(CallQuery(app_name=bad))),
        ("list_calls path", lambda: calls.list_calls(CallQuery(app_name="a", path="/" + bad))),
    ]


@pytest.mark.parametrize("bad", BAD, ids=["nul", "surrogate"])
@pytest_twisted.ensureDeferred
async def test_a_name_no_database_can_hold_finds_nothing_or_is_invalid(stores: Stores, bad: str) -> None:
    await stores.datastore.insert_app(App("a"))
    await stores.datastore.insert_route(Route("a", "/x", "img"))
    for what, lookup in lookups(stores, bad):
        try:
            found = await lookup()
        except REFUSED:
            continue
        # Lists find nothing.
        assert found in ([],) or getattr(found, "calls", None) == [], (what, found)
    assert await stores.datastore.get_route("a", "/x") == Route("a", "/x", "img")  # still working
