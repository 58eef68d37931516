"""Bad names through real daemons on every datastore (issue 11 item 8, SPEC §8): a NUL
byte or invalid UTF-8 (after percent-decoding) in an app name, route path or call id
is a 4xx JSON error on SQLite, Postgres and memory, never a 500, and the node works
on."""

from __future__ import annotations

import json

import pytest

from tests.daemon import DaemonFactory
from tests.images import image_tag


BAD_REQUESTS = [
    ("GET", "/r/a%00b/x", None),
    ("POST", "/r/a%00b/x", b"x"),
    ("GET", "/r/a%ffb/x", None),
    ("GET", "/v1/apps/a%00b", None),
    ("PATCH", "/v1/apps/a%00b", b'{"app":{"config":{"k":"v"}}}'),
    ("DELETE", "/v1/apps/a%00b", None),
    ("GET", "/v1/apps/a%ffb", None),
    ("GET", "/v1/apps/a%00b/routes", None),
    ("GET", "/v1/apps/a%2500b/routes/x", None),
    ("GET", "/v1/apps/app/routes/x%00", None),
    ("GET", "/v1/apps/a%00b/calls", None),
    ("GET", "/v1/apps/app/calls/c%00", None),
    ("GET", "/v1/apps/app/calls/c%00/log", None),
    ("DELETE", "/v1/apps/app/calls/c%00", None),
    ("DELETE", "/tasks", b'{"id":"c\\u0000","app_name":"app"}'),
    ("DELETE", "/tasks", b'{"id":"c\\udc80","app_name":"app"}'),
]


@pytest.mark.parametrize("db", ["sqlite", "postgres", "memory"])
def test_bad_names_are_4xx_json_on_every_datastore(
    db: str, request: pytest.FixtureRequest, daemon_factory: DaemonFactory,
) -> None:
    """No container runs here: a bad name never gets that far."""
    env: dict[str, str] = {}
    if db == "postgres":
        env["DB_URL"] = request.getfixturevalue("postgres_db")
    elif db == "memory":
        env["DB_URL"] = "memory://"
    node = daemon_factory(env=env)
    node.add_route("app", "/x", image_tag("cat"))
    for method, path, body in BAD_REQUESTS:
        reply = node.request(method, path, body)
        assert 400 <= reply.status < 500, (db, method, path, reply.status, reply.body)
        assert json.loads(reply.body)["error"]["message"], (db, method, path, reply.body)
    assert node.get("/v1/apps/app/routes/x").status == 200  # the datastore works on
    assert "Traceback" not in node.log() and "Unhandled" not in node.log()
