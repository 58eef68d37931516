"""Request parsing of the management API (pure): names are matched whole."""

from __future__ import annotations

import json

import pytest

from ironfunctions.api.schema import parse_new_app, parse_new_route
from ironfunctions.errors import ValidationError


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "a\nb", "abc\x00"])
def test_an_app_name_with_a_line_break_or_nul_is_invalid(name: str) -> None:
    """``^...$`` would let a trailing newline in; the whole name must match."""
    with pytest.raises(ValidationError, match="Invalid app name"):
        parse_new_app(json.dumps({"app": {"name": name}}).encode())


def test_a_route_header_name_with_a_trailing_newline_is_invalid() -> None:
    body = json.dumps({"route": {"path": "/p", "image": "i", "headers": {"X-A\n": ["v"]}}}).encode()
    with pytest.raises(ValidationError):
        parse_new_route(body, "app", 1024)


def test_good_names_pass() -> None:
    assert parse_new_app(b'{"app": {"name": "my-app_1"}}').name == "my-app_1"
    route = parse_new_route(b'{"route": {"path": "/p", "image": "i", "headers": {"X-A": ["v"]}}}', "app", 1024)
    assert route.headers == {"X-A": ["v"]}
